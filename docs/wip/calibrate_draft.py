"""Post-conversion calibration: make each IF layer's mean SNN rate match its ANN activation.

For IF layer l, calibration images x, ANN activation a_l(x) and SNN rate r_l(x) = V_th *
count_l(x, T) / T after a simulation of T steps, the mean error of a unit u (a channel, or a
neuron) is

    e_l[u] = mean over images (and, per channel, over positions) of  a_l - r_l

and each method cancels it by one change of the network that raises the count at T by T e / V_th:

    "bias":       b_l += e_l          bias of the conv/linear feeding layer l: every step's current
                                      rises by e (per channel only)
    "potential":  v_init_l += T e_l   initial membrane (``IFNeurons.v_init``): the same charge, all
                                      of it before the first step

Layers are calibrated one after the other in network order, each measured with the earlier ones
already corrected; ``passes`` repeats measure-and-correct on a layer before moving on (the count
is not linear in the charge, so one correction leaves a rest). Images go in their given order, in
fixed batches: the result is deterministic.

The corrections are fitted for the given T. At another T' they stay as they are: a potential
correction adds T e / T' to the rate (too much for T' < T, too little for T' > T); a bias
correction adds e at every T', but the rest it leaves (the error of the count, not the rate)
differs. Calibrate for the T you run.

The reference ANN (``snn.ann``) and the source model are never changed: the spiking graph shares
``snn.ann``'s conv/linear modules, so before a bias is changed the graph gets its own copy of the
module that holds it.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import fx, nn

from snnconv.conversion.convert import READOUT_LAYER, SpikingNetwork
from snnconv.conversion.thresholds import Recorder
from snnconv.evaluation.evaluate import ann_pass
from snnconv.exceptions import OptionError
from snnconv.options import check_steps, choice
from snnconv.simulation.executor import simulate
from snnconv.simulation.neuron import IFNeurons, check_finite, recording

__all__ = ["GRANULARITIES", "METHODS", "Calibration", "LayerError", "calibrate"]

Method = Literal["bias", "potential", "both", "weights", "mse", "wmse"]
Granularity = Literal["channel", "neuron"]
METHODS: tuple[str, ...] = get_args(Method)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
DEFAULT_BATCH = 128
FEEDERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # modules whose bias "bias" corrects
ADDS = (operator.add, torch.add)


@dataclass(frozen=True)
class LayerError:
    """One IF layer on the calibration images, before and after calibration: ``mean_error`` is
    the mean over units (channels or neurons, as calibrated) of |mean of ANN activation - SNN
    rate| (what calibration cancels), ``abs_error`` the mean of |ANN activation - SNN rate| over
    every value (what is left per sample)."""

    name: str
    mean_error_before: float
    mean_error_after: float
    abs_error_before: float
    abs_error_after: float


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` did: its settings and the per-layer errors."""

    method: str
    granularity: str
    T: int
    passes: int
    images: int
    layers: tuple[LayerError, ...]

    def mean_error(self, when: str = "after") -> float:
        """Mean over layers of ``mean_error_<when>`` ("before" or "after")."""
        values = [getattr(e, f"mean_error_{when}") for e in self.layers]
        return sum(values) / max(len(values), 1)

    def note(self) -> str:
        return (
            f"calibrated ({self.method}, per {self.granularity}, {self.passes} pass(es)) for "
            f"T={self.T} on {self.images} images: mean |ANN - SNN| per {self.granularity} "
            f"{self.mean_error('before'):.4f} -> {self.mean_error('after'):.4f} (mean over "
            f"{len(self.layers)} layers); fitted for T={self.T}, kept as they are at other T"
        )


