"""Accuracy vs T, layer-wise conversion error, firing rates and cost of a SpikingNetwork on data.

With shift "membrane" or "none" one run of max(T) steps gives every T (spike counts are read at
each T on the way); with "bias" the shift V_th/(2T) depends on T, so each T is its own run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch

from snnconv.conversion.convert import READOUT_LAYER, SpikingNetwork
from snnconv.conversion.thresholds import Recorder
from snnconv.measures import cost, error_split
from snnconv.progress import Progress


def ann_pass(snn: SpikingNetwork, names: list[str], x: torch.Tensor):
    """(ANN output, {layer name: activation}) for one batch."""
    acts = {}
    out = Recorder(snn.ann, set(names), lambda n, t: acts.__setitem__(n, t)).run(x)
    return out, acts


class _Totals:
    """Running sums over batches for one T: correct answers, error sums, spike totals."""

    def __init__(self):
        self.correct, self.err, self.spikes, self.per_position, self.n = 0, {}, {}, {}, {}

    def add(self, out_t, labels, acts, counts, thresholds, steps, shift):
        self.correct += (out_t.argmax(-1) == labels).sum().item()
        for name, c in counts.items():
            self.spikes[name] = self.spikes.get(name, 0) + c.sum().item()
            self.per_position[name] = self.per_position.get(name, 0) + c.sum(0).double()
            self.n[name] = self.n.get(name, 0) + c.numel()
            if name in acts:
                sums = error_split.error_sums(
                    acts[name], c, thresholds[name](acts[name]), steps, shift
                )
                self.err[name] = self.err.get(name, 0) + sums


def evaluate(
    snn: SpikingNetwork,
    batches: Iterable,
    steps: list[int],
    n_batches: int | None = None,
    e_mac: float = cost.E_MAC_PJ,
    e_ac: float = cost.E_AC_PJ,
    progress: bool = True,
    layer_errors: bool = True,
) -> dict:
    """Run ``snn`` on (inputs, labels) ``batches`` for every T in ``steps``; return the results
    dict (accuracies as fractions; costs per image). ``layers``: per IF layer, activations,
    firing rate and error split per T; ``cost``: totals per T and, under ``cost.layers``, MACs,
    SOPs and energy per source layer (the input, then each IF layer). ``layer_errors=False``
    skips recording the ANN's activations: layer rows then hold V_th and firing rates only."""
    steps = sorted(set(steps))
    if not steps or steps[0] < 1:
        raise ValueError(f"T values must be integers >= 1, got {steps}")
    names = [n for n in snn.layers if n != READOUT_LAYER]
    layers = snn.layers
    thresholds = {n: layers[n].threshold_like for n in names}
    one_run = snn.shift in ("membrane", "none")
    totals = {t: _Totals() for t in steps}
    ann_correct, n_images, act_max, act_sum, fan = 0, 0, {}, {}, None
    bar = Progress(n_batches or 0, "evaluate", enabled=progress and n_batches is not None)
    start = time.perf_counter()
    for x, labels in batches:
        with torch.no_grad():
            ann_out, acts = ann_pass(snn, names, x) if layer_errors else (snn.ann(x), {})
        if fan is None:
            fan = cost.fan_out(snn.ann, names, x[:1])
        ann_correct += (ann_out.argmax(-1) == labels).sum().item()
        n_images += len(labels)
        for n, a in acts.items():
            act_max[n] = max(act_max.get(n, float("-inf")), a.max().item())
            act_sum[n] = act_sum.get(n, 0.0) + a.double().sum().item()
        if one_run:
            snapshots = {}
            out = snn(
                x,
                steps[-1],
                marks=steps,
                on_mark=lambda t: snapshots.__setitem__(
                    t, {n: layers[n].spike_count.clone() for n in names}
                ),
            )
            for t in steps:
                totals[t].add(out[t - 1], labels, acts, snapshots[t], thresholds, t, snn.shift)
        else:
            for t in steps:
                out = snn(x, t)
                totals[t].add(
                    out[-1],
                    labels,
                    acts,
                    {n: layers[n].spike_count for n in names},
                    thresholds,
                    t,
                    snn.shift,
                )
        bar.update(1, acc=f"{100 * totals[steps[-1]].correct / n_images:.1f}%")
    if n_images == 0:
        raise ValueError("no images to evaluate")
    ann_macs = {n: f.sum().item() for n, f in fan.items()}
    n_elem = totals[steps[0]].n
    layer_rows = [
        {
            "name": n,
            "v_th": layers[n].v_th.tolist(),
            "firing_rate": {str(t): totals[t].spikes[n] / (n_elem[n] * t) for t in steps},
        }
        for n in names
    ]
    for row in layer_rows if layer_errors else ():
        n = row["name"]
        row.update(
            {
                "max_activation": act_max[n],
                "mean_activation": act_sum[n] / n_elem[n],
                "error": {str(t): error_split.split(totals[t].err[n], n_elem[n]) for t in steps},
            }
        )
    cost_rows = [
        {
            "name": cost.INPUT,
            "ann_macs": ann_macs[cost.INPUT],
            "snn_macs": ann_macs[cost.INPUT],
            "sops": {str(t): 0.0 for t in steps},
        }
    ]
    for n in names:
        cost_rows.append(
            {
                "name": n,
                "ann_macs": ann_macs[n],
                "snn_macs": 0.0,
                "sops": {
                    str(t): (totals[t].per_position[n] * fan[n]).sum().item() / n_images
                    for t in steps
                },
            }
        )
    for row in cost_rows:
        row["energy_snn_pj"] = {
            t: cost.energy_pj(row["snn_macs"], s, e_mac, e_ac) for t, s in row["sops"].items()
        }
        row["energy_ann_pj"] = cost.energy_pj(row["ann_macs"], 0, e_mac, e_ac)
    growth = {}
    for t in steps if layer_errors else ():
        totals_t = [r["error"][str(t)]["total"] for r in layer_rows]
        if totals_t:
            rises = [b - a for a, b in zip([0.0] + totals_t[:-1], totals_t)]
            growth[str(t)] = layer_rows[max(range(len(rises)), key=rises.__getitem__)]["name"]
    first_macs, total_macs = ann_macs[cost.INPUT], sum(ann_macs.values())
    per_t = {}
    for t in steps:
        sops = sum(r["sops"][str(t)] for r in cost_rows)
        e_snn = cost.energy_pj(first_macs, sops, e_mac, e_ac)
        e_ann = cost.energy_pj(total_macs, 0, e_mac, e_ac)
        per_t[str(t)] = {
            "sops": sops,
            "first_layer_macs": first_macs,
            "energy_snn_pj": e_snn,
            "energy_ann_pj": e_ann,
            "energy_ratio": e_snn / e_ann,
        }
    return {
        "n_images": n_images,
        "ann_accuracy": ann_correct / n_images,
        "shift": snn.shift,
        "threshold": snn.threshold,
        "readout": snn.readout,
        "snn_accuracy": {str(t): totals[t].correct / n_images for t in steps},
        "seconds": time.perf_counter() - start,
        "one_run": one_run,
        "layers": layer_rows,
        "largest_error_growth": growth,
        "cost": {
            "e_mac_pj": e_mac,
            "e_ac_pj": e_ac,
            "ann_macs": total_macs,
            "first_layer_macs": first_macs,
            "per_T": per_t,
            "layers": cost_rows,
        },
    }


