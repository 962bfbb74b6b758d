"""Time to a usable accuracy: the smallest T that brings each SNN within 1 point (and 0.5 point)
of its own ANN on the full CIFAR-10 test set, times the wall time to simulate the test set at
that T.

    python benchmarks/time_to_accuracy.py --data-root ../shared/data             # snnconv rows
    .venv-sj/bin/python benchmarks/time_to_accuracy.py --data-root ../shared/data  # + SpikingJelly

Accuracy vs T comes from benchmarks/low_latency.py's cache (benchmarks/results/low_latency.jsonl,
full test set, 10,000 images; run that first): every row there of a shipped model, snnconv's
methods and SpikingJelly 2.0.0's conversions on the ReLU model (its best two by default, each with
its plain and its delayed readout: see low_latency.py). T* is the smallest T of the row's grid
(1, 2, 4, ..., 64, or the finer 1, 2, 4, 8, 12, 16, 24, 32, 48, 64 where the row was run on it)
whose accuracy is >= ANN - 1 point (resp. 0.5); "not reached by T=64" when none is (T* is a
point of the grid: the exact smallest T lies after the grid's previous point, for both tools
alike). What each row costs once, before any test image, is shown beside and not added: the
conversion (timed here: snnconv's percentile thresholds on --calibration-images, SpikingJelly's
conversion on --sj-calibration-images) and, for rows calibrated per T ("+mse", "+threshold"),
the calibration for that T (its seconds from the cache). A "+mse" row's simulation is timed on
the same network uncalibrated (that calibration moves biases and initial membranes, so every
step does the same operations), one timing shared by every row and target with the same T; a
"+threshold" row's on the network calibrated here for T* as for its accuracy (its thresholds
change how many spikes there are), and that calibration, timed in this run, is its one-off cost.

Then, in this one process, the wall time to simulate --time-images test images at T* is measured
for each row (snnconv: ``snn(x, T*)`` per batch of --batch; SpikingJelly: its single-step loop,
``for t in range(T): acc += net(x)``, the faster of its two step modes in benchmarks/spikingjelly_compare.py,
channels_last like snnconv, on the network of the row, calibrated as for its accuracy on
--sj-calibration-images; a delayed readout runs the same T steps, so it shares its plain row's
timing) and scaled to 10,000 images; where SpikingJelly never reaches the
target, its time at T=64 is a lower bound ("> ..."). Each timing: one warm-up batch, then every
batch timed; the spread is the fastest and slowest batch scaled the same way. Timings run one
after the other, each on all --threads, in --passes passes over all of them, every other pass in
reverse order; each timing keeps its pass with the lowest median (both tools alike), so a slow
minute of a shared machine does not land on one row only. The machine's instruction set is
printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# SpikingJelly's conversions show tqdm bars; tqdm reads this when it is first imported
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import snnconv  # noqa: E402
from snnconv.io import checkpoint, data  # noqa: E402
from snnconv.kernels import backend  # noqa: E402
from snnconv.zoo import shipped  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import low_latency  # noqa: E402  (the cache and the conversions of the accuracy table)

FULL = 10000
TARGETS = (0.01, 0.005)  # within 1 point, within 0.5 point of the ANN


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache", default=low_latency.DEFAULT_CACHE)
    p.add_argument("--time-images", type=int, default=1000, help="test images timed per row")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--calibration-images", type=int, default=1024)
    p.add_argument("--sj-calibration-images", type=int, default=50000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--passes", type=int, default=2, help="passes over every timing (best kept)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    for name in ("time_images", "batch", "calibration_images", "sj_calibration_images", "passes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def as_timed(row: dict, args) -> bool:
    """Whether a cached row was measured as this run times it: the full test set, and the
    calibration images its tool's conversion gets here (a SpikingJelly row calibrated on another
    count, such as the first-example modes' 1,024, is left out)."""
    settings = row.get("settings", {})
    sj = row["method"].startswith("spikingjelly")
    images = args.sj_calibration_images if sj else args.calibration_images
    return settings.get("images") == FULL and settings.get("calibration_images") == images


