"""Exact layer statistics over a whole calibration set, in bounded memory.

The p-th percentile is the nearest-rank order statistic: the k-th smallest of all N activation
values of the layer (every element of every batch, zeros included), k = ceil(p/100 * N); p = 100
is the maximum. It is found by a few passes over the data: one for min/max/N, then histograms that
narrow the interval holding the k-th value until it holds few values (gathered and sorted) or only
one distinct value. No per-batch estimate is averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from fractions import Fraction

import torch
from torch import fx

BINS = 2048
GATHER = 1 << 20  # values gathered and sorted per layer in the last pass


def batch_input(batch) -> torch.Tensor:
    """The input tensor of one calibration batch: the batch itself or its first element."""
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(
            "calibration batches must be float tensors (or (inputs, labels) pairs with "
            f"float inputs), got {type(x).__name__}"
            + (f" of dtype {x.dtype}" if torch.is_tensor(x) else "")
        )
    return x


class Recorder(fx.Interpreter):
    """Runs a GraphModule and hands the outputs of chosen nodes to ``sink(name, tensor)``."""

    def __init__(self, gm: fx.GraphModule, names: set[str], sink: Callable):
        super().__init__(gm)
        self.names, self.sink = names, sink

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names:
            self.sink(n.name, out.detach())
        return out


def _for_each_activation(gm, names, data, sink) -> None:
    recorder = Recorder(gm, set(names), sink)
    with torch.no_grad():
        for batch in data:
            recorder.run(batch_input(batch))


def layer_statistic(
    gm: fx.GraphModule, names: list[str], data: Iterable, percentile: float = 100.0
) -> dict[str, float]:
    """Per node name, the ``percentile`` (nearest rank) of its outputs over all of ``data``."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if torch.is_tensor(data):
        data = [data]
    lo = {n: math.inf for n in names}
    hi = {n: -math.inf for n in names}
    count = dict.fromkeys(names, 0)

    def extremes(name, t):
        lo[name] = min(lo[name], t.min().item())
        hi[name] = max(hi[name], t.max().item())
        count[name] += t.numel()

    _for_each_activation(gm, names, data, extremes)
    if any(c == 0 for c in count.values()):
        raise ValueError("calibration data is empty")
    if percentile == 100:
        return hi
    if iter(data) is data:
        raise ValueError(
            "percentile thresholds need several passes over the calibration data: "
            "pass a list, a tensor or a DataLoader, not a one-shot iterator"
        )
    rank = {n: max(1, math.ceil(Fraction(str(percentile)) / 100 * count[n])) for n in names}
    # search interval [lo, hi) in float64, values below it, values inside it
    state = {n: [lo[n], math.nextafter(hi[n], math.inf), 0, count[n]] for n in names}
    result: dict[str, float] = {}
    while len(result) < len(names):
        active = [n for n in names if n not in result]
        edges = {
            n: torch.linspace(state[n][0], state[n][1], BINS + 1, dtype=torch.float64)
            for n in active
        }
        for n in active:
            edges[n][0], edges[n][-1] = state[n][0], state[n][1]
        hist = {n: torch.zeros(BINS, dtype=torch.int64) for n in active}
        inside_lo = dict.fromkeys(active, math.inf)
        inside_hi = dict.fromkeys(active, -math.inf)
        gathered = {n: [] for n in active}

        def narrow(name, t):
            if name not in hist:
                return
            v = t.flatten().double()
            a, b = state[name][0], state[name][1]
            v = v[(v >= a) & (v < b)]
            if v.numel() == 0:
                return
            if state[name][3] <= GATHER:
                gathered[name].append(v)
                return
            inside_lo[name] = min(inside_lo[name], v.min().item())
            inside_hi[name] = max(inside_hi[name], v.max().item())
            idx = torch.bucketize(v, edges[name][1:-1], right=True)
            hist[name] += torch.bincount(idx, minlength=BINS)

        _for_each_activation(gm, names, data, narrow)
        for n in active:
            a, b, below, inside = state[n]
            if inside <= GATHER:
                values = torch.sort(torch.cat(gathered[n])).values
                result[n] = values[rank[n] - below - 1].item()
            elif inside_lo[n] == inside_hi[n]:
                result[n] = inside_lo[n]
            else:
                cum = below + torch.cumsum(hist[n], 0)
                j = int(torch.searchsorted(cum, torch.tensor(rank[n]), right=False))
                state[n] = [
                    edges[n][j].item(),
                    edges[n][j + 1].item(),
                    int(cum[j - 1]) if j > 0 else below,
                    int(hist[n][j]),
                ]
    return result