def steps_note(shift: str, steps: list[int]) -> str:
    if shift == "bias":
        return (
            f"shift=bias: the shift V_th/(2T) depends on T, so each T is its own run "
            f"({sum(steps)} steps in all)"
        )
    return f"shift={shift}: one run of {max(steps)} steps gives every T"


def table(results: dict) -> str:
    """Accuracy and cost per T as aligned text."""
    ann = results["ann_accuracy"]
    lines = [
        f"{'T':>6}  {'SNN acc':>8}  {'gap':>7}  {'SOPs/img':>10}  {'energy SNN/ANN':>14}",
        f"{'ANN':>6}  {100 * ann:7.2f}%  {'':>7}  {results['cost']['ann_macs']:10.3g}"
        f"  {'(MACs)':>14}",
    ]
    for t, acc in results["snn_accuracy"].items():
        c = results["cost"]["per_T"][t]
        lines.append(
            f"{t:>6}  {100 * acc:7.2f}%  {100 * (acc - ann):+6.2f}  {c['sops']:10.3g}  "
            f"{c['energy_ratio']:14.3f}"
        )
    return "\n".join(lines)


def layer_table(results: dict, steps: int) -> str:
    t = str(steps)
    head = (
        f"{'layer':<22}{'V_th':>7}{'max act':>9}{'rate':>7}{'total':>9}{'clip':>9}"
        f"{'quant':>9}{'uneven':>9}"
    )
    lines = [f"layer-wise error at T={t} (mean |ANN activation - SNN rate|)", head]
    for r in results["layers"]:
        e = r["error"][t]
        v = r["v_th"] if isinstance(r["v_th"], float) else max(r["v_th"])
        lines.append(
            f"{r['name'][:21]:<22}{v:7.3g}{r['max_activation']:9.3g}"
            f"{r['firing_rate'][t]:7.3f}{e['total']:9.4f}{e['clipping']:9.4f}"
            f"{e['quantisation']:9.4f}{e['unevenness']:9.4f}"
        )
    if results["largest_error_growth"].get(t):
        lines.append(f"error grows most at layer {results['largest_error_growth'][t]}")
    return "\n".join(lines)


def cost_table(results: dict, steps: int) -> str:
    t = str(steps)
    lines = [
        f"cost per image at T={t}: ANN MACs vs SNN MACs (analog input) + SOPs",
        f"{'layer':<22}{'ANN MACs':>12}{'SNN MACs':>12}{'SOPs':>12}{'energy SNN/ANN':>16}",
    ]
    for r in results["cost"]["layers"]:
        ratio = r["energy_snn_pj"][t] / r["energy_ann_pj"] if r["energy_ann_pj"] else 0.0
        lines.append(
            f"{r['name'][:21]:<22}{r['ann_macs']:12.4g}{r['snn_macs']:12.4g}"
            f"{r['sops'][t]:12.4g}{ratio:16.3f}"
        )
    return "\n".join(lines)
