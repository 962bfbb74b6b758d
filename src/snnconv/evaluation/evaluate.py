"""Accuracy vs T, layer-wise conversion error, firing rates and cost of a SpikingNetwork on data.

With shift "membrane" or "none" one run of max(T) steps gives every T (spike counts are read at
each T on the way, and summed at once: nothing is kept per T but the running sums); with "bias"
the shift V_th/(2T) depends on T, so each T is its own run. The result is a
``snnconv.evaluation.results.Results``; tables and files are made from it by
``snnconv.evaluation.report``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from snnconv.conversion.convert import READOUT_LAYER, SpikingNetwork
from snnconv.conversion.thresholds import Recorder
from snnconv.evaluation.results import (
    Cost,
    CostAtT,
    Environment,
    ErrorParts,
    LayerCost,
    LayerResult,
    Results,
)
from snnconv.exceptions import DataError, OptionError
from snnconv.measures import cost, error_split
from snnconv.options import E_AC_PJ, E_MAC_PJ, check_energy, check_steps
from snnconv.progress import Progress


def ann_pass(snn: SpikingNetwork, names: list[str], x: torch.Tensor):
    """(ANN output, {layer name: activation}) for one batch."""
    acts = {}
    out = Recorder(snn.ann, set(names), lambda n, t: acts.__setitem__(n, t)).run(x)
    return out, acts


def sum_over_batch(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(0)``, read in memory order: a dense tensor in any layout (channels_last spike
    counts) is summed as [N, rest] and the result viewed back (PyTorch's own sum(0) over a
    channels_last tensor is ~20x slower: 15 ms vs 0.7 ms for 250 x 16 x 32 x 32 here)."""
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))
    flat = x.permute(order)
    if x.dim() < 2 or order[0] != 0 or not flat.is_contiguous():
        return x.sum(0)
    total = flat.reshape(x.shape[0], -1).sum(0).view(flat.shape[1:])
    return total.permute([order.index(d) - 1 for d in range(1, x.dim())])


