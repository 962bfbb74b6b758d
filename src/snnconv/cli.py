"""The ``snnconv`` command line: train, evaluate, shift-scan, demo, models.

Every failure the user can fix (missing file, bad option, wrong checkpoint) ends in one line on
stderr starting with "snnconv: error:" and exit status 2; nothing half-written is left behind.
"""
from __future__ import annotations

import argparse
import sys

from . import checkpoint, data, models
from .data import DataError
from .graph import ConversionError
from .simulate import SimulationError

USER_ERRORS = (ValueError, TypeError, DataError, ConversionError, SimulationError,
               checkpoint.CheckpointError, OSError)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def cmd_models(args) -> None:
    """Parameter count of every zoo model (CIFAR-shaped input)."""
    print(f"{'model':<16}{'params (10 classes)':>22}{'params (100 classes)':>22}")
    for name in models.NAMES:
        counts = [models.count_parameters(models.build(name, num_classes=n)) for n in (10, 100)]
        print(f"{name:<16}{counts[0]:>22,}{counts[1]:>22,}")


def cmd_train(args) -> None:
    from . import train
    train.run(train.config_from_args(args), progress=not args.quiet)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model with threshold ReLU on a dataset")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it has last.pt)")
    p.add_argument("--model", default="resnet20", choices=models.NAMES)
    p.add_argument("--dataset", default="cifar10", choices=data.NAMES)
    p.add_argument("--act", default="threshold", choices=models.ACTS)
    p.add_argument("--y-th", dest="y_th", type=float, default=1.0)
    p.add_argument("--batch-norm", dest="batch_norm", type=_bool, default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", type=_bool, default=True)
    p.add_argument("--weight-decay", dest="weight_decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--warmup-epochs", dest="warmup_epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=0.0)
    p.add_argument("--val-size", dest="val_size", type=int, default=5000)
    p.add_argument("--limit-train", dest="limit_train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", dest="data_root", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--channels-last", dest="channels_last", type=_bool, default=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snnconv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo with parameter counts").set_defaults(
        func=cmd_models)
    add_train(sub)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as err:
        print(f"snnconv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snnconv: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
