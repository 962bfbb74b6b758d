"""The ``snnconv`` command line: train, evaluate, shift-scan, demo, models.

Choices and defaults come from the library (``snnconv.options``; ``snnconv train``'s options are
the fields of ``TrainConfig``) and values are checked by its checks, before any work. Every
failure the user can fix (missing file, bad option, wrong checkpoint) ends in one line on stderr,
"snnconv: error: ...", and exit status 2; ``--out`` folders are replaced all at once or not at
all (``snnconv.evaluation.report``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import time
import typing

import torch

from snnconv import options, train
from snnconv.conversion.calibrate import calibrate
from snnconv.conversion.convert import convert, needs_calibration
from snnconv.evaluation import evaluate, report
from snnconv.evaluation.results import CheckpointRecord, Environment, Results
from snnconv.exceptions import OptionError, SnnconvError
from snnconv.io import checkpoint, data
from snnconv.measures import shift_sweep
from snnconv.simulation import workspace
from snnconv.zoo import models, shipped

USER_ERRORS = (SnnconvError, OSError, ValueError, TypeError)
PROG = "snnconv"
# Command-line defaults that are no library default.
EVALUATE_STEPS = [8, 16, 32, 64, 128]
DEMO_STEPS = [4, 8, 16, 32]
# (model, neuron): the paper's method on the threshold model; the best shipped model and neuron
DEMO_MODELS = (("resnet20-cifar10", "if"), ("resnet20-cifar10-qcfs", "signed"))
EVALUATE_BATCH = 250
SHIFT_SCAN_BATCH = 128
SHIFT_SCAN_FILE = "shift_scan.json"
# convert()'s own defaults (threshold, percentile, shift, readout, maxpool), not copies of them.
CONVERT_DEFAULTS = {k: p.default for k, p in inspect.signature(convert).parameters.items()}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _split_numbers(text: str, cast, kind: str) -> list:
    try:
        return [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None


def _ints(text: str) -> list[int]:
    return _split_numbers(text, int, "integers")


def _floats(text: str) -> list[float]:
    return _split_numbers(text, float, "numbers")


def _step_list(values, what: str) -> list[int]:
    if isinstance(values, int):
        return options.check_steps(values, what)
    if not values:
        raise OptionError(f"{what}: give at least one number of time steps")
    return sorted({options.check_steps(v, what) for v in values})


# The library check of each option the commands share (train's: TrainConfig's own fields), run on
# the parsed values, defaults included, before any work: check(value, "--option") -> value.
CHECKS = {
    "T": _step_list,
    "calibrate_T": options.check_steps,
    "limit": options.check_count,
    "calibration_images": options.check_count,
    "batch_size": options.check_count,
    "percentile": options.check_percentile,
    "e_mac": lambda v, what: options.check_energy(what, v),
    "e_ac": lambda v, what: options.check_energy(what, v),
    "fractions": lambda v, what: _named(what, shift_sweep.check_fractions, v),
}


def _named(what: str, check, value):
    """``check(value)``, its OptionError prefixed with the option's name."""
    try:
        return check(value)
    except OptionError as err:
        raise OptionError(f"{what}: {err}") from None


def check_args(args: argparse.Namespace) -> None:
    """Replace each option in CHECKS by its checked value; OptionError names the option."""
    for name, check in CHECKS.items():
        value = getattr(args, name, None)
        if value is not None:
            setattr(args, name, check(value, options.flag(name)))


def cmd_models(args) -> None:
    """Parameter count of every zoo model (CIFAR-shaped input)."""
    print(f"{'model':<16}{'params (10 classes)':>22}{'params (100 classes)':>22}")
    for name in models.NAMES:
        counts = [models.count_parameters(models.build(name, num_classes=n)) for n in (10, 100)]
        print(f"{name:<16}{counts[0]:>22,}{counts[1]:>22,}")


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
    """A split, its first ``limit`` images only when ``limit`` is given (checked by check_args)."""
    ds = data.load(dataset, split, root, download=download)
    if limit is not None:
        ds = data.Dataset(ds.images[:limit], ds.labels[:limit], ds.classes, ds.name, ds.split)
    return ds


