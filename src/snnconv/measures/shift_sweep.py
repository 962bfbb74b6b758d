"""Sweep the shift of each IF layer and find the one that minimises its conversion error
(Deng & Gu 2021, Fig. 3: the optimum sits near V_th/(2T)).

Shifts are given as fractions f of V_th/T (f = 1/2 is the paper's V_th/(2T)). For every layer the
input currents of one run with the paper's shift are recorded, and the layer alone is re-run on
them with each f; its error is mean |ANN activation - SNN rate|. Then the whole network is run
with no shift, with V_th/(2T) everywhere, and with each layer at its own best f.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from snnconv import options
from snnconv.conversion.convert import READOUT_LAYER, SpikingNetwork
from snnconv.evaluation.evaluate import ann_pass
from snnconv.exceptions import OptionError
from snnconv.measures import error_split
from snnconv.simulation.neuron import IFNeurons, recording


def _accuracy(snn: SpikingNetwork, batches, steps: int) -> float:
    correct = total = 0
    for x, labels in batches:
        correct += (snn(x, steps)[-1].argmax(-1) == labels).sum().item()
        total += len(labels)
    return correct / total


def check_fractions(fractions) -> tuple[float, ...]:
    """Finite fractions >= 0 that include 0 (no shift) and 0.5 (the paper's V_th/(2T)), which the
    sweep's table and accuracy rows compare against."""
    values = tuple(float(f) for f in fractions)
    if not values or any(not math.isfinite(f) or f < 0 for f in values):
        raise OptionError(f"shift fractions must be finite numbers >= 0, got {list(fractions)}")
    missing = [f for f in (0.0, 0.5) if f not in values]
    if missing:
        raise OptionError(
            f"shift fractions must include 0 and 0.5 (the settings compared), missing {missing}"
        )
    return values


@contextmanager
def _restored(snn: SpikingNetwork) -> Iterator[None]:
    """On exit the network's shift and every layer's bias fraction are what they were."""
    shift = snn.shift
    saved = {m: (m.shift, m.bias_fraction) for m in snn.layers.values()}
    try:
        yield
    finally:
        snn.shift = shift
        for m, (layer_shift, fraction) in saved.items():
            m.shift, m.bias_fraction = layer_shift, fraction


def _layer_errors(snn, layers, batches, steps, fractions) -> tuple[dict, dict]:
    """Per layer, error sums at each fraction (the layer re-run alone on its recorded currents)
    and the number of elements."""
    sums = {n: [torch.zeros(3, dtype=torch.float64) for _ in fractions] for n in layers}
    n_elem = dict.fromkeys(layers, 0)
    for x, _ in batches:
        _, acts = ann_pass(snn, list(layers), x)
        with recording(layers.values()) as currents:
            snn(x, steps)
        for name, m in layers.items():
            current = torch.cat(currents[m])
            n_elem[name] += acts[name].numel()
            for i, f in enumerate(fractions):
                probe = IFNeurons(m.v_th, "bias", bias_fraction=f, signed=m.signed)
                probe.reset(steps)
                probe.scan(current, steps)
                sums[name][i] += error_split.error_sums(
                    acts[name], probe.spike_count, m.threshold_like(acts[name]), steps, "bias"
                )
    return sums, n_elem


def sweep(
    snn: SpikingNetwork, batches: list, steps: int, fractions=options.SHIFT_FRACTIONS
) -> dict:
    """Per layer: error at every fraction f, the best f; network accuracy with no shift, with
    V_th/(2T) everywhere and with each layer at its best f. ``batches``: a list of (inputs,
    labels). The network is left exactly as it was found (shift, fractions), also on error."""
    fractions = check_fractions(fractions)
    steps = options.check_steps(steps)
    layers = {n: m for n, m in snn.layers.items() if n != READOUT_LAYER}
    with _restored(snn):
        snn.set_shift("bias")
        for m in layers.values():
            m.bias_fraction = 0.5
        sums, n_elem = _layer_errors(snn, layers, batches, steps, fractions)
        rows, best = [], {}
        for name in layers:
            totals = [error_split.split(s, n_elem[name])["total"] for s in sums[name]]
            i = min(range(len(fractions)), key=totals.__getitem__)
            best[name] = fractions[i]
            rows.append(
                {
                    "name": name,
                    "error": dict(zip(map(str, fractions), totals)),
                    "best_fraction": fractions[i],
                    "best_error": totals[i],
                }
            )
        accuracy = {}
        for setting, fraction_of in (
            ("no shift", lambda n: 0.0),
            ("V_th/2T", lambda n: 0.5),
            ("per-layer best", best.__getitem__),
        ):
            for name, m in layers.items():
                m.bias_fraction = fraction_of(name)
            accuracy[setting] = _accuracy(snn, batches, steps)
    return {"T": steps, "fractions": list(fractions), "layers": rows, "accuracy": accuracy}


def table(result: dict) -> str:
    half = "0.5"
    lines = [
        f"shift per layer at T={result['T']} (in units of V_th/T; the paper's V_th/(2T) is 0.5)",
        f"{'layer':<24}{'best':>6}{'err best':>10}{'err 0.5':>10}{'err 0':>10}",
    ]
    for r in result["layers"]:
        lines.append(
            f"{r['name'][:23]:<24}{r['best_fraction']:6.1f}{r['best_error']:10.4f}"
            f"{r['error'].get(half, float('nan')):10.4f}{r['error']['0.0']:10.4f}"
        )
    lines.append(
        "network accuracy: "
        + ", ".join(f"{k} {100 * v:.2f}%" for k, v in result["accuracy"].items())
    )
    return "\n".join(lines)
