"""Peak memory of one long simulation against the readout's own size and the chunk budget.

    python benchmarks/memory_bounds.py [--T 20000] [--batch 250] [--classes 100]
                                       [--chunk-mib 1024]

A 100-class MLP (3072-512-256-classes, ThresholdReLU) converted with shift "membrane", simulated
once for T steps at the given batch in a fresh process. The peak resident memory of the call is
measured by resetting the kernel's high-water mark (/proc/self/clear_refs, "5") before it and
reading VmHWM after it; the baseline is the resident memory just before the call. Printed: the
readout's size (T x batch x classes x 4 bytes), the chunk budget, the peak growth, and the bound
the issue sets, 1.5 x readout + chunk budget. Linux only.
"""

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, torch
from torch import nn
import snnconv
T, batch, classes, chunk = map(int, sys.argv[1:5])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3072, 512), snnconv.ThresholdReLU(1.0), nn.Linear(512, 256),
                      snnconv.ThresholdReLU(1.0), nn.Linear(256, classes)).eval()
snn = snnconv.convert(model, shift="membrane")
x = torch.randn(batch, 3072)
snn(x, 8, max_chunk_bytes=chunk)  # warm-up: kernels loaded, allocator primed
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
out = snn(x, T, max_chunk_bytes=chunk)
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak, "readout_bytes": out.numel() * 4}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--chunk-mib", type=int, default=1024)
    a = ap.parse_args()
    chunk = a.chunk_mib << 20
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(a.T), str(a.batch), str(a.classes), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(r.stdout.strip().splitlines()[-1])
    growth, readout = m["peak"] - m["base"], m["readout_bytes"]
    bound = 1.5 * readout + chunk
    mib = lambda b: f"{b / 2**20:,.0f} MiB"
    print(
        f"T={a.T} batch={a.batch} classes={a.classes}: readout {mib(readout)}, chunk budget "
        f"{mib(chunk)}; peak growth during the call {mib(growth)} "
        f"({growth / readout:.2f} x readout); bound 1.5 x readout + budget = {mib(bound)}: "
        f"{'within' if growth <= bound else 'ABOVE'}"
    )
    print(json.dumps({**m, "growth": growth, "bound": bound, "T": a.T, "batch": a.batch}))


if __name__ == "__main__":
    main()