def _normalised_batches(ds: data.Dataset, batch_size: int):
    """Normalised float batches in channels_last, the faster layout for convolutions here
    (benchmarks/sim_profile.py --channels-last)."""
    for images, labels in data.batches(ds, batch_size):
        yield data.normalize(images, ds.name).contiguous(memory_format=torch.channels_last), labels


def _calibration_images(args, dataset: str) -> list[torch.Tensor]:
    """The first --calibration-images training images, unaugmented, normalised, in batches."""
    train_split = _split(dataset, "train", args.data_root, args.calibration_images, False)
    return [x for x, _ in _normalised_batches(train_split, options.CALIBRATION_BATCH)]


def _convert_for(model, args, dataset: str):
    """Convert with the CLI's options, then calibrate with --calibrate. Calibration images
    (the first --calibration-images of the unaugmented training split) are loaded only when
    the conversion needs data or --calibrate asks for a calibration."""
    method = getattr(args, "calibrate", "none")
    images = None
    if method != "none" or needs_calibration(model, args.threshold, args.readout, args.maxpool):
        images = _calibration_images(args, dataset)
    snn = convert(
        model,
        calibration=images
        if needs_calibration(model, args.threshold, args.readout, args.maxpool)
        else None,
        threshold=args.threshold,
        percentile=args.percentile,
        shift=args.shift,
        neuron=args.neuron,
        readout=args.readout,
        maxpool=args.maxpool,
    )
    snn = snn.to(memory_format=torch.channels_last)  # matches _normalised_batches
    if method != "none":
        steps = args.calibrate_T or max(args.T)
        print(f"calibrating ({method}) for T={steps} on {args.calibration_images} training images")
        record = calibrate(snn, torch.cat(images), steps, method=method)
        print(f"  {record.note()} ({record.seconds:.0f} s)", flush=True)
    return snn


def _run_evaluation(
    args, name: str, download: bool, layer_errors: bool = True, test=None
) -> Results:
    """Evaluate checkpoint ``name`` on the test split (or ``test``, already loaded)."""
    ckpt, model = _model_for(name, args.dataset)
    if test is None:
        test = _split(args.dataset, "test", args.data_root, args.limit, download)
    snn = _convert_for(model, args, args.dataset)
    print(
        f"{name}: {ckpt['arch']['name']} on {args.dataset} test, {len(test)} images, "
        f"threshold={snn.threshold}, shift={snn.shift}, neuron={snn.neuron}, "
        f"readout={snn.readout}"
    )
    print(report.steps_note(snn.shift, args.T), flush=True)
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
    results = dataclasses.replace(
        results,
        dataset=args.dataset,
        model=ckpt["arch"]["name"],
        checkpoint=CheckpointRecord.of(name, ckpt["path"]),
    )
    print(report.table(results))
    return results


def cmd_evaluate(args) -> None:
    report.check_writable(args.out)
    if args.plots:
        report.check_plotting()
    results = _run_evaluation(args, args.checkpoint, download=False)
    print(report.layer_table(results, results.steps[-1]))
    for path in report.write(results, args.out, plots=args.plots):
        print(f"wrote {path}")


def cmd_demo(args) -> None:
    """The paper's conversion of the shipped threshold ResNet-20 next to the shipped QCFS one
    with signed neurons (--neuron: the same neuron for both)."""
    start = time.perf_counter()
    summary = []
    test = _split(args.dataset, "test", args.data_root, args.limit, True)
    chosen = args.neuron
    for name, neuron in DEMO_MODELS:
        args.neuron = chosen or neuron
        results = _run_evaluation(args, name, download=True, layer_errors=False, test=test)
        summary.append((f"{name} ({args.neuron})", results))
        print()
    print(f"{'model (neuron)':<33}{'ANN':>8}" + "".join(f"{'T=' + str(t):>9}" for t in args.T))
    for name, r in summary:
        accs = "".join(f"{100 * r.snn_accuracy[t]:8.2f}%" for t in args.T)
        print(f"{name:<33}{100 * r.ann_accuracy:7.2f}%{accs}")
    print(f"demo done in {time.perf_counter() - start:.0f} s")