def _check(snn, images, T, method, granularity, passes, batch_size) -> None:
    """Clear errors for bad options and bad images (before anything is changed)."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"calibrate needs a SpikingNetwork (from convert), got {type(snn).__name__}"
        )
    check_steps(T)
    choice("method", method, METHODS)
    choice("granularity", granularity, GRANULARITIES)
    check_steps(passes, "passes")
    check_steps(batch_size, "batch_size")
    if method in ("bias", "both", "weights", "mse", "wmse") and granularity != "channel":
        raise OptionError(
            "method 'bias' corrects the bias of a conv/linear layer, one value per channel: "
            f"use granularity 'channel', not {granularity!r} (or method 'potential')"
        )
    if not torch.is_tensor(images) or not images.is_floating_point() or images.dim() < 2:
        raise ValueError(
            "calibration images must be a float tensor [N, ...] of normalised inputs, got "
            + (
                f"{images.dtype} of shape {tuple(images.shape)}"
                if torch.is_tensor(images)
                else type(images).__name__
            )
        )
    if images.shape[0] == 0:
        raise ValueError("calibration images: none given (the batch dimension is 0)")
    check_finite("calibration images", images)
    try:
        with torch.no_grad():
            snn.ann(images[:1])
    except Exception as err:
        raise ValueError(
            f"calibration images of shape {tuple(images.shape)} do not fit the network: {err}"
        ) from err


def _batches(snn: SpikingNetwork, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The images in fixed batches, in the network's memory format (channels_last where its
    convolutions are: the simulator's fast path)."""
    weight = next((p for p in snn.ann.parameters() if p.dim() == 4), None)
    fmt = torch.contiguous_format
    if weight is not None and images.dim() == 4:
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            fmt = torch.channels_last
    return [b.contiguous(memory_format=fmt) for b in images.split(batch_size)]


def _layer_nodes(snn: SpikingNetwork) -> dict[str, fx.Node]:
    """IF layer name -> its node in the spiking graph, in network order (the spiking readout
    layer, with no ANN activation to match, is left out)."""
    nodes = {}
    for node in snn.graph.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("neurons."):
            name = str(node.target)[len("neurons.") :]
            if name != READOUT_LAYER:
                nodes[name] = node
    return nodes


def _prefix(snn: SpikingNetwork, name: str) -> fx.GraphModule:
    """The spiking graph up to IF layer ``name`` (what does not feed it removed), returning one
    value per sample: simulating it sets the counts of ``name`` and of the layers before it at
    the cost of those layers only. Shares every module with ``snn.graph``."""
    graph = copy.deepcopy(snn.graph.graph)
    target = f"neurons.{name}"
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == target)
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        small = graph.call_function(torch.select, (node, 1, 0))  # a view: nothing computed
    out.args = (small,)
    gm = fx.GraphModule(snn.graph, graph, "CalibrationPrefix")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


@dataclass
class _Sums:
    """Per-neuron sums of SNN rates over images, and sums of |ANN - SNN| over all values."""

    rate: dict[str, torch.Tensor]
    abs_err: dict[str, float]
    n: int = 0

    def mean_rate(self, name: str) -> torch.Tensor:
        return self.rate[name] / self.n


def _measure(
    snn: SpikingNetwork, batches, T: int, names: list[str], upto: str | None, with_ann: bool
) -> _Sums:
    """Simulate T steps (the whole network, or only up to layer ``upto``) on every batch and sum
    the rates of ``names``; with ``with_ann`` also |ANN activation - SNN rate|."""
    gm = snn.graph if upto is None else _prefix(snn, upto)
    layers = snn.layers
    sums = _Sums({}, dict.fromkeys(names, 0.0))
    for x in batches:
        simulate(gm, x, T, workspace=snn.workspace)
        acts = ann_pass(snn, names, x)[1] if with_ann else {}
        for name in names:
            layer = layers[name]
            rate = layer.spike_count * layer.threshold_like(layer.spike_count) / T
            total = rate.double().sum(0)
            sums.rate[name] = sums.rate[name] + total if name in sums.rate else total
            if with_ann:
                sums.abs_err[name] += (acts[name] - rate).abs().double().sum().item()
        sums.n += x.shape[0]
    return sums