def first_t(acc: dict[int, float], target: float) -> int | None:
    return next((t for t in sorted(acc) if acc[t] >= target), None)


def timed(run, batches) -> dict:
    """Seconds per FULL images (median batch, fastest and slowest), after one warm-up batch."""
    run(batches[0])
    per = []
    for x in batches:
        begun = time.perf_counter()
        run(x)
        per.append((time.perf_counter() - begun) / x.shape[0] * FULL)
    return {"seconds": statistics.median(per), "min": min(per), "max": max(per)}


def best_pass(passes: list[dict]) -> dict:
    """The pass with the lowest median, with every pass's median beside it."""
    best = min(passes, key=lambda p: p["seconds"])
    return {**best, "pass_medians": [p["seconds"] for p in passes]}


class Timer:
    def __init__(self, args):
        self.args = args
        test = data.load("cifar10", "test", args.data_root)
        train = data.load("cifar10", "train", args.data_root)
        fmt = torch.channels_last
        x = data.normalize(test.images[: args.time_images], "cifar10")
        self.batches = list(x.contiguous(memory_format=fmt).split(args.batch))
        self.cal = data.normalize(train.images[: args.calibration_images], "cifar10")
        self.cal = self.cal.contiguous(memory_format=fmt)
        self.train = train  # SpikingJelly's calibration images are normalised when first needed
        self.sj_nets: dict[tuple, torch.nn.Module] = {}  # converted once, timed in every pass
        self.calibrated: dict[tuple, object] = {}  # "+threshold" networks, calibrated once
        self.calibration_seconds: dict[tuple, float] = {}  # and how long that took
        self.conversion_seconds: dict[tuple, float] = {}  # (tool, model, method): the first

    @staticmethod
    def key(row: dict, steps: int) -> tuple:
        """What is timed for a row at T: (tool, model, method, T), shared by the rows that run
        the same operations (a "+mse" row is timed uncalibrated)."""
        if row["tool"] != "snnconv":
            method = row["method"].removesuffix(low_latency.SJ_DELAY)
            return ("spikingjelly", row["model"], method, steps)
        base, mods = low_latency.parse_method(row["method"])
        return ("snnconv", row["model"], "+".join([base, *sorted(mods - {"mse"})]), steps)

    def snnconv_net(self, key: tuple, model):
        """The SNN a snnconv timing runs: converted (timed, the first time), and for a
        "+threshold" row calibrated for its T (once, kept for every pass)."""
        _, _, method, steps = key
        if key in self.calibrated:
            return self.calibrated[key]
        begun = time.perf_counter()
        snn = low_latency.convert_row(model.to(memory_format=torch.channels_last), method, self.cal)
        self.conversion_seconds.setdefault(key[:3], time.perf_counter() - begun)
        if low_latency.calibration_of(method) == "threshold":
            record = snnconv.calibrate(snn, self.cal, steps, method="threshold")
            self.calibrated[key], self.calibration_seconds[key] = snn, record.seconds
        return snn

    def timing(self, key: tuple) -> dict:
        tool, model_name, method, steps = key
        print(f"{model_name} {method}: T={steps} ...", flush=True)
        model = shipped.load_pretrained(model_name)
        begun = time.perf_counter()
        if tool == "snnconv":
            snn = self.snnconv_net(key, model)
            run = lambda x: snn(x, steps)  # noqa: E731
        else:
            import spikingjelly_compare as sjc  # needs spikingjelly (.venv-sj)

            if (model_name, method) not in self.sj_nets:
                ann, _ = sjc.relu_copy(model)
                cal = data.normalize(
                    self.train.images[: self.args.sj_calibration_images], "cifar10"
                )
                net = sjc.sj_convert(ann, cal, method.split(" ", 1)[1], 128)
                self.sj_nets[model_name, method] = net.to(memory_format=torch.channels_last)
                self.conversion_seconds[key[:3]] = time.perf_counter() - begun
            net = self.sj_nets[model_name, method]
            run = lambda x: sjc.sj_single_sum(net, x, steps)  # noqa: E731
        with torch.no_grad():
            return timed(run, self.batches)