def cmd_shift_scan(args) -> None:
    if args.out:
        report.check_writable(args.out, (SHIFT_SCAN_FILE,))
    ckpt, model = _model_for(args.checkpoint, args.dataset)
    test = _split(args.dataset, "test", args.data_root, args.limit, False)
    args.shift = "bias"
    snn = _convert_for(model, args, args.dataset)
    print(
        f"{args.checkpoint}: shift scan at T={args.T} on {len(test)} {args.dataset} test images",
        flush=True,
    )
    batches = list(_normalised_batches(test, args.batch_size))
    result = shift_sweep.sweep(snn, batches, args.T, args.fractions)
    print(shift_sweep.table(result))
    if args.out:
        record = {
            "dataset": args.dataset,
            "checkpoint": dataclasses.asdict(CheckpointRecord.of(args.checkpoint, ckpt["path"])),
            "environment": dataclasses.asdict(Environment.current()),
            **result,
        }
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
        for path in report.write_set({SHIFT_SCAN_FILE: text.encode()}, args.out):
            print(f"wrote {path}")


def cmd_train(args) -> None:
    train.run(train.config_from_args(args), progress=not args.quiet)


def add_shift_scan(sub) -> None:
    p = sub.add_parser("shift-scan", help="per-layer shift that minimises the conversion error")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--limit", type=int, default=1000, help="test images (default 1000)")
    p.add_argument(
        "--fractions",
        type=_floats,
        default=list(options.SHIFT_FRACTIONS),
        help="shifts in units of V_th/T, comma-separated, among them 0 (none) and 0.5 (V_th/(2T))",
    )
    p.add_argument("--out", default=None, help=f"folder for {SHIFT_SCAN_FILE} (replaced)")
    add_conversion_options(p)
    p.set_defaults(func=cmd_shift_scan, batch_size=SHIFT_SCAN_BATCH)