class _Totals:
    """Running sums over batches for one T: correct answers, error sums, spike totals."""

    def __init__(self):
        self.correct, self.err, self.spikes, self.per_position, self.n = 0, {}, {}, {}, {}

    def add_counts(self, counts, events, acts, thresholds, steps, shift) -> None:
        """Add one batch's spike events (for rates and operations) and net spike counts (their
        error against the ANN's activations); the two differ only for signed neurons."""
        for name, c in counts.items():
            # per position over the batch (exact: counts are small integers), then the total
            # from it in float64: one pass over the events instead of two
            per_position = sum_over_batch(events[name]).double()
            self.spikes[name] = self.spikes.get(name, 0) + per_position.sum().item()
            self.per_position[name] = self.per_position.get(name, 0) + per_position
            self.n[name] = self.n.get(name, 0) + c.numel()
            if name in acts:
                sums = error_split.error_sums(
                    acts[name], c, thresholds[name](acts[name]), steps, shift
                )
                self.err[name] = self.err.get(name, 0) + sums

    def add_answers(self, out_t: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += (out_t.argmax(-1) == labels).sum().item()


class _Run:
    """Everything summed over the batches of one evaluation."""

    def __init__(self, snn: SpikingNetwork, steps: list[int], layer_errors: bool):
        self.snn, self.steps, self.layer_errors = snn, steps, layer_errors
        self.names = [n for n in snn.layers if n != READOUT_LAYER]
        self.thresholds = {n: snn.layers[n].threshold_like for n in self.names}
        self.one_run = snn.shift in ("membrane", "none")
        self.totals = {t: _Totals() for t in steps}
        self.ann_correct, self.n_images, self.act_max, self.act_sum = 0, 0, {}, {}
        self.fan, self.device = None, torch.device("cpu")

    def counts(self) -> dict[str, torch.Tensor]:
        return {n: self.snn.layers[n].spike_count for n in self.names}

    def events(self) -> dict[str, torch.Tensor]:
        return {n: self.snn.layers[n].spike_events for n in self.names}

    def add(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        snn, steps, totals = self.snn, self.steps, self.totals
        with torch.no_grad():
            ann_out, acts = ann_pass(snn, self.names, x) if self.layer_errors else (snn.ann(x), {})
        if self.fan is None:
            self.fan, self.device = cost.fan_out(snn.ann, self.names, x[:1]), x.device
        self.ann_correct += (ann_out.argmax(-1) == labels).sum().item()
        self.n_images += len(labels)
        for n, a in acts.items():
            self.act_max[n] = max(self.act_max.get(n, float("-inf")), a.max().item())
            self.act_sum[n] = self.act_sum.get(n, 0.0) + a.double().sum().item()
        add = lambda t: totals[t].add_counts(
            self.counts(), self.events(), acts, self.thresholds, t, snn.shift
        )
        if self.one_run:
            out = snn(x, steps[-1], marks=steps, on_mark=add)
            for t in steps:
                totals[t].add_answers(out[t - 1], labels)
        else:
            for t in steps:
                out = snn(x, t)
                add(t)
                totals[t].add_answers(out[-1], labels)

    def layer_results(self) -> list[LayerResult]:
        rows = []
        for n in self.names:
            total, elems = self.totals, self.totals[self.steps[0]].n[n]
            rate = {t: total[t].spikes[n] / (elems * t) for t in self.steps}
            extra = {}
            if self.layer_errors:
                extra = dict(
                    max_activation=self.act_max[n],
                    mean_activation=self.act_sum[n] / elems,
                    error={
                        t: ErrorParts(**error_split.split(total[t].err[n], elems))
                        for t in self.steps
                    },
                )
            rows.append(LayerResult(n, self.snn.layers[n].v_th.tolist(), rate, **extra))
        return rows

    def cost(self, e_mac: float, e_ac: float) -> Cost:
        macs = {n: f.sum().item() for n, f in self.fan.items()}
        sops = {cost.INPUT: dict.fromkeys(self.steps, 0.0)}
        for n in self.names:
            per_position = {t: self.totals[t].per_position[n] for t in self.steps}
            sops[n] = {
                t: (p * self.fan[n]).sum().item() / self.n_images for t, p in per_position.items()
            }
        layers = [
            LayerCost(
                name=n,
                ann_macs=macs[n],
                snn_macs=macs[n] if n == cost.INPUT else 0.0,
                sops=s,
                energy_snn_pj={
                    t: cost.energy_pj(macs[n] if n == cost.INPUT else 0.0, v, e_mac, e_ac)
                    for t, v in s.items()
                },
                energy_ann_pj=cost.energy_pj(macs[n], 0, e_mac, e_ac),
            )
            for n, s in sops.items()
        ]
        first, total = macs[cost.INPUT], sum(macs.values())
        e_ann = cost.energy_pj(total, 0, e_mac, e_ac)
        per_t = {}
        for t in self.steps:
            all_sops = sum(r.sops[t] for r in layers)
            e_snn = cost.energy_pj(first, all_sops, e_mac, e_ac)
            ratio = e_snn / e_ann if e_ann else None
            per_t[t] = CostAtT(all_sops, first, e_snn, e_ann, ratio)
        return Cost(e_mac, e_ac, total, first, per_t, layers)


def _largest_growth(layers: list[LayerResult], steps: list[int]) -> dict[int, str]:
    """Per T, the layer whose total error rises most over the layer before it."""
    growth = {}
    for t in steps:
        totals = [r.error[t].total for r in layers if t in r.error]
        if totals and len(totals) == len(layers):
            rises = [b - a for a, b in zip([0.0] + totals[:-1], totals)]
            growth[t] = layers[max(range(len(rises)), key=rises.__getitem__)].name
    return growth


def evaluate(
    snn: SpikingNetwork,
    batches: Iterable,
    steps: Iterable[int],
    n_batches: int | None = None,
    e_mac: float = E_MAC_PJ,
    e_ac: float = E_AC_PJ,
    progress: bool = True,
    layer_errors: bool = True,
) -> Results:
    """Run ``snn`` on (inputs, labels) ``batches`` for every T in ``steps``; return the Results
    (accuracies as fractions; costs per image). Per IF layer: firing rate and, unless
    ``layer_errors=False`` (which skips recording the ANN's activations), activations and the
    error split per T; cost: totals per T and MACs, SOPs and energy per source layer (the input,
    then each IF layer)."""
    steps = sorted({check_steps(t) for t in steps})
    if not steps:
        raise OptionError("T: give at least one number of time steps")
    e_mac, e_ac = check_energy("e_mac", e_mac), check_energy("e_ac", e_ac)
    run = _Run(snn, steps, layer_errors)
    bar = Progress(n_batches or 0, "evaluate", enabled=progress and n_batches is not None)
    start = time.perf_counter()
    for x, labels in batches:
        run.add(x, labels)
        bar.update(1, acc=f"{100 * run.totals[steps[-1]].correct / run.n_images:.1f}%")
    if run.n_images == 0:
        raise DataError("no images to evaluate: the batches were empty")
    layers = run.layer_results()
    return Results(
        n_images=run.n_images,
        ann_accuracy=run.ann_correct / run.n_images,
        shift=snn.shift,
        threshold=snn.threshold,
        readout=snn.readout,
        snn_accuracy={t: run.totals[t].correct / run.n_images for t in steps},
        seconds=time.perf_counter() - start,
        one_run=run.one_run,
        layers=layers,
        largest_error_growth=_largest_growth(layers, steps),
        cost=run.cost(e_mac, e_ac),
        environment=Environment.current(run.device),
        calibration=snn.calibration,
        neuron=snn.neuron,
    )