def targets(rows: list[dict]) -> list[tuple[dict, float, int | None, int | None]]:
    """(row, gap, T*, T timed) for every row and target. T* is None where the target is not
    reached; then SpikingJelly is timed at the largest T (a lower bound), snnconv not at all."""
    out = []
    for row in rows:
        for gap in TARGETS:
            steps = first_t(row["accuracy"], row["ann"] - gap)
            sj = row["tool"] != "snnconv"
            out.append((row, gap, steps, steps or (max(row["accuracy"]) if sj else None)))
    return out


def measure(rows: list[dict], timer: Timer, passes: int) -> list[dict]:
    """Every timing the table needs, ``passes`` times (every other pass reversed), best kept."""
    wanted = []
    for row, _, _, timed_at in targets(rows):
        key = timer.key(row, timed_at)
        wanted += [key] if timed_at and key not in wanted else []
    runs: dict[tuple, list[dict]] = {key: [] for key in wanted}
    for i in range(passes):
        for key in wanted if i % 2 == 0 else wanted[::-1]:
            runs[key].append(timer.timing(key))
    out = []
    for row, gap, steps, timed_at in targets(rows):
        res = {"model": row["model"], "method": row["method"], "tool": row["tool"]}
        res.update(ann=row["ann"], within=gap, T=steps, reached=steps is not None)
        res["last_T"] = max(row["accuracy"])  # a calibrated row's grid may end before T=64
        res["accuracy"] = row["accuracy"][timed_at or max(row["accuracy"])]
        if timed_at:
            key = timer.key(row, timed_at)
            res.update(timed_T=timed_at, **best_pass(runs[key]))
            cal = row.get("calibration_seconds", {}).get(steps) if steps else None
            res["calibration_seconds"] = timer.calibration_seconds.get(key, cal)
            res["conversion_seconds"] = timer.conversion_seconds[key[:3]]
        out.append(res)
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| model | method | ANN | within | T* | accuracy at T* | s per 10,000 images (range) "
        "| once: conversion + calibration, s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r["reached"]:
            t = str(r["T"])
            s = f"{r['seconds']:.1f} ({r['min']:.1f}-{r['max']:.1f})"
        else:
            t = f"not reached by T={r['last_T']}"
            s = f"> {r['seconds']:.1f} (at T={r['timed_T']})" if "seconds" in r else "—"
        once = "—"
        if "conversion_seconds" in r:
            once = f"{r['conversion_seconds']:.1f}"
            if r.get("calibration_seconds"):
                once += f" + {r['calibration_seconds']:.0f}"
        lines.append(
            f"| {r['model']} | {r['method']} | {100 * r['ann']:.2f} | {100 * r['within']:.1f} | "
            f"{t} | {100 * r['accuracy']:.2f} | {s} | {once} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shipped_model = lambda row: row["model"] in shipped.names()  # noqa: E731
    cache = low_latency.load_cache(Path(args.cache), lambda row: as_timed(row, args))
    rows = list(filter(shipped_model, cache.values()))
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        print("spikingjelly not importable: its rows are skipped (use .venv-sj's python)")
        rows = [r for r in rows if r["tool"] == "snnconv"]
    if not rows:
        raise SystemExit(f"no full-test-set rows in {args.cache}: run low_latency.py first")
    timer = Timer(args)
    isa = backend.isa_label()
    print(
        f"machine: {platform.machine()} ({isa}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; timing {args.time_images} images, batch {args.batch}"
    )
    results = measure(rows, timer, args.passes)
    print(table(results))
    if args.out:
        checkpoint.save_text(json.dumps({"isa": isa, "rows": results}, indent=1) + "\n", args.out)
    print(json.dumps({"isa": isa, "rows": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