def _ann_means(snn: SpikingNetwork, batches, names: list[str]) -> dict[str, torch.Tensor]:
    """Per-neuron mean ANN activation of every layer over the images (float64)."""
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for x in batches:
        for name, a in ann_pass(snn, names, x)[1].items():
            total = a.double().sum(0)
            sums[name] = sums[name] + total if name in sums else total
        n += x.shape[0]
    return {k: v / n for k, v in sums.items()}


def per_unit(error: torch.Tensor, granularity: str) -> torch.Tensor:
    """A per-neuron error [C, ...] as one value per unit: itself per neuron, the mean over
    positions per channel, shaped [C, 1, ...] to broadcast against one sample's current."""
    if granularity == "neuron" or error.dim() <= 1:
        return error
    return error.mean(dim=tuple(range(1, error.dim())), keepdim=True)


def _feeder(snn: SpikingNetwork, name: str, node: fx.Node) -> fx.Node:
    """The conv/linear node whose bias shifts the current of IF node ``node``: its input, or
    one operand of the add that is its input, read by nothing else."""
    modules = dict(snn.graph.named_modules())
    src = node.args[0]
    candidates = [src]
    if src.op == "call_function" and src.target in ADDS and len(src.users) == 1:
        candidates = [a for a in src.args if isinstance(a, fx.Node)]
    for c in candidates:
        if c.op == "call_module" and isinstance(modules[c.target], FEEDERS) and len(c.users) == 1:
            return c
    raise OptionError(
        f"method 'bias' needs IF layer '{name}' to be fed by a conv or linear layer (directly or "
        f"through one add) that feeds nothing else; its input is '{src.name}' ({src.op} "
        f"{src.target}). Use method 'potential', which works for any layer."
    )


def _own_module(snn: SpikingNetwork, node: fx.Node) -> nn.Module:
    """The module of call node ``node`` as the spiking graph's own: a copy (with a bias, zero
    if it had none) where it is shared with ``snn.ann`` or called at several nodes, put at its
    path when that is the graph's own and it is called once there, else under a new name."""
    gm = snn.graph
    module = gm.get_submodule(node.target)
    ann_modules = {id(m) for m in snn.ann.modules()}
    uses = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    if id(module) not in ann_modules and len(uses) == 1:
        return module  # already the graph's own (an earlier calibration)
    own = copy.deepcopy(module)
    if own.bias is None:
        channels = own.weight.shape[0]
        own.bias = nn.Parameter(
            torch.zeros(channels, dtype=own.weight.dtype, device=own.weight.device)
        )
    parent_path, _, field = str(node.target).rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    if len(uses) == 1 and id(parent) not in ann_modules:
        setattr(parent, field, own)
    else:
        node.target = f"calibrated_{node.name}"
        gm.add_submodule(node.target, own)
        gm.recompile()
    return own


class _Knob:
    """One layer's correction x (per unit) on top of what the layer had: its initial membrane
    offset (``v_init``, "potential") or the bias of the module feeding it ("bias"). ``scale`` is
    the x that raises the layer's rate at T by about 1 (T for a potential, 1 for a bias)."""

    def __init__(self, snn: SpikingNetwork, name: str, node: fx.Node, method: str, T: int):
        self.layer: IFNeurons = snn.layers[name]
        self.module = None if method == "potential" else _own_module(snn, _feeder(snn, name, node))
        target = self.layer.v_init if self.module is None else self.module.bias
        self.base = None if target is None else target.detach().clone()
        self.scale = float(T) if self.module is None else 1.0

    def set(self, x: torch.Tensor) -> None:
        if self.module is None:
            x = x.to(self.layer.v_th.dtype)
            self.layer.v_init = x if self.base is None else self.base + x
        else:
            self.module.bias.copy_(self.base + x.reshape(-1).to(self.base.dtype))


