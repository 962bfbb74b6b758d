"""Accuracy vs simulation length T for every low-latency method, each on its own model.

    python benchmarks/low_latency.py --data-root ../shared/data            # snnconv rows
    .venv-sj/bin/python benchmarks/low_latency.py --data-root ../shared/data  # + SpikingJelly

Rows (model: method):
- resnet20-cifar10 (ThresholdReLU y_th=1): the paper's shift V_th/(2T) on the input current
  ("bias": T-dependent, one run per T); the membrane starting at V_th/2 ("membrane": one run of
  the largest T gives every T); membrane + calibration ("membrane+mse": ``snnconv.calibrate``,
  method mse, fitted for each T on the first --calibration-images unaugmented training images,
  one run per T).
- resnet20-cifar10-qcfs (QCFS, L=4): membrane (V_th = lambda, v(0) = lambda/2, QCFS's own
  conversion); membrane + calibration.
- resnet20-cifar10-relu (plain ReLU): snnconv's percentile thresholds (99.99th percentile of
  each layer's activations on the calibration images: "percentile"; another percentile p:
  "percentileP", e.g. "percentile99.9") + membrane, with and without calibration;
  SpikingJelly 2.0.0 ``ann2snn`` with each --sj-modes conversion (spikingjelly_compare.SJ_RECIPES:
  by default its two best, the channel-wise 99.9% recipe and local threshold balancing, both with
  membranes from V_th/2), calibrated on the first --sj-calibration-images training images (default
  all 50,000, as its ImageNet example does: LTB's online threshold rule needs them, with 1,024 it
  stays below 20 %), each with its plain readout and with its delayed readout ("+delay", its own
  ``estimate_delay_start``); only where spikingjelly imports: run with .venv-sj's python, see
  benchmarks/spikingjelly_setup.sh. Its neurons have no T-dependent parameter, so one run gives
  every T (and the delayed readout of every T).
- "+signed": the same conversion with signed neurons (``convert(neuron="signed")``: a neuron may
  spike -V_th to take back a spike it fired too early). No extra steps: T counts every step.
- "+threshold": calibrated for each T like "+mse", by ``snnconv.calibrate`` method threshold
  (each channel's V_th scaled by the factor that fits its rate best, then as mse).
Any other model (a shipped name or a checkpoint path) can be given with --rows MODEL:METHOD.

A row run on a finer --T grid (say 1,2,4,8,12,16,24,32,48,64) serves every coarser grid it
contains: the table shows the columns asked for. Calibrated rows are computed for the --calibrated-T values (each T its own calibration, saved
as it finishes); a later run with other values adds them to the row. Every row sees the same
test images (the first --images of the CIFAR-10 test split, default all
10,000) and its model's ANN accuracy on them is printed beside it. Each row is one unit of work,
appended to --cache (JSON lines, with the settings it was run with) when it finishes; a rerun with
the same settings skips the rows already there, so the benchmark survives an interruption.
Output: a markdown table (accuracy %, ANN first) and --plot (accuracy vs T, log2 axis).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # SpikingJelly's calibration loops show tqdm bars

import torch  # noqa: E402

import snnconv
from snnconv.io import data
from snnconv.options import DEFAULT_PERCENTILE, check_percentile
from snnconv.zoo import shipped

STEPS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CACHE = "benchmarks/results/low_latency.jsonl"  # the rows the README's tables quote
DEFAULT_PLOT = "docs/low_latency.png"  # the figure of that cache
ROWS = (
    ("resnet20-cifar10", "bias"),
    ("resnet20-cifar10", "membrane"),
    ("resnet20-cifar10", "membrane+mse"),
    ("resnet20-cifar10", "membrane+signed"),
    ("resnet20-cifar10-qcfs", "membrane"),
    ("resnet20-cifar10-qcfs", "membrane+mse"),
    ("resnet20-cifar10-qcfs", "membrane+signed"),
    ("resnet20-cifar10-qcfs", "membrane+signed+mse"),
    ("resnet20-cifar10-relu", "percentile"),
    ("resnet20-cifar10-relu", "percentile+mse"),
    ("resnet20-cifar10-relu", "percentile+signed"),
    ("resnet20-cifar10-relu", "percentile99.9+signed"),
    ("resnet20-cifar10-relu", "percentile99.9+signed+mse"),
    ("resnet20-cifar10-relu", "percentile99.9+signed+threshold"),
)
BASES = ("bias", "membrane", "percentile")  # a method is BASE, then +signed and/or a calibration
CALIBRATIONS = ("mse", "threshold")  # snnconv.calibrate's methods a row may be calibrated by
MODIFIERS = ("signed", *CALIBRATIONS)


def parse_method(method: str) -> tuple[str, set[str]]:
    """ "percentile+signed+mse" -> ("percentile", {"signed", "mse"}); ValueError if unknown.
    "percentileP" (P a number, e.g. "percentile99.9") is the base "percentile" at the P-th
    percentile: ``percentile_of`` reads it."""
    base, *mods = method.split("+")
    known = base in BASES or re.fullmatch(r"percentile\d+(\.\d+)?", base)
    if (
        not known
        or not set(mods) <= set(MODIFIERS)
        or len(set(mods)) != len(mods)
        or len(set(mods) & set(CALIBRATIONS)) > 1
    ):
        raise ValueError(
            f"method {method!r}: expected one of {BASES} (or percentileP, P a number), then "
            f"+signed and/or one calibration of {CALIBRATIONS} (+mse, +threshold)"
        )
    if base.startswith("percentile"):
        percentile_of(base)  # in range
    return base, set(mods)


def calibration_of(method: str) -> str | None:
    """The ``snnconv.calibrate`` method a row is calibrated by for each T ("mse", "threshold"),
    or None for an uncalibrated row."""
    return next((m for m in parse_method(method)[1] if m in CALIBRATIONS), None)


def percentile_of(base: str) -> float:
    """The percentile of a "percentile[P]" base: P, or snnconv's default for plain "percentile";
    OptionError (a ValueError) outside (0, 100]."""
    return check_percentile(
        base.removeprefix("percentile") or DEFAULT_PERCENTILE,
        f"method base {base!r}: the percentile",
    )


SJ_MODES = ("99.9% channel-wise", "ltb")  # SpikingJelly's best two (see spikingjelly_compare)
SJ_DELAY = "+delay"  # a SpikingJelly row's delayed readout (same run, same T steps)
CALIBRATED_STEPS = (1, 2, 4, 8, 16, 32)  # calibration costs about T: the T=64 one is left out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=10000, help="first N test images")
    p.add_argument("--T", default=",".join(map(str, STEPS)))
    p.add_argument("--calibration-images", type=int, default=1024)
    p.add_argument(
        "--calibrated-T",
        default=",".join(map(str, CALIBRATED_STEPS)),
        help="the T of the calibrated rows (each its own calibration)",
    )
    p.add_argument("--batch", type=int, default=250)
    p.add_argument(
        "--rows",
        default="all",
        help="what to run: comma list of model:method, or all (the "
        "table shows every row in the cache)",
    )
    p.add_argument("--sj-modes", default=",".join(SJ_MODES))
    p.add_argument("--sj-calibration-images", type=int, default=50000)
    p.add_argument("--cache", default=DEFAULT_CACHE)
    p.add_argument(
        "--plot",
        default=None,
        help=f"PNG to write (accuracy vs T; default: {DEFAULT_PLOT} with the default --cache, "
        "else none, so that a scratch cache leaves the docs' figure alone)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--table-only",
        action="store_true",
        help="print the table (and plot) of the cache, run nothing",
    )
    args = p.parse_args(argv)
    for name in ("images", "calibration_images", "sj_calibration_images", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def convert_row(model, method: str, cal: torch.Tensor):
    """The SNN of a row's method before calibration (``cal``: the calibration images, used by
    the percentile thresholds), channels_last."""
    base, mods = parse_method(method)
    neuron = "signed" if "signed" in mods else "if"
    if base.startswith("percentile"):
        snn = snnconv.convert(
            model,
            calibration=list(cal.split(128)),
            threshold="percentile",
            percentile=percentile_of(base),
            shift="membrane",
            neuron=neuron,
        )
    else:
        snn = snnconv.convert(model, shift=base, neuron=neuron)
    return snn.to(memory_format=torch.channels_last)


def _correct(out: torch.Tensor, labels: torch.Tensor) -> int:
    return int((out.argmax(-1) == labels).sum())


class Bench:
    def __init__(self, args):
        self.args = args
        self.steps = sorted({int(t) for t in args.T.split(",")})
        self.calibrated_steps = sorted({int(t) for t in args.calibrated_T.split(",")})
        test = data.load("cifar10", "test", args.data_root)
        train = data.load("cifar10", "train", args.data_root)
        n, m = args.images, args.calibration_images
        fmt = torch.channels_last
        self.x = data.normalize(test.images[:n], "cifar10").contiguous(memory_format=fmt)
        self.y = test.labels[:n]
        self.cal = data.normalize(train.images[:m], "cifar10").contiguous(memory_format=fmt)
        self.settings = {
            "images": int(self.x.shape[0]),
            "calibration_images": int(self.cal.shape[0]),
            "steps": self.steps,
            "batch": args.batch,
        }
        self.sj_cal_images = min(args.sj_calibration_images, len(train.labels))  # as used
        self.sj_settings = {**self.settings, "calibration_images": self.sj_cal_images}
        self.train = train

    def settings_for(self, method: str) -> dict:
        return self.sj_settings if method.startswith("spikingjelly") else self.settings

    def batches(self):
        return zip(self.x.split(self.args.batch), self.y.split(self.args.batch))

    def ann_accuracy(self, model) -> float:
        with torch.no_grad():
            return sum(_correct(model(x), y) for x, y in self.batches()) / len(self.y)

    def one_run(self, snn) -> dict[int, float]:
        """Every T from one run of the largest (T-independent neurons)."""
        correct = dict.fromkeys(self.steps, 0)
        for x, y in self.batches():
            out = snn(x, max(self.steps))
            for t in self.steps:
                correct[t] += _correct(out[t - 1], y)
        return {t: c / len(self.y) for t, c in correct.items()}

    def at(self, snn, t: int) -> float:
        return sum(_correct(snn(x, t)[-1], y) for x, y in self.batches()) / len(self.y)

    def convert(self, model, method: str):
        return convert_row(model, method, self.cal)

    def run_row(self, name: str, method: str, partial: dict | None, save) -> dict:
        """One row; calibrated rows are saved after each T (``save(row)``) and resume from
        ``partial``, the row as far as it got."""
        model = shipped.load_pretrained(name).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        snn = self.convert(model, method)
        row = partial or {"model": name, "method": method, "tool": "snnconv", "seconds": 0.0}
        row.setdefault("ann", self.ann_accuracy(model))
        if parse_method(method)[0] == "bias":
            row["accuracy"] = {t: self.at(snn, t) for t in self.steps}
        elif calibration_of(method):
            acc = row.setdefault("accuracy", {})
            cal_s = row.setdefault("calibration_seconds", {})
            for t in self.calibrated_steps:
                if t in acc:
                    continue
                begun = time.perf_counter()
                calibrated = copy.deepcopy(snn)
                record = snnconv.calibrate(calibrated, self.cal, t, method=calibration_of(method))
                acc[t], cal_s[t] = self.at(calibrated, t), record.seconds
                row["seconds"] += time.perf_counter() - begun
                save(row)
                print(f"  {name} {method} T={t}: {100 * acc[t]:.2f}% ({record.seconds:.0f} s)")
            return row
        else:
            row["accuracy"] = self.one_run(snn)
        row["seconds"] = time.perf_counter() - start
        return row

    def run_sj(self, name: str, method: str) -> list[dict]:
        """SpikingJelly's rows of one conversion: its plain readout and its delayed one."""
        sys.path.insert(0, str(Path(__file__).parent))
        import spikingjelly_compare as sjc  # needs spikingjelly (.venv-sj)

        model = shipped.load_pretrained(name)
        ann, _ = sjc.relu_copy(model)
        start = time.perf_counter()
        cal = data.normalize(self.train.images[: self.sj_cal_images], "cifar10")
        net = sjc.sj_convert(ann, cal, method, 128)
        delays = sjc.sj_delays(net, cal, 128, self.steps)
        plain, delayed = dict.fromkeys(self.steps, 0), dict.fromkeys(self.steps, 0)
        with torch.no_grad():
            for x, y in self.batches():
                out = sjc.sj_single(net, x.contiguous(), max(self.steps)).cumsum(0)
                for t in self.steps:
                    d = delays[t]
                    plain[t] += _correct(out[t - 1], y)
                    delayed[t] += _correct(out[t - 1] - (out[d - 1] if d else 0), y)
        common = {
            "model": name,
            "tool": "spikingjelly " + sjc.versions()["spikingjelly"],
            "ann": self.ann_accuracy(model),
            "seconds": time.perf_counter() - start,
        }
        return [
            {**common, "method": f"spikingjelly {method}", "accuracy": self.rate(plain)},
            {
                **common,
                "method": f"spikingjelly {method}{SJ_DELAY}",
                "accuracy": self.rate(delayed),
                "delay_start": delays,
            },
        ]

    def rate(self, correct: dict[int, int]) -> dict[int, float]:
        return {t: c / len(self.y) for t, c in correct.items()}


