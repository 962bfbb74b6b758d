"""The models shipped with the package (weights and a card each, in ``zoo/pretrained/``).

A name given where a checkpoint is expected is a path when it exists on disk or contains a path
separator, and a shipped model's name otherwise (``resolve``).
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from snnconv.exceptions import CheckpointError, OptionError
from snnconv.io import checkpoint

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def names() -> list[str]:
    """The shipped models' names."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The absolute checkpoint file for a path (a model file, or a training folder holding
    model.pt) or a shipped model's name. Anything that exists on disk or contains a path
    separator is a path: a local ``cnn-mnist/`` shadows the shipped ``cnn-mnist``."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (path.exists() or os.sep in text or (os.altsep and os.altsep in text)):
        shipped = PRETRAINED_DIR / f"{text}.pt"
        if shipped.is_file():
            return shipped
    if path.is_dir() and (path / "model.pt").is_file():
        return (path / "model.pt").resolve()
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint {text!r}: not a file, not a training folder with model.pt, and not a "
            f"shipped model ({', '.join(names()) or 'none shipped'})"
        )
    return path.resolve()


def load_checkpoint(name_or_path: str | os.PathLike) -> dict:
    """``checkpoint.load`` of what ``resolve`` finds."""
    return checkpoint.load(resolve(name_or_path))


def load_pretrained(name_or_path: str | os.PathLike) -> nn.Module:
    """A shipped model ("resnet20-cifar10", "cnn-mnist") or a checkpoint path, in eval mode."""
    return checkpoint.build_model(load_checkpoint(name_or_path))


def card(name: str) -> str:
    """The model card (markdown) of a shipped model: command, wall time, seed, test accuracy."""
    path = PRETRAINED_DIR / f"{name}.md"
    if not path.is_file():
        raise OptionError(f"no shipped model {name!r}; shipped: {names()}")
    return path.read_text()