class _Bracket:
    """Per unit, the tightest corrections known to give too few spikes (error > 0: ``lo``) and
    too many (error < 0: ``hi``). The mean count grows with the correction, so the root lies
    between them: the next correction is the secant between the two where both are known, else
    a step of ``scale * error`` from the last one."""

    def __init__(self, like: torch.Tensor):
        nan = torch.full_like(like, float("nan"))
        self.lo_x, self.lo_e, self.hi_x, self.hi_e = nan, nan, nan.clone(), nan.clone()

    def next(self, x: torch.Tensor, e: torch.Tensor, scale: float) -> torch.Tensor:
        lo = (e > 0) & ~(self.lo_x >= x)
        hi = (e < 0) & ~(self.hi_x <= x)
        self.lo_x, self.lo_e = torch.where(lo, x, self.lo_x), torch.where(lo, e, self.lo_e)
        self.hi_x, self.hi_e = torch.where(hi, x, self.hi_x), torch.where(hi, e, self.hi_e)
        both = ~(self.lo_x.isnan() | self.hi_x.isnan())
        secant = self.lo_x + self.lo_e * (self.hi_x - self.lo_x) / (self.lo_e - self.hi_e)
        return torch.where(both, secant, x + scale * e)


def _record(snn: SpikingNetwork, batches, T: int, name: str) -> list[torch.Tensor]:
    """Layer ``name``'s input current [T, batch, ...] on every batch (the network simulated up to
    that layer): the layer's own corrections do not change it, so they can be tried on it alone."""
    gm = _prefix(snn, name)
    layer = snn.layers[name]
    currents = []
    for x in batches:
        with recording([layer]) as store:
            simulate(gm, x, T, workspace=snn.workspace)
        parts = store[layer]
        currents.append(parts[0] if len(parts) == 1 else torch.cat(parts))
    return currents


def _rerun(layer: IFNeurons, currents, T: int, marks, addend=None) -> dict[int, torch.Tensor]:
    """Per-neuron mean rates of ``layer`` at each step in ``marks`` on recorded ``currents``
    (plus ``addend``, a per-unit bias correction not yet in them)."""
    sums: dict[int, torch.Tensor] = {}
    n = 0
    v_th = layer.threshold_like(currents[0][0])
    for cur in currents:
        if addend is not None:
            cur = cur + addend.to(cur.dtype)
        layer.reset(T)
        done = 0
        for t in marks:
            layer.scan(cur[done:t], t - done)
            done = t
            total = (layer.spike_count * v_th).double().sum(0) / t
            sums[t] = sums[t] + total if t in sums else total
        n += cur.shape[1]
    return {t: v / n for t, v in sums.items()}


def _calibrate_layer(snn, batches, T, name, node, ann_mean, method, granularity, passes):
    """``passes`` rounds of: measure layer ``name``'s mean error per unit, correct it."""
    currents = _record(snn, batches, T, name)
    layer = snn.layers[name]
    if method == "both":
        return _calibrate_both(snn, currents, T, name, node, ann_mean, granularity, passes)
    knob = _Knob(snn, name, node, method, T)
    x = bracket = None
    for _ in range(passes):
        addend = None if knob.module is None or x is None else x
        rate = _rerun(layer, currents, T, [T], addend)[T]
        e = per_unit(ann_mean - rate, granularity)
        if x is None:
            x, bracket = torch.zeros_like(e), _Bracket(e)
        x = bracket.next(x, e, knob.scale)
        knob.set(x)