def covers(have: dict, want: dict) -> bool:
    """Whether a row run with settings ``have`` answers for ``want``: the same settings, its T
    grid holding every T wanted (a finer grid serves a coarser one)."""
    rest = lambda s: {k: v for k, v in s.items() if k != "steps"}  # noqa: E731
    return rest(have) == rest(want) and set(want.get("steps", [])) <= set(have.get("steps", []))


def load_cache(path: Path, keep: Callable[[dict], bool]) -> dict:
    """(model, method) -> the last row saved that ``keep`` accepts (a calibrated row holds the T
    done so far)."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if keep(row):
                for key in ("accuracy", "calibration_seconds", "delay_start"):
                    if key in row:
                        row[key] = {int(k): v for k, v in row[key].items()}
                done[(row["model"], row["method"])] = row
    return done


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def table(rows: list[dict], steps: list[int]) -> str:
    head = "| model | method | ANN | " + " | ".join(f"T={t}" for t in steps) + " |"
    lines = [head, "|" + "---|" * (3 + len(steps))]
    for r in rows:
        acc = r["accuracy"]
        accs = " | ".join(f"{100 * acc[t]:.2f}" if t in acc else "—" for t in steps)
        lines.append(f"| {r['model']} | {r['method']} | {100 * r['ann']:.2f} | {accs} |")
    return "\n".join(lines)


def plot(rows: list[dict], steps: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours: rows rarely share one
    for i, r in enumerate(rows):
        style = "--" if r["tool"] != "snnconv" else "-"
        ts = [t for t in steps if t in r["accuracy"]]
        ax.plot(ts, [100 * r["accuracy"][t] for t in ts], style, marker="o", ms=3,
                color=colors[i % len(colors)],
                label=f"{r['model'].replace('resnet20-cifar10', 'R20')} {r['method']}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set(xlabel="T (time steps)", ylabel="CIFAR-10 test accuracy (%)", ylim=(0, 100))
    ax.set_title("ResNet-20 SNNs: accuracy vs T")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the lines
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    os.replace(path + ".tmp.png", path)


def wanted_rows(args) -> list[tuple[str, str]]:
    """(model, method) units of work; a SpikingJelly unit is its conversion, without "+delay"."""
    wanted = list(ROWS)
    try:
        import spikingjelly  # noqa: F401

        wanted += [("resnet20-cifar10-relu", f"spikingjelly {m}") for m in args.sj_modes.split(",")]
        has_sj = True
    except ImportError:
        print("spikingjelly not importable: its rows are skipped (use .venv-sj's python)")
        has_sj = False
    if args.rows != "all":
        keep = [tuple(r.rsplit(":", 1)) for r in args.rows.split(",")]
        keep = [(name, method.removesuffix(SJ_DELAY)) for name, method in keep]
        for _, method in keep:
            if not method.startswith("spikingjelly"):
                try:
                    parse_method(method)
                except ValueError as e:  # a usage error, before any work: one line, exit 1
                    raise SystemExit(str(e)) from None
        wanted = [r for r in wanted if r in keep] + [r for r in keep if r not in wanted]
    if has_sj:  # before any work: a misspelt SpikingJelly conversion is a usage error
        sys.path.insert(0, str(Path(__file__).parent))
        import spikingjelly_compare as sjc

        for _, method in wanted:
            name = method.split(" ", 1)[1] if method.startswith("spikingjelly") else None
            if name is not None and name not in sjc.SJ_RECIPES:
                raise SystemExit(
                    f"SpikingJelly conversion {name!r}: expected one of {sjc.SJ_RECIPES}"
                )
    return wanted


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = wanted_rows(args)
    bench = Bench(args)
    cache = Path(args.cache)
    done = load_cache(
        cache, lambda row: covers(row.get("settings", {}), bench.settings_for(row["method"]))
    )
    print(f"machine: {platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; settings {bench.settings}")  # fmt: skip

    def save(row: dict) -> None:
        append(cache, {**row, "settings": bench.settings_for(row["method"])})

    for name, method in [] if args.table_only else wanted:
        partial = done.get((name, method))
        if partial is not None and (
            method.startswith("spikingjelly")
            or not calibration_of(method)
            or all(t in partial["accuracy"] for t in bench.calibrated_steps)
        ):
            continue
        print(f"{name}: {method} ...", flush=True)
        with torch.no_grad():
            if method.startswith("spikingjelly"):
                rows = bench.run_sj(name, method.split(" ", 1)[1])
            else:
                rows = [bench.run_row(name, method, partial, save)]
        for row in rows:
            if method.startswith("spikingjelly") or not calibration_of(method):
                save(row)
            done[(name, row["method"])] = row
            accs = ", ".join(f"{t}: {100 * a:.2f}" for t, a in row["accuracy"].items())
            print(f"  {row['method']}: ANN {100 * row['ann']:.2f}; {accs} ({row['seconds']:.0f} s)")
    sj = [f"spikingjelly {m}{d}" for m in args.sj_modes.split(",") for d in ("", SJ_DELAY)]
    order = [*ROWS, *[("resnet20-cifar10-relu", m) for m in sj]]
    order += [r for r in done if r not in order]  # other models given with --rows
    rows = [done[r] for r in order if r in done]  # every row measured so far
    print(table(rows, bench.steps))
    path = args.plot or (DEFAULT_PLOT if args.cache == DEFAULT_CACHE else None)
    if path:
        plot(rows, bench.steps, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
