"""Checkpoints: atomic writes, weights-only loads, and models rebuilt from what a file records.

A model file holds ``{"format", "arch", "dataset", "state_dict", ...metadata}``, where ``arch`` is
the keyword arguments of ``models.build``. Training checkpoints add optimizer, scheduler, RNG and
epoch. Every load uses ``torch.load(weights_only=True)``: no code runs from a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from snnconv.exceptions import CheckpointError
from snnconv.zoo import models

FORMAT = "snnconv-model-1"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(file_object)`` on a temp file beside ``path``, then rename it over ``path``:
    readers see the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(obj: dict, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_text(text: str, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def save_json(obj, path: str | os.PathLike) -> None:
    save_text(json.dumps(obj, indent=2) + "\n", path)


REQUIRED_KEYS = ("format", "arch", "state_dict")


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (read in 1 MiB blocks): what results record of the
    checkpoint they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read(path: str | os.PathLike):
    """``torch.load(path, weights_only=True)`` on the CPU, every failure a ``CheckpointError``
    naming the file: missing, empty, truncated, or holding more than tensors and containers.
    Also what a training run should use to read its ``last.pt``."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise CheckpointError(f"no checkpoint {str(path)!r}: {err.strerror or err}") from err
    if size == 0:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is empty (0 bytes), so it was never written "
            "completely; delete it and write it again"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file fails in many ways; all mean the same here
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size:,} bytes): it is truncated, damaged or holds "
            f"more than tensors ({type(err).__name__}: {_first_line(err)})"
        ) from err


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "no message"


def load(path: str | os.PathLike) -> dict:
    """The model file at ``path`` (weights-only load), checked to be an snnconv model file.
    Shipped names and training folders: ``snnconv.zoo.shipped.load_checkpoint``."""
    path = Path(path)
    if path.is_dir() and (path / "model.pt").is_file():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint {str(path)!r}: not a file or a training folder with model.pt"
        )
    ckpt = read(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an snnconv model file (format {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path}: the model file has no {', '.join(map(repr, missing))} "
            f"(an snnconv model file holds {', '.join(REQUIRED_KEYS)}); it is incomplete"
        )
    arch, state = ckpt["arch"], ckpt["state_dict"]
    if not (isinstance(arch, dict) and all(isinstance(k, str) for k in arch)):
        raise CheckpointError(f"{path}: 'arch' must be a dict of build() arguments")
    if not (
        isinstance(state, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(f"{path}: 'state_dict' must map parameter names to tensors")
    ckpt["path"] = str(path)
    return ckpt


def check_weights(state_dict: dict, where: str) -> None:
    """Refuse weights that make a network compute NaN: a non-finite value anywhere, or a
    BatchNorm ``running_var`` with a negative entry (BN folding divides by
    ``sqrt(running_var + eps)``, NaN for a variance below ``-eps``; a variance is never
    negative)."""
    _check_finite(state_dict, where)
    for name, t in state_dict.items():
        if name.endswith("running_var") and (t < 0).any():
            layer = name.removesuffix(".running_var") or name
            raise CheckpointError(
                f"{where}: BatchNorm layer {layer!r} has a negative running_var "
                f"(min {t.min().item():.3g}); a variance cannot be negative and folding it "
                "into the conv would give NaN; the checkpoint is damaged"
            )


def check_finite_weights(module: nn.Module, where: str) -> None:
    """Refuse a module whose parameters or buffers hold NaN or infinity, naming the first one;
    for a network after BN folding, where damaged statistics first turn into NaN."""
    _check_finite({**dict(module.named_parameters()), **dict(module.named_buffers())}, where)


def _check_finite(tensors: dict, where: str) -> None:
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{where}: {name} holds {bad} non-finite value(s) (NaN or infinity); "
                "the weights are damaged, use another checkpoint"
            )


def build_model(ckpt: dict) -> nn.Module:
    """The model a checkpoint describes, with its weights, in eval mode. The architecture is
    checked against ``models.build``'s bounds before anything is allocated, and the weights by
    ``check_weights`` before they are loaded."""
    where = ckpt.get("path", "checkpoint")
    try:
        model = models.build(**ckpt["arch"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: bad architecture record {ckpt['arch']}: {err}") from err
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want != got:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise CheckpointError(
            f"{where}: weights do not fit the recorded architecture "
            f"{ckpt['arch']['name']}: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} "
            f"unexpected (e.g. {extra[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})"
        )
    check_weights(ckpt["state_dict"], where)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