def _calibrate_both(snn, currents, T, name, node, ann_mean, granularity, passes):
    """Potential and bias together: match the mean rate at T/2 and at T."""
    layer = snn.layers[name]
    pot = _Knob(snn, name, node, "potential", T)
    bias = _Knob(snn, name, node, "bias", T)
    h = T // 2
    dv = db = None
    for _ in range(passes):
        rates = _rerun(layer, currents, T, [h, T], db)
        e_t = per_unit(ann_mean - rates[T], granularity)
        e_h = per_unit(ann_mean - rates[h], granularity)
        if dv is None:
            dv, db = torch.zeros_like(e_t), torch.zeros_like(e_t)
        # rate(t) += dv / t + db: solve for e at h and T
        a = (e_h - e_t) / (1 / h - 1 / T)
        dv = dv + a
        db = db + e_t - a / T
        pot.set(dv)
        bias.set(db)
    return pot, bias, dv, db


def _rerun_mse(layer, currents, acts, T, addend) -> torch.Tensor:
    """Per-channel mean squared error of ``layer``'s rate at T against the ANN ``acts``."""
    total = 0.0
    n = 0
    for cur, a in zip(currents, acts):
        cur = cur + addend.to(cur.dtype)
        layer.reset(T)
        layer.scan(cur, T)
        r = layer.spike_count * layer.threshold_like(layer.spike_count) / T
        d = (r - a).double() ** 2
        total = total + d.sum(dim=[i for i in range(d.dim()) if i != 1])
        n += d.numel() // d.shape[1]
    return total / n


def _grid_mse(snn, batches, currents, T, name, pot, bias, dv, db):
    """Per channel, the (potential, bias) offsets from a grid that give the least squared error
    of the rate at T: along 'timing' (charge moved from the start to every step) and 'charge'."""
    layer = snn.layers[name]
    acts = [ann_pass(snn, [name], x)[1][name] for x in batches]
    v = layer.v_th.max().item()
    shape = dv.shape
    best = best_v = best_b = None
    for k in range(-6, 3):
        for j in (-1, 0, 1):
            off_v, off_b = v * (0.1 * k + 0.1 * j), -v * 0.1 * k / T
            layer.v_init = None
            pot.set(dv + off_v)
            mse = _rerun_mse(layer, currents, acts, T, db + off_b).reshape(shape)
            if best is None:
                best, best_v, best_b = mse, torch.full_like(dv, off_v), torch.full_like(db, off_b)
            else:
                better = mse < best
                best = torch.where(better, mse, best)
                best_v = torch.where(better, torch.full_like(dv, off_v), best_v)
                best_b = torch.where(better, torch.full_like(db, off_b), best_b)
    pot.set(dv + best_v)
    bias.set(db + best_b)
    import os

    if os.environ.get("CAL_DEBUG"):
        kk = (-best_b * T / v / 0.1).round().flatten().tolist()
        jj = ((best_v / v / 0.1).flatten() - torch.tensor(kk)).round().tolist()
        from collections import Counter

        print(name, "k", sorted(Counter(kk).items()), "j", sorted(Counter(jj).items()), flush=True)


def _patches(module: nn.Module, r: torch.Tensor) -> torch.Tensor:
    """The rows the module multiplies by its weight: [samples * positions, in features + 1]
    (the last column of ones for the bias)."""
    if isinstance(module, nn.Linear):
        x = r.reshape(-1, r.shape[-1])
    else:
        cols = torch.nn.functional.unfold(
            r, module.kernel_size, module.dilation, module.padding, module.stride
        )
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [B * positions, C]."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2).reshape(-1, t.shape[1])


