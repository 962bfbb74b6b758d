"""Checkpoints: atomic writes, weights-only loads, and models rebuilt from what a file records.

A model file holds ``{"format", "arch", "dataset", "state_dict", ...metadata}``, where ``arch`` is
the keyword arguments of ``models.build``. Training checkpoints add optimizer, scheduler, RNG and
epoch. Every load uses ``torch.load(weights_only=True)``: no code runs from a file.
"""

from __future__ import annotations

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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "arch" not in ckpt:
        raise CheckpointError(f"{path} is not an snnconv model file (format {FORMAT})")
    ckpt["path"] = str(path)
    return ckpt


def build_model(ckpt: dict) -> nn.Module:
    """The model a checkpoint describes, with its weights, in eval mode."""
    try:
        model = models.build(**ckpt["arch"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: bad architecture record {ckpt['arch']}: {err}"
        ) from err
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if want != got:
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
        raise CheckpointError(
            f"{ckpt.get('path', 'checkpoint')}: weights do not fit the recorded architecture "
            f"{ckpt['arch']['name']}: {len(missing)} missing (e.g. {missing[:2]}), {len(extra)} "
            f"unexpected (e.g. {extra[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})"
        )
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()
