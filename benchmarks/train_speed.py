"""Training and inference throughput (images/s) of every zoo model on this machine's CPU.

    python benchmarks/train_speed.py [--batch 64] [--repeats 5]

CIFAR-shaped input (3x32x32, 10 classes), threshold activations. Training = forward, backward and
an SGD step, channels_last (what `snnconv train` uses on CPU); inference = eval-mode forward,
reported for both memory formats. Median of --repeats timed steps after 2 warm-up steps; the
spread is min-max. Prints a markdown table and, last, one JSON line.
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from snnconv import models, train


def timed(fn, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| model | params | train img/s (min-max) | infer img/s contiguous | infer img/s channels_last |")
    print("|---|---|---|---|---|")
    for name in models.NAMES:
        model = models.build(name)
        x = torch.randn(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,))
        cl = model.to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(train.parameter_groups(cl, 5e-4), lr=0.01, momentum=0.9)

        def step():
            loss = F.cross_entropy(cl(xcl), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        tr = timed(step, args.repeats)
        cl.eval()
        with torch.no_grad():
            inf_cl = timed(lambda: cl(xcl), args.repeats)
            plain = cl.to(memory_format=torch.contiguous_format)
            inf = timed(lambda: plain(x), args.repeats)
        rate = lambda t: args.batch / t
        row = {"model": name, "params": models.count_parameters(model),
               "train": rate(tr[0]), "train_range": [rate(tr[2]), rate(tr[1])],
               "infer_contiguous": rate(inf[0]), "infer_channels_last": rate(inf_cl[0])}
        rows.append(row)
        print(f"| {name} | {row['params']:,} | {row['train']:.0f} ({row['train_range'][0]:.0f}-"
              f"{row['train_range'][1]:.0f}) | {row['infer_contiguous']:.0f} | "
              f"{row['infer_channels_last']:.0f} |", flush=True)
    print(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(), "rows": rows}))


if __name__ == "__main__":
    main()
