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

from snnconv.exceptions import ConversionError

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
    """Run ``gm`` on every calibration batch, handing the named nodes' outputs to ``sink``; a
    batch the model cannot take (dtype, shape, NaN) is a ConversionError naming it."""
    recorder = Recorder(gm, set(names), sink)
    params = next(gm.parameters(), None)
    dtype = params.dtype if params is not None else torch.float32
    with torch.no_grad():
        for i, batch in enumerate(data):
            x = batch_input(batch)
            where = f"calibration batch {i} (shape {tuple(x.shape)}, dtype {x.dtype})"
            if x.dtype != dtype:
                raise ConversionError(f"{where}: the model's parameters are {dtype}")
            if x.dim() < 2 or x.shape[0] == 0:
                raise ConversionError(f"{where}: expected [batch, ...] with a batch dimension")
            if not torch.isfinite(x).all():
                raise ConversionError(f"{where} contains NaN or infinite values")
            try:
                recorder.run(x)
            except Exception as err:
                msg = str(err).split("\n")[0]
                raise ConversionError(f"{where}: the model fails on it: {msg}") from err


def _extremes(gm, names, data) -> tuple[dict, dict, dict]:
    """(min, max, number of values) of each named node's outputs over ``data``."""
    lo = {n: math.inf for n in names}
    hi = {n: -math.inf for n in names}
    count = dict.fromkeys(names, 0)

    def sink(name, t):
        lo[name] = min(lo[name], t.min().item())
        hi[name] = max(hi[name], t.max().item())
        count[name] += t.numel()

    _for_each_activation(gm, names, data, sink)
    if any(c == 0 for c in count.values()):
        raise ValueError("calibration data is empty")
    return lo, hi, count


class _Search:
    """One layer's search for its k-th smallest value: the interval [a, b) that holds it, the
    number of values below a and inside [a, b); a histogram of the values inside (or the values
    themselves, once at most GATHER are inside) is made by one pass over the data."""

    def __init__(self, a: float, b: float, below: int, inside: int):
        self.a, self.b, self.below, self.inside = a, b, below, inside
        self.edges = torch.linspace(a, b, BINS + 1, dtype=torch.float64)
        self.edges[0], self.edges[-1] = a, b
        self.hist = torch.zeros(BINS, dtype=torch.int64)
        self.lo, self.hi, self.gathered = math.inf, -math.inf, []

    def add(self, t: torch.Tensor) -> None:
        v = t.flatten().double()
        v = v[(v >= self.a) & (v < self.b)]
        if v.numel() == 0:
            return
        if self.inside <= GATHER:
            self.gathered.append(v)
            return
        self.lo, self.hi = min(self.lo, v.min().item()), max(self.hi, v.max().item())
        idx = torch.bucketize(v, self.edges[1:-1], right=True)
        self.hist += torch.bincount(idx, minlength=BINS)

    def result(self, rank: int) -> float | _Search:
        """The k-th value if this pass found it, else the narrower search for the next pass."""
        if self.inside <= GATHER:
            return torch.sort(torch.cat(self.gathered)).values[rank - self.below - 1].item()
        if self.lo == self.hi:
            return self.lo
        cum = self.below + torch.cumsum(self.hist, 0)
        j = int(torch.searchsorted(cum, torch.tensor(rank), right=False))
        below = int(cum[j - 1]) if j > 0 else self.below
        return _Search(self.edges[j].item(), self.edges[j + 1].item(), below, int(self.hist[j]))


def layer_statistic(
    gm: fx.GraphModule, names: list[str], data: Iterable, percentile: float = 100.0
) -> dict[str, float]:
    """Per node name, the ``percentile`` (nearest rank) of its outputs over all of ``data``."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if torch.is_tensor(data):
        data = [data]
    lo, hi, count = _extremes(gm, names, data)
    if percentile == 100:
        return hi
    if iter(data) is data:
        raise ValueError(
            "percentile thresholds need several passes over the calibration data: "
            "pass a list, a tensor or a DataLoader, not a one-shot iterator"
        )
    rank = {n: max(1, math.ceil(Fraction(str(percentile)) / 100 * count[n])) for n in names}
    search = {n: _Search(lo[n], math.nextafter(hi[n], math.inf), 0, count[n]) for n in names}
    result: dict[str, float] = {}
    while search:
        _for_each_activation(
            gm, list(search), data, lambda n, t: search[n].add(t) if n in search else None
        )
        for n, s in list(search.items()):
            found = s.result(rank[n])
            if isinstance(found, _Search):
                search[n] = found
            else:
                result[n] = found
                del search[n]
    return {n: result[n] for n in names}
