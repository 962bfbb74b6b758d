"""Where the simulation time goes: torch.profiler over one dense forward x T and one snnconv
simulation of T steps, grouped by operator.

    python benchmarks/sim_profile.py [--model resnet20] [--T 32] [--batch 128] [--channels-last]
"""
import argparse
import copy

import torch
from torch.profiler import ProfilerActivity, profile

import snnconv
from snnconv import checkpoint, models


def top(prof, n=8):
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    out = [f"  total {total / 1e6:.3f} s"]
    for e in rows[:n]:
        out.append(f"  {e.key:<36}{e.self_cpu_time_total / 1e6:8.3f} s "
                   f"{100 * e.self_cpu_time_total / total:5.1f}%  x{e.count}")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    model = (models.load_pretrained("resnet20-cifar10")
             if args.model == "resnet20" and "resnet20-cifar10" in checkpoint.pretrained_names()
             else models.build(args.model).eval())
    snn = snnconv.convert(model)
    x = torch.randn(args.batch, 3, 32, 32)
    ann = copy.deepcopy(snn.ann)
    if args.channels_last:
        snn = snn.to(memory_format=torch.channels_last)
        ann = ann.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ann(x), snn(x, 2)  # warm-up (and the fused kernel's build)
        with profile(activities=[ProfilerActivity.CPU]) as dense:
            for _ in range(args.T):
                ann(x)
        with profile(activities=[ProfilerActivity.CPU]) as spiking:
            snn(x, args.T)
    print(f"{args.model}, batch {args.batch}, T={args.T}, {torch.get_num_threads()} threads, "
          f"{'channels_last' if args.channels_last else 'contiguous'}")
    print(f"dense ANN forward x {args.T}:\n{top(dense)}")
    print(f"snnconv simulation of {args.T} steps:\n{top(spiking)}")


if __name__ == "__main__":
    main()