def _field_type(hint):
    """The argparse type of a TrainConfig field: its type without None; bools as true/false."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return str
    if args:  # X | None
        return _field_type(args[0])
    return _bool if hint is bool else hint


def add_train(sub) -> None:
    """``snnconv train``: one option per TrainConfig field (name, type, default, help, choices)."""
    p = sub.add_parser("train", help="train a zoo model with threshold ReLU on a dataset")
    hints = typing.get_type_hints(train.TrainConfig)
    for f in dataclasses.fields(train.TrainConfig):
        kw = dict(dest=f.name, type=_field_type(hints[f.name]), help=f.metadata["help"])
        if f.metadata["choices"] is not None:
            kw["choices"] = f.metadata["choices"]
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
            kw["help"] += "" if f.default is None else f" (default: {f.default})"
        kw["help"] = kw["help"].replace("%", "%%")  # argparse formats help with %
        p.add_argument(options.flag(f.name), **kw)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def add_conversion_options(
    p,
    shift: str | None = CONVERT_DEFAULTS["shift"],
    neuron: str | None = CONVERT_DEFAULTS["neuron"],
) -> None:
    p.add_argument("--dataset", default="cifar10", choices=data.NAMES)
    p.add_argument(
        "--data-root",
        dest="data_root",
        default=None,
        help="dataset folder (default: $SNNCONV_DATA or the per-user cache)",
    )
    p.add_argument(
        "--threshold", default=CONVERT_DEFAULTS["threshold"], choices=options.THRESHOLD_MODES
    )
    p.add_argument("--percentile", type=float, default=CONVERT_DEFAULTS["percentile"])
    p.add_argument(
        "--shift",
        default=shift,
        choices=options.SHIFTS,
        help=f"default: {shift}" if shift else "default: membrane for QCFS models, else bias",
    )
    p.add_argument(
        "--neuron",
        default=neuron,
        choices=options.NEURONS,
        help="if: spikes 0 or V_th; signed: also -V_th, taking back a spike fired too early "
        + (f"(default: {neuron})" if neuron else "(default: each demo model's own)"),
    )
    p.add_argument("--readout", default=CONVERT_DEFAULTS["readout"], choices=options.READOUTS)
    p.add_argument(
        "--maxpool",
        default=CONVERT_DEFAULTS["maxpool"],
        choices=options.MAXPOOLS,
        help="max pooling: refuse it (error) or replace it by average pooling (avg)",
    )
    p.add_argument(
        "--calibration-images",
        dest="calibration_images",
        type=int,
        default=options.CALIBRATION_IMAGES,
        help="the first N training images (unaugmented) for max/percentile thresholds and "
        f"--calibrate (default {options.CALIBRATION_IMAGES})",
    )
    _add_calibration_options(p)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=EVALUATE_BATCH)
    p.add_argument("--e-mac", dest="e_mac", type=float, default=options.E_MAC_PJ, help="pJ per MAC")
    p.add_argument(
        "--e-ac", dest="e_ac", type=float, default=options.E_AC_PJ, help="pJ per accumulate"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_calibration_options(p) -> None:
    p.add_argument(
        "--calibrate",
        default="none",
        choices=options.CALIBRATION_CHOICES,
        help="post-conversion calibration (snnconv.calibrate): bias, potential (initial "
        "membrane), mse (both, least squared rate error) or threshold (each channel's V_th "
        "scaled to fit, then mse); default none",
    )
    p.add_argument(
        "--calibrate-T",
        dest="calibrate_T",
        type=int,
        default=None,
        help="the T to calibrate for (default: the largest --T); other T run with the same "
        "corrections",
    )


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy vs T, layer-wise error, firing rates, cost")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="model file, training folder, or "
        "shipped model name (" + ", ".join(shipped.names()) + ")",
    )
    p.add_argument("--T", type=_ints, default=EVALUATE_STEPS)
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    p.add_argument(
        "--out",
        required=True,
        help="folder for results.json, report.md and the plots (replaced as a whole)",
    )
    p.add_argument("--plots", type=_bool, default=True)
    add_conversion_options(p)
    p.set_defaults(func=cmd_evaluate)


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="convert the shipped CIFAR-10 ResNet-20s (threshold ReLU; QCFS, signed neurons) and "
        "evaluate them",
    )
    p.add_argument("--T", type=_ints, default=DEMO_STEPS)
    p.add_argument("--limit", type=int, default=2000, help="test images (default 2000)")
    add_conversion_options(p, shift="membrane", neuron=None)
    p.set_defaults(func=cmd_demo, dataset="cifar10")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="convert a checkpoint and write the SNN as a NIR graph")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="model file, training folder, or shipped model name ("
        + ", ".join(shipped.names())
        + ")",
    )
    p.add_argument("--format", default="nir", choices=("nir",))
    p.add_argument("--out", required=True, help="the .nir file to write (replaced atomically)")
    p.add_argument(
        "--shift",
        default=None,
        choices=options.SHIFTS,
        help="default: the library's (membrane for QCFS models, else bias)",
    )
    p.add_argument(
        "--T",
        dest="steps",
        type=int,
        default=None,
        help="steps the file is for (required with --shift bias)",
    )
    p.add_argument(
        "--if-form",
        dest="if_form",
        default="loop",
        choices=("loop", "if"),
        help="IF layers as NIR's exact I/Threshold/Scale loop, or as nir.IF plus metadata",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> None:
    """Convert a checkpoint (V_th from its activations, no data) and write it as NIR."""
    from snnconv.io.nir import export_nir  # needs the optional package nir

    steps = None if args.steps is None else options.check_steps(args.steps, "--T")
    ckpt = shipped.load_checkpoint(args.checkpoint)
    arch = ckpt["arch"]
    snn = convert(checkpoint.build_model(ckpt), shift=args.shift)
    if snn.shift == "bias" and steps is None:
        raise OptionError(
            "--shift bias (this model's default) needs --T: the file holds the shift V_th/(2T) "
            "for one T; or pass --shift membrane"
        )
    shape = (arch["in_channels"], arch["image_size"], arch["image_size"])
    graph = export_nir(snn, args.out, T=steps, if_form=args.if_form, input_shape=shape)
    print(
        f"wrote {args.out} ({os.path.getsize(args.out):,} bytes): {arch['name']} as NIR, "
        f"{len(snn.layers)} IF layers ({args.if_form} form), {len(graph.nodes)} nodes, "
        f"{len(graph.edges)} edges, shift={snn.shift}, T={steps}"
    )
    print(f"input {list(shape)}: analog current every step; readout: mean of the output node")


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo with parameter counts").set_defaults(
        func=cmd_models
    )
    add_train(sub)
    add_evaluate(sub)
    add_demo(sub)
    add_shift_scan(sub)
    add_export(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workspace.keep_freed_memory()  # this process's allocations: see the function
    try:
        check_args(args)
        args.func(args)
    except USER_ERRORS as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
