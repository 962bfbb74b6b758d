"""Simulation speed of two snnconv source trees side by side (A/B), interleaved in one run.

    python benchmarks/ab_speed.py OLD_SRC NEW_SRC [--models resnet20,vgg16-paper] [--T 16,32]
                                  [--batch 128] [--rounds 7] [--data-root ../shared/data]
                                  [--neuron if|signed]

e.g. the tree before a refactor against the current one:
    git worktree add /tmp/snnconv-old 071faf8
    python benchmarks/ab_speed.py /tmp/snnconv-old/src src

One worker process per tree (PYTHONPATH = its src), each with the same model and the same input
(shipped weights for resnet20 and resnet20-qcfs, seeded random ones for other zoo models; the
first --batch CIFAR-10 test images when the data is there, else seeded random inputs), converted
with shift "membrane" and --neuron, channels_last. The parent asks the workers in turn, A then
B then B then A..., for one timed simulation ``snn(x, T)`` after one warm-up each; a pause
between runs lets the idle worker's threads stop spinning. It prints per tree, model and T the
median and min-max of --rounds runs and the ratio new / old of the medians, and last one JSON
object.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time, torch
import snnconv
models_, T_values, batch, data_root = sys.argv[1].split(","), sys.argv[2], int(sys.argv[3]), sys.argv[4]
neuron = sys.argv[5]
# short names of shipped models; other names are zoo architectures with seeded random weights
SHIPPED = {"resnet20": "resnet20-cifar10", "resnet20-qcfs": "resnet20-cifar10-qcfs",
           "resnet20-relu": "resnet20-cifar10-relu"}
try:
    from snnconv.zoo import models, shipped
    load_pretrained = shipped.load_pretrained
except ImportError:  # the tree before the restructure
    from snnconv import models
    load_pretrained = models.load_pretrained
try:
    from snnconv.io import data
except ImportError:
    from snnconv import data

def load(name):
    if name in SHIPPED:
        return load_pretrained(SHIPPED[name])
    torch.manual_seed(0)
    return models.build(name).eval()

def inputs():
    try:
        test = data.load("cifar10", "test", root=data_root)
        return data.normalize(test.images[:batch], "cifar10")
    except Exception:
        return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))

x = inputs().contiguous(memory_format=torch.channels_last)
nets = {}
for name in models_:
    kw = {} if neuron == "if" else {"neuron": neuron}  # trees before signed neurons: "if" only
    if name == "resnet20-relu":  # unbounded ReLUs: 99.9th-percentile thresholds, 1,024 images
        train = data.load("cifar10", "train", root=data_root)
        kw.update(calibration=data.normalize(train.images[:1024], "cifar10"),
                  threshold="percentile", percentile=99.9)
    snn = snnconv.convert(load(name), shift="membrane", **kw).to(memory_format=torch.channels_last)
    nets[name] = snn
    for T in map(int, T_values.split(",")):
        snn(x, T)  # warm-up: kernels built, buffers kept
print("ready", flush=True)
for line in sys.stdin:
    name, T = line.split()
    t = time.perf_counter()
    nets[name](x, int(T))
    print(time.perf_counter() - t, flush=True)
"""


def start(src: str, args) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            args.models,
            args.T,
            str(args.batch),
            args.data_root,
            args.neuron,
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "ready", f"worker for {src} failed"
    return p


def ask(p: subprocess.Popen, name: str, T: int) -> float:
    p.stdin.write(f"{name} {T}\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--models", default="resnet20,vgg16-paper")
    ap.add_argument("--T", default="16,32")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--neuron", default="if", choices=("if", "signed"))
    ap.add_argument("--data-root", default="../shared/data")
    args = ap.parse_args()
    workers = {"old": start(args.old, args), "new": start(args.new, args)}
    times = {}
    for r in range(args.rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        for name in args.models.split(","):
            for T in map(int, args.T.split(",")):
                for tree in order:
                    time.sleep(0.5)  # the other worker's threads stop spinning
                    times.setdefault((tree, name, T), []).append(ask(workers[tree], name, T))
    for p in workers.values():
        p.stdin.close()
        p.wait()
    cpu = next((ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln), "")
    flags = open("/proc/cpuinfo").read()
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else platform.machine()
    if os.environ.get("SNNCONV_ISA", "native") != "native":  # trees that predate it build native
        isa = f"{os.environ['SNNCONV_ISA']} (SNNCONV_ISA) on an {isa} CPU"
    print(
        f"{cpu}, {os.cpu_count()} cores, {isa}; batch {args.batch}, {args.rounds} rounds, "
        f"shift membrane, neuron {args.neuron}, channels_last"
    )
    print(f"{'model':<14}{'T':>4}{'old s (min-max)':>26}{'new s (min-max)':>26}{'new/old':>9}")
    result = {"machine": cpu, "isa": isa, "rows": []}
    for name in args.models.split(","):
        for T in map(int, args.T.split(",")):
            a, b = times[("old", name, T)], times[("new", name, T)]
            ma, mb = statistics.median(a), statistics.median(b)
            print(
                f"{name:<14}{T:>4}{ma:>10.3f} ({min(a):.3f}-{max(a):.3f}){mb:>10.3f} "
                f"({min(b):.3f}-{max(b):.3f}){mb / ma:>9.3f}"
            )
            result["rows"].append({"model": name, "T": T, "old": a, "new": b, "ratio": mb / ma})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
