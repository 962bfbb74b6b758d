"""Where the simulation time goes: torch.profiler over one dense forward x T and one snnconv
simulation of T steps, grouped by operator.

    python benchmarks/sim_profile.py [--model resnet20] [--T 32] [--batch 128] [--channels-last]
                                     [--device cpu|cuda]

On the CPU the table ranks operators by self CPU time. On CUDA it ranks them by GPU (kernel)
time and also prints the wall time of each profiled region and the fraction of it the GPU spent
in kernels ("GPU busy"): launch gaps and host syncs show up as busy < 100 %.
"""

import argparse
import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

import snnconv
from snnconv.kernels import backend
from snnconv.zoo import models, shipped


def self_time(e, cuda: bool) -> float:
    """Self time of a profiler row in microseconds: on the GPU for CUDA runs, else on the CPU."""
    if not cuda:
        return e.self_cpu_time_total
    return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)


def top(prof, wall: float, cuda: bool, n=8):
    rows = sorted(prof.key_averages(), key=lambda e: self_time(e, cuda), reverse=True)
    total = sum(self_time(e, cuda) for e in rows)
    where = "GPU kernels" if cuda else "CPU"
    out = [
        f"  total {where} {total / 1e6:.3f} s, wall {wall:.3f} s"
        + (f", GPU busy {100 * total / 1e6 / wall:.0f} %" if cuda else "")
    ]
    for e in rows[:n]:
        out.append(
            f"  {e.key[:60]:<60}{self_time(e, cuda) / 1e6:8.3f} s "
            f"{100 * self_time(e, cuda) / max(total, 1):5.1f}%  x{e.count}"
        )
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="resnet20")
    p.add_argument("--T", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = (
        shipped.load_pretrained("resnet20-cifar10")
        if args.model == "resnet20" and "resnet20-cifar10" in shipped.names()
        else models.build(args.model).eval()
    )
    snn = snnconv.convert(model).to(device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    ann = copy.deepcopy(snn.ann)
    if args.channels_last:
        snn = snn.to(memory_format=torch.channels_last)
        ann = ann.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda

    def profiled(fn):
        fn()  # warm-up (and the fused kernel's build)
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t
        return prof, wall

    with torch.no_grad():
        dense = profiled(lambda: [ann(x) for _ in range(args.T)])
        spiking = profiled(lambda: snn(x, args.T))
    print(
        f"{args.model}, batch {args.batch}, T={args.T}, "
        f"{torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}, "
        f"{backend.isa_label()}, "
        f"{'channels_last' if args.channels_last else 'contiguous'}"
    )
    print(f"dense ANN forward x {args.T}:\n{top(*dense, cuda=cuda)}")
    print(f"snnconv simulation of {args.T} steps:\n{top(*spiking, cuda=cuda)}")


if __name__ == "__main__":
    main()
