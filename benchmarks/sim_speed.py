"""Simulator speed against the dense ANN and a naive per-step loop, and simulation memory.

    python benchmarks/sim_speed.py [--models resnet20,vgg16-paper] [--T 16,32] [--batch 128]
                                   [--repeats 5] [--device cpu|cuda] [--memory-T 32,256]
                                   [--memory-models resnet20]

For each model (CIFAR-10-shaped input, trained weights for resnet20 when shipped, else random):
  a  ANN forward in its fastest honest form: BN folded into the convs (snn.ann), the faster of
     contiguous and channels_last;
  b  snnconv's simulation of T steps (snn(x, T)), the faster of contiguous and channels_last;
  c  the naive loop: the whole converted network once per step (snn.stepwise, the test oracle),
     in the same memory format as b.
Median of --repeats timed runs after one warm-up, a/b/c interleaved round-robin in one process;
spread = min-max. ratio_dense = b / (T a), speedup_naive = c / b. Peak memory of a whole
simulation is measured in a fresh process per T (peak RSS, or peak CUDA memory on --device cuda).
On --device cuda each simulation also runs once under torch.cuda.set_sync_debug_mode("warn"), and
host_syncs counts the synchronising CUDA calls it made (a count that grows with T would mean a
sync per step).
The last line of output is one JSON object with every figure.
"""

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch

import snnconv
from snnconv.kernels import backend
from snnconv.zoo import models, shipped


def load(name: str) -> torch.nn.Module:
    if name == "resnet20" and "resnet20-cifar10" in shipped.names():
        return shipped.load_pretrained("resnet20-cifar10")
    torch.manual_seed(0)
    return models.build(name).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_round_robin(fns: dict, repeats: int, device) -> dict:
    for fn in fns.values():  # warm-up
        fn()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()
    }


def host_syncs(fn) -> int:
    """Synchronising CUDA calls (a copy to the host, .item(), a data-dependent shape) made by fn."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def dense_forward(ann, x):
    """The faster of contiguous and channels_last for the folded ANN, as a closure."""
    cl = x.contiguous(memory_format=torch.channels_last)
    ann_cl = copy.deepcopy(ann).to(memory_format=torch.channels_last)
    forms = {"contiguous": lambda: ann(x), "channels_last": lambda: ann_cl(cl)}
    best = timed_round_robin(forms, 3, x.device)
    name = min(best, key=lambda k: best[k]["median"])
    return name, forms[name]


def snn_forms(snn, x, steps):
    """The faster of contiguous and channels_last for the SNN (one short run of each), as
    (name, snn, x): the same choice the dense baseline gets."""
    forms = {
        "contiguous": (snn, x),
        "channels_last": (
            copy.deepcopy(snn).to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        ),
    }
    best = timed_round_robin(
        {k: (lambda m=m, i=i: m(i, steps)) for k, (m, i) in forms.items()}, 1, x.device
    )
    name = min(best, key=lambda k: best[k]["median"])
    return (name, *forms[name])


def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(name: str, steps: int, batch: int, device: str) -> None:
    """Child process: one simulation, then print its peak memory in MiB. On the CPU the kernel's
    peak-RSS mark is reset just before (writing 5 to /proc/self/clear_refs), so loading and
    converting the model do not hide the simulation's own peak; peak_mib is VmHWM after it,
    added_mib the part above the resident set before it."""
    dev = torch.device(device)
    snn = snnconv.convert(load(name)).to(dev)
    x = torch.randn(batch, 3, 32, 32, device=dev)
    with torch.no_grad():
        snn(x, 1)  # kernels built, tables made, allocator warm: what every later call has too
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_mib("VmRSS")
    with torch.no_grad():
        snn(x, steps)
    sync(dev)
    if dev.type == "cuda":
        print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2**20}))
    else:
        peak = _status_mib("VmHWM")
        print(json.dumps({"peak_mib": peak, "before_mib": base, "added_mib": peak - base}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="resnet20,vgg16-paper")
    p.add_argument("--T", default="16,32")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-T", dest="memory_T", default="32,256")
    p.add_argument(
        "--memory-models",
        dest="memory_models",
        default="resnet20",
        help="models whose peak memory is probed (a T=256 probe of vgg16-paper takes minutes)",
    )
    p.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return memory_probe(args.probe[0], int(args.probe[1]), args.batch, args.device)
    device = torch.device(args.device)
    name_dev = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    print(
        f"device: {name_dev or platform.machine()}, {os.cpu_count()} cores, "
        f"{backend.isa_label()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch}"
    )
    report = {
        "device": args.device,
        "device_name": name_dev,
        "isa": backend.isa_label(),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "repeats": args.repeats,
        "results": [],
    }
    for name in args.models.split(","):
        snn = snnconv.convert(load(name)).to(device)
        x = torch.randn(args.batch, 3, 32, 32, device=device)
        with torch.no_grad():
            form, dense = dense_forward(snn.ann, x)
            snn_form, snn_f, x_f = snn_forms(snn, x, 4)
            for steps in [int(t) for t in args.T.split(",")]:
                t = timed_round_robin(
                    {
                        "a_dense": dense,
                        "b_snnconv": lambda: snn_f(x_f, steps),
                        "c_naive": lambda: snn_f.stepwise(x_f, steps),
                    },
                    args.repeats,
                    device,
                )
                a, b, c = (t[k]["median"] for k in ("a_dense", "b_snnconv", "c_naive"))
                row = {
                    "model": name,
                    "T": steps,
                    "dense_form": form,
                    "snn_form": snn_form,
                    "times_s": t,
                    "ratio_dense": b / (steps * a),
                    "speedup_naive": c / b,
                }
                if device.type == "cuda":
                    row["host_syncs"] = host_syncs(lambda: snn_f(x_f, steps))
                report["results"].append(row)
                print(
                    f"{name:<12} T={steps:<3} dense {1e3 * a:7.1f} ms ({form})  snnconv "
                    f"{b:7.3f} s ({snn_form}) [{t['b_snnconv']['min']:.3f}-{t['b_snnconv']['max']:.3f}]  "
                    f"naive {c:7.3f} s  ratio_dense {row['ratio_dense']:.2f}  "
                    f"speedup_naive {row['speedup_naive']:.2f}"
                    + (f"  host_syncs {row['host_syncs']}" if "host_syncs" in row else ""),
                    flush=True,
                )
        for steps in [int(t) for t in args.memory_T.split(",")] * (
            name in args.memory_models.split(",")
        ):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--probe",
                    name,
                    str(steps),
                    "--batch",
                    str(args.batch),
                    "--device",
                    args.device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            report["results"].append({"model": name, "memory_T": steps, **mem})
            extra = (
                f" ({mem['added_mib']:.0f} MiB above the {mem['before_mib']:.0f} MiB before it)"
                if "added_mib" in mem
                else ""
            )
            print(
                f"{name:<12} T={steps:<3} peak memory {mem['peak_mib']:.0f} MiB{extra}", flush=True
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
