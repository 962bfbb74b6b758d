"""Lookup-table convolution of spike maps (snnconv.kernels.lookup_conv) against PyTorch's dense
conv, per layer shape: 3x3 convs, padding 1, batch 256 (two time steps of 128), random spike maps
with the firing rates of --rates (default 0.2), channels_last, float32.

    python benchmarks/spikeconv_speed.py [--rates 0.02,0.1,0.3]

Per shape and rate: the dense conv (oneDNN), the lookup convolution as the simulator runs it
(lookup: the kernel picks dense or sparse lookups, lookup_conv.SPARSE_BELOW), and forced either
way: every group looked up (lookups: all) or only the non-zero ones (lookups: non-zero, per-pixel
lists; the zero pattern's rows add nothing). Median of 5 runs after a warm-up, the four
interleaved, each in each place of a round in turn; the last line is one JSON object.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

from snnconv.kernels import backend, lookup_conv

SHAPES = [
    (16, 16, 32),
    (32, 32, 16),
    (64, 64, 8),
    (64, 64, 32),
    (128, 128, 16),
    (256, 256, 8),
    (512, 512, 4),
    (512, 512, 2),
]


def lookup(conv, x, amp, sparse_below):
    """The lookup convolution with lookup_conv.SPARSE_BELOW set to ``sparse_below``."""
    kept = lookup_conv.SPARSE_BELOW
    lookup_conv.SPARSE_BELOW = sparse_below
    try:
        return lookup_conv.conv2d(conv, x, amp)
    finally:
        lookup_conv.SPARSE_BELOW = kept


def time_row(conv, x, amp) -> dict:
    forms = {
        "dense": lambda: conv(x),
        "lookup": lambda: lookup_conv.conv2d(conv, x, amp),
        "all": lambda: lookup(conv, x, amp, 0.0),
        "nonzero": lambda: lookup(conv, x, amp, 2.0),
    }
    times = {k: [] for k in forms}
    for fn in forms.values():
        fn()
    names = list(forms)
    for r in range(5):  # each form in each place of the round in turn (allocations interact)
        for k in names[r % 4 :] + names[: r % 4]:
            t = time.perf_counter()
            forms[k]()
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()} | {
        f"{k}_range": [1e3 * min(v), 1e3 * max(v)] for k, v in times.items()
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rates", default="0.2")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []
    print(f"{backend.isa_label()}, {torch.get_num_threads()} threads, batch 256", flush=True)
    with torch.no_grad():
        for c_in, c_out, size in SHAPES:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            amp = torch.ones(c_in)
            gb, nv, gr = lookup_conv.plan(c_in, c_out, 9)
            for rate in map(float, args.rates.split(",")):
                x = (torch.rand(256, c_in, size, size) < rate).float()
                x = x.contiguous(memory_format=torch.channels_last)
                want = conv(x)
                for form in (0.0, 2.0):
                    torch.testing.assert_close(lookup(conv, x, amp, form), want, rtol=0, atol=1e-4)
                row = {"c_in": c_in, "c_out": c_out, "size": size, "rate": rate}
                row |= {"plan": [gb, nv, gr], **time_row(conv, x, amp)}
                row["dense_over_lookup"] = row["dense"] / row["lookup"]
                rows.append(row)
                print(
                    f"{c_in:4d} -> {c_out:<4d} {size:2d}x{size:<2d} (GB {gb}, NV {nv}, GR {gr:2d}) "
                    f"rate {rate:<4}  dense {row['dense']:6.1f} ms  lookup {row['lookup']:6.1f} ms"
                    f"  dense/lookup {row['dense_over_lookup']:5.2f}  lookups: all "
                    f"{row['all']:6.1f} ms, non-zero {row['nonzero']:6.1f} ms",
                    flush=True,
                )
    print(
        json.dumps({"isa": backend.isa_label(), "threads": torch.get_num_threads(), "rows": rows})
    )


if __name__ == "__main__":
    main()
