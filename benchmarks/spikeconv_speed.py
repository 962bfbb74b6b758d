"""Lookup-table convolution of spike maps (snnconv.kernels.lookup_conv) against PyTorch's dense
conv, per layer shape: 3x3 convs, padding 1, batch 256 (two time steps of 128), random spike maps
with firing rate 0.2 (the number of lookups does not depend on the rate; their cost a little,
through cache hits: 64->64 channels at 8x8, 64 maps, 4.7 us per map at rate 0, 6.6 at 0.15, 7.6
at 0.3), channels_last, float32.
Median of 5 runs after a warm-up, the two interleaved.

    python benchmarks/spikeconv_speed.py
"""

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


def main():
    torch.manual_seed(0)
    rows = []
    print(f"{backend.isa_label()}, {torch.get_num_threads()} threads", flush=True)
    with torch.no_grad():
        for c_in, c_out, size in SHAPES:
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            amp = torch.ones(c_in)
            x = (torch.rand(256, c_in, size, size) < 0.2).float()
            x = x.contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(lookup_conv.conv2d(conv, x, amp), conv(x), rtol=0, atol=1e-4)
            dense, lookup = [], []
            for _ in range(5):
                t = time.perf_counter()
                conv(x)
                dense.append(time.perf_counter() - t)
                t = time.perf_counter()
                lookup_conv.conv2d(conv, x, amp)
                lookup.append(time.perf_counter() - t)
            d, s = statistics.median(dense), statistics.median(lookup)
            gb, nv, gr = lookup_conv.plan(c_in, c_out, 9)
            rows.append(
                {
                    "c_in": c_in,
                    "c_out": c_out,
                    "size": size,
                    "plan": [gb, nv, gr],
                    "dense_ms": 1e3 * d,
                    "lookup_ms": 1e3 * s,
                    "dense_over_lookup": d / s,
                    "dense_range_ms": [1e3 * min(dense), 1e3 * max(dense)],
                    "lookup_range_ms": [1e3 * min(lookup), 1e3 * max(lookup)],
                }
            )
            print(
                f"{c_in:4d} -> {c_out:<4d} {size:2d}x{size:<2d} (GB {gb}, NV {nv}, GR {gr})  dense "
                f"{1e3 * d:7.1f} ms  lookup {1e3 * s:7.1f} ms  dense/lookup {d / s:.2f}",
                flush=True,
            )
    print(
        json.dumps(
            {
                "isa": backend.isa_label(),
                "threads": torch.get_num_threads(),
                "batch": 256,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