def _fit_weights(snn, batches, T: int, name: str, node: fx.Node, ridge: float = 1e-3) -> bool:
    """Refit the weights and bias of the conv/linear feeding layer ``name`` so that its mean
    current over T steps, computed from the SNN rates of its input, matches the ANN's
    pre-activation where that matters (least squares, anchored at the current weights)."""
    feeder = _feeder(snn, name, node)
    src = feeder.args[0]
    if not (src.op == "call_module" and str(src.target).startswith("neurons.")):
        return False
    module = snn.graph.get_submodule(feeder.target)
    if not (
        isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
    ):
        return False
    module = _own_module(snn, feeder)
    p_layer = snn.layers[str(src.target)[len("neurons.") :]]
    layer = snn.layers[name]
    v = layer.v_th.max().item()
    pre = node.args[0].name
    gm = _prefix(snn, name)
    xtx = xty = None
    for x in batches:
        with recording([layer]) as store:
            simulate(gm, x, T, workspace=snn.workspace)
        m = sum(c.sum(0) for c in store[layer]) / T
        r = p_layer.spike_count * p_layer.threshold_like(p_layer.spike_count) / T
        z = {}
        Recorder(snn.ann, {pre}, z.__setitem__).run(x)
        z = z[pre]
        base = module(r.contiguous())
        rest = m - base
        active = (z > 0) & (z < v)
        wrong = z.clamp(0, v) != m.clamp(0, v)
        target = torch.where(active, z, torch.where(wrong, z.clamp(0, v), m)) - rest
        xs = _patches(module, r.contiguous()).double()
        ys = _rows(target).double()
        xtx = xs.T @ xs if xtx is None else xtx + xs.T @ xs
        xty = xs.T @ ys if xty is None else xty + xs.T @ ys
    w_old = torch.cat([module.weight.reshape(module.weight.shape[0], -1), module.bias[:, None]], 1)
    lam = ridge * xtx.diagonal().mean()
    eye = torch.eye(xtx.shape[0], dtype=xtx.dtype)
    w = torch.linalg.solve(xtx + lam * eye, xty + lam * w_old.T.double()).T
    module.weight.copy_(w[:, :-1].reshape(module.weight.shape).to(module.weight.dtype))
    module.bias.copy_(w[:, -1].to(module.bias.dtype))
    return True


@torch.no_grad()
def calibrate(
    snn: SpikingNetwork,
    images: torch.Tensor,
    T: int,
    method: str = "potential",
    granularity: str = "channel",
    passes: int = 1,
    batch_size: int = DEFAULT_BATCH,
) -> Calibration:
    """Calibrate ``snn`` in place for T steps on ``images`` (normalised inputs [N, ...], taken
    from the training split: never the images you evaluate on); see the module docstring.
    Records what it did in ``snn.notes`` and returns the settings and per-layer errors."""
    _check(snn, images, T, method, granularity, passes, batch_size)
    batches = _batches(snn, images, batch_size)
    nodes = _layer_nodes(snn)
    names = list(nodes)
    if method in ("bias", "both", "weights", "mse", "wmse"):
        for name in names:
            _feeder(snn, name, nodes[name])  # refuse before changing anything
    ann = _ann_means(snn, batches, names)
    before = _measure(snn, batches, T, names, None, with_ann=True)
    for name in names:
        if method in ("weights", "mse", "wmse"):
            if method != "mse":
                _fit_weights(snn, batches, T, name, nodes[name])
            currents = _record(snn, batches, T, name)
            knobs = _calibrate_both(
                snn, currents, T, name, nodes[name], ann[name], granularity, passes
            )
            if method != "weights":
                _grid_mse(snn, batches, currents, T, name, *knobs)
            continue
        _calibrate_layer(snn, batches, T, name, nodes[name], ann[name], method, granularity, passes)
    after = _measure(snn, batches, T, names, None, with_ann=True)
    record = Calibration(
        method,
        granularity,
        T,
        passes,
        images.shape[0],
        tuple(_layer_error(n, ann[n], before, after, granularity) for n in names),
    )
    snn.notes.append(record.note())
    return record


def _layer_error(name: str, ann: torch.Tensor, before: _Sums, after: _Sums, unit: str):
    def mean_err(s: _Sums) -> float:
        return per_unit(ann - s.mean_rate(name), unit).abs().mean().item()

    def abs_err(s: _Sums) -> float:
        return s.abs_err[name] / (s.n * ann.numel())

    return LayerError(name, mean_err(before), mean_err(after), abs_err(before), abs_err(after))
