"""Training and inference throughput (images/s) of every zoo model on this machine's CPU.

    python benchmarks/train_speed.py [--batch 64] [--repeats 5]

CIFAR-shaped input (3x32x32, 10 classes), threshold activations. Training = forward, backward and
an SGD step; inference = eval-mode forward; both in both memory formats (contiguous NCHW and
channels_last; `snnconv train` uses channels_last on CPU by default). Median of --repeats timed
steps after 2 warm-up steps, the formats interleaved; the spread is min-max. Prints a markdown
table and, last, one JSON line.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from snnconv import train
from snnconv.zoo import models


def timed_pair(fns: dict, repeats: int) -> dict:
    """(median, min, max) seconds per call of each function, calls interleaved."""
    for fn in fns.values():
        fn()
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}"
    )
    print(
        "| model | params | train img/s NCHW | train img/s channels_last | infer img/s NCHW "
        "| infer img/s channels_last |"
    )
    print("|---|---|---|---|---|---|")
    for name in models.NAMES:
        x = torch.randn(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,))
        nets, inputs, opts = {}, {}, {}
        for fmt, mf in (("nchw", torch.contiguous_format), ("cl", torch.channels_last)):
            torch.manual_seed(0)
            nets[fmt] = models.build(name).to(memory_format=mf)
            inputs[fmt] = x.contiguous(memory_format=mf)
            opts[fmt] = torch.optim.SGD(
                train.parameter_groups(nets[fmt], 5e-4), lr=0.01, momentum=0.9
            )

        def step(fmt):
            loss = F.cross_entropy(nets[fmt](inputs[fmt]), y)
            opts[fmt].zero_grad(set_to_none=True)
            loss.backward()
            opts[fmt].step()

        tr = timed_pair({f: (lambda f=f: step(f)) for f in nets}, args.repeats)
        for net in nets.values():
            net.eval()
        with torch.no_grad():
            inf = timed_pair({f: (lambda f=f: nets[f](inputs[f])) for f in nets}, args.repeats)
        rate = lambda t: args.batch / t
        row = {
            "model": name,
            "params": models.count_parameters(nets["nchw"]),
            **{f"train_{f}": rate(tr[f][0]) for f in nets},
            **{f"train_{f}_range": [rate(tr[f][2]), rate(tr[f][1])] for f in nets},
            **{f"infer_{f}": rate(inf[f][0]) for f in nets},
        }
        rows.append(row)
        cell = lambda f: (
            f"{row[f'train_{f}']:.0f} ({row[f'train_{f}_range'][0]:.0f}-"
            f"{row[f'train_{f}_range'][1]:.0f})"
        )
        print(
            f"| {name} | {row['params']:,} | {cell('nchw')} | {cell('cl')} | "
            f"{row['infer_nchw']:.0f} | {row['infer_cl']:.0f} |",
            flush=True,
        )
    print(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
