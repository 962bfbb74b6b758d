"""The ``snnconv`` command line: train, evaluate, shift-scan, demo, models.

Every failure the user can fix (missing file, bad option, wrong checkpoint) ends in one line on
stderr starting with "snnconv: error:" and exit status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from snnconv.conversion.convert import convert
from snnconv.evaluation import evaluate, report
from snnconv.exceptions import CheckpointError, ConversionError, DataError, SimulationError
from snnconv.io import checkpoint, data
from snnconv.zoo import models, shipped

USER_ERRORS = (
    ValueError,
    TypeError,
    DataError,
    ConversionError,
    SimulationError,
    CheckpointError,
    OSError,
)


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


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"T values must be integers >= 1, got {text!r}")
    return sorted(set(values))


def _model_for(name: str, dataset: str):
    """(checkpoint dict, model) checked against the dataset's classes and image shape."""
    ckpt = shipped.load_checkpoint(name)
    model = checkpoint.build_model(ckpt)
    arch, classes = ckpt["arch"], data.num_classes(dataset)
    if arch["num_classes"] != classes:
        raise ValueError(
            f"checkpoint {ckpt['path']} has {arch['num_classes']} outputs but "
            f"{dataset} has {classes} classes"
        )
    shape = (1, 28) if dataset == "mnist" else (3, 32)
    if (arch["in_channels"], arch["image_size"]) != shape:
        raise ValueError(
            f"checkpoint {ckpt['path']} takes {arch['in_channels']}x"
            f"{arch['image_size']}x{arch['image_size']} images, {dataset} has "
            f"{shape[0]}x{shape[1]}x{shape[1]}"
        )
    return ckpt, model


def _split(dataset: str, split: str, root, limit: int | None, download: bool) -> data.Dataset:
    ds = data.load(dataset, split, root, download=download)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        ds = data.Dataset(ds.images[:limit], ds.labels[:limit], ds.classes, ds.name, ds.split)
    return ds


def _normalised_batches(ds: data.Dataset, batch_size: int):
    """Normalised float batches in channels_last, the faster layout for convolutions here
    (benchmarks/sim_profile.py --channels-last)."""
    for images, labels in data.batches(ds, batch_size):
        yield data.normalize(images, ds.name).contiguous(memory_format=torch.channels_last), labels


def _convert_for(model, args, dataset: str):
    """Convert with the CLI's options; calibration images come from the (unaugmented) training
    split, only when the threshold mode needs data."""
    calibration = None
    if (
        args.threshold != "activation"
        or args.readout == "spikes"
        or any(isinstance(m, nn.ReLU) for m in model.modules())
    ):
        train = _split(dataset, "train", args.data_root, args.calibration_images, False)
        calibration = [x for x, _ in _normalised_batches(train, 256)]
    snn = convert(
        model,
        calibration=calibration,
        threshold=args.threshold,
        percentile=args.percentile,
        shift=args.shift,
        readout=args.readout,
    )
    return snn.to(memory_format=torch.channels_last)  # matches _normalised_batches


def _run_evaluation(args, name: str, download: bool, layer_errors: bool = True) -> dict:
    ckpt, model = _model_for(name, args.dataset)
    test = _split(args.dataset, "test", args.data_root, args.limit, download)
    snn = _convert_for(model, args, args.dataset)
    print(
        f"{name}: {ckpt['arch']['name']} on {args.dataset} test, {len(test)} images, "
        f"threshold={args.threshold}, shift={args.shift}, readout={args.readout}"
    )
    print(evaluate.steps_note(args.shift, args.T), flush=True)
    results = evaluate.evaluate(
        snn,
        _normalised_batches(test, args.batch_size),
        args.T,
        n_batches=-(-len(test) // args.batch_size),
        e_mac=args.e_mac,
        e_ac=args.e_ac,
        progress=not args.quiet,
        layer_errors=layer_errors,
    )
    results = {
        "dataset": args.dataset,
        "model": ckpt["arch"]["name"],
        "checkpoint": str(name),
        **results,
    }
    print(evaluate.table(results))
    return results


def cmd_evaluate(args) -> None:
    report.check_writable(args.out)
    if args.plots:
        report.check_plotting()
    results = _run_evaluation(args, args.checkpoint, download=False)
    print(evaluate.layer_table(results, max(args.T)))
    for path in report.write(results, args.out, plots=args.plots):
        print(f"wrote {path}")


def cmd_demo(args) -> None:
    import time

    start = time.perf_counter()
    _run_evaluation(args, "resnet20-cifar10", download=True, layer_errors=False)
    print(f"demo done in {time.perf_counter() - start:.0f} s")


def cmd_shift_scan(args) -> None:
    from snnconv.measures import shift_sweep

    if args.out:
        report.check_writable(args.out)
    ckpt, model = _model_for(args.checkpoint, args.dataset)
    test = _split(args.dataset, "test", args.data_root, args.limit, False)
    args.shift = "bias"
    snn = _convert_for(model, args, args.dataset)
    print(
        f"{args.checkpoint}: shift scan at T={args.T} on {len(test)} {args.dataset} test images",
        flush=True,
    )
    result = shift_sweep.sweep(
        snn, list(_normalised_batches(test, args.batch_size)), args.T, args.fractions
    )
    print(shift_sweep.table(result))
    if args.out:
        report.check_writable(args.out).mkdir(parents=True, exist_ok=True)
        checkpoint.save_json(
            {"dataset": args.dataset, "checkpoint": str(args.checkpoint), **result},
            f"{args.out}/shift_scan.json",
        )
        print(f"wrote {args.out}/shift_scan.json")


def add_shift_scan(sub) -> None:
    p = sub.add_parser("shift-scan", help="per-layer shift that minimises the conversion error")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--limit", type=int, default=1000, help="test images (default 1000)")
    p.add_argument(
        "--fractions",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[i / 10 for i in range(11)],
        help="shifts in units of V_th/T",
    )
    p.add_argument("--out", default=None)
    add_conversion_options(p)
    p.set_defaults(func=cmd_shift_scan, batch_size=128)


def cmd_train(args) -> None:
    from snnconv import train

    train.run(train.config_from_args(args), progress=not args.quiet)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a zoo model with threshold ReLU on a dataset")
    p.add_argument("--out", required=True, help="run folder (created; resumed if it has last.pt)")
    p.add_argument("--model", default="resnet20", choices=models.NAMES)
    p.add_argument("--dataset", default="cifar10", choices=data.NAMES)
    p.add_argument("--act", default="threshold", choices=models.ACTS)
    p.add_argument("--y-th", dest="y_th", type=float, default=1.0)
    p.add_argument(
        "--levels", type=int, default=None, help="quantisation levels L of --act qcfs (default 8)"
    )
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
    p.add_argument(
        "--init",
        default=None,
        help="start from these weights (a model file or shipped name of the same architecture)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def add_conversion_options(p, shift: str = "bias") -> None:
    p.add_argument("--dataset", default="cifar10", choices=data.NAMES)
    p.add_argument(
        "--data-root",
        dest="data_root",
        default=None,
        help="dataset folder (default: $SNNCONV_DATA or the per-user cache)",
    )
    p.add_argument("--threshold", default="activation", choices=("activation", "max", "percentile"))
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--shift", default=shift, choices=("bias", "membrane", "none"))
    p.add_argument("--readout", default="current", choices=("current", "spikes"))
    p.add_argument(
        "--calibration-images",
        dest="calibration_images",
        type=int,
        default=2048,
        help="training images (unaugmented) used for max/percentile thresholds",
    )
    p.add_argument("--batch-size", dest="batch_size", type=int, default=250)
    p.add_argument("--e-mac", dest="e_mac", type=float, default=4.6, help="pJ per MAC")
    p.add_argument("--e-ac", dest="e_ac", type=float, default=0.9, help="pJ per accumulate")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy vs T, layer-wise error, firing rates, cost")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="model file, training folder, or "
        "shipped model name (" + ", ".join(shipped.names()) + ")",
    )
    p.add_argument("--T", type=_ints, default=[8, 16, 32, 64, 128])
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    p.add_argument("--out", required=True)
    p.add_argument("--plots", type=_bool, default=True)
    add_conversion_options(p)
    p.set_defaults(func=cmd_evaluate)


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="convert the shipped CIFAR-10 ResNet-20 and evaluate it")
    p.add_argument("--T", type=_ints, default=[16, 32, 64])
    p.add_argument("--limit", type=int, default=2000, help="test images (default 2000)")
    add_conversion_options(p, shift="membrane")
    p.set_defaults(func=cmd_demo, dataset="cifar10")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snnconv", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo with parameter counts").set_defaults(
        func=cmd_models
    )
    add_train(sub)
    add_evaluate(sub)
    add_demo(sub)
    add_shift_scan(sub)
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
