"""Post-conversion calibration: fit each IF layer's rate at T to its ANN activation.

For IF layer l, calibration images x, ANN activation a_l(x) and SNN rate
r_l(x) = V_th * count_l(x, T) / T after T steps, a unit u (a channel, or a neuron) has the mean
error e_l[u] = mean over images (and, per channel, positions) of a_l - r_l. The methods:

    "bias":       b_l += e_l          the bias of the conv/linear feeding layer l (per channel):
                                      every step's current rises by e
    "potential":  v_init_l += T e_l   the initial membrane (``IFNeurons.v_init``): the same charge,
                                      all of it before the first step
    "mse":        both at once, per channel: first the pair (dv, db) that cancels the mean error
                  at T/2 and at T (rate(t) moves by dv/t + db), then, from a grid of moves
                  along "timing" (charge taken from v(0) and spread over the steps) and "charge",
                  the pair with the least mean squared error of r_l against a_l per sample
    "threshold":  per channel, first V_th times the factor of THRESHOLD_SCALES with the least mean
                  squared error of r_l against a_l (spikes keep amplitude V_th, so the rate and
                  what the next layers receive scale with it), then "mse" on that

Layers are calibrated one after the other in network order, each on the input currents it gets
with the earlier layers already calibrated (recorded once per layer, so its own corrections are
tried on it alone). ``passes`` repeats measure-and-correct on a layer ("bias", "potential": the
count is not linear in the charge; the next correction is the secant between the tightest known
corrections with too few and too many spikes). Images go in their given order in fixed batches:
the result is deterministic.

Corrections are fitted for one T. At another T' they stay as they are: a potential correction
adds T e / T' to the rate (too much for T' < T, too little for T' > T); a bias correction adds e
at every T', but the rest it cancelled (the error of the count at T) differs. Calibrate for the T
you run; ``benchmarks/low_latency.py`` measures both.

The reference ANN (``snn.ann``) and the source model are never changed: the spiking graph shares
``snn.ann``'s conv/linear modules, so before a bias changes the graph gets its own copy of the
module that holds it. ``calibration_state`` / ``apply_calibration`` save and restore what
calibration changed, thresholds included (tensors only: loadable with
``torch.load(weights_only=True)``).

>>> # snn = snnconv.convert(model, calibration=loader)
>>> # record = calibrate(snn, train_images[:1024], T=16, method="mse")
>>> # snn(test_images, 16)[-1].argmax(-1)  # calibrated for T=16
"""

from __future__ import annotations

import copy
import operator
import time
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from snnconv.conversion.convert import READOUT_LAYER, SpikingNetwork
from snnconv.conversion.thresholds import Recorder
from snnconv.exceptions import ConversionError, OptionError
from snnconv.options import (
    CALIBRATION_BATCH,
    CALIBRATION_GRANULARITIES,
    CALIBRATION_METHODS,
    check_count,
    check_steps,
    choice,
)
from snnconv.simulation.executor import simulate
from snnconv.simulation.neuron import IFNeurons, check_finite, recording

__all__ = ["Calibration", "LayerError", "apply_calibration", "calibrate", "calibration_state"]

FEEDERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # modules whose bias "bias" corrects
ADDS = (operator.add, torch.add)
BIAS_METHODS = ("bias", "mse", "threshold")  # the methods that change a feeding module's bias
# "mse" grid, in units of V_th: "timing" moves k/10 V_th from v(0) into the T steps' bias,
# "charge" adds j/10 V_th to v(0) alone. The ranges hold every optimum seen on resnet20-cifar10
# (T = 8..32): k in -4..1, j in -1..1.
TIMING_STEPS = range(-6, 3)
CHARGE_STEPS = (-1, 0, 1)
GRID_UNIT = 0.1
# "threshold": the factors tried on each channel's V_th (from the percentile or other thresholds
# of the conversion). Chosen on resnet20-cifar10-relu (99.9th percentile, signed, T=8) with the
# 5,000 validation images: the range 0.6..1.2 was too narrow (19 % of channels at an end),
# this one reaches 89.84 % there vs 89.72 % (and 89.22 % for "mse" alone).
THRESHOLD_SCALES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5)


@dataclass(frozen=True)
class LayerError:
    """One IF layer on the calibration images before and after: ``mean_error`` is the mean over
    units of |mean of (ANN activation - SNN rate)| (what "bias" and "potential" cancel),
    ``abs_error`` and ``squared_error`` the means of |ANN activation - SNN rate| and of its
    square over all values (what is left per sample; "mse" minimises the square)."""

    name: str
    mean_error_before: float
    mean_error_after: float
    abs_error_before: float
    abs_error_after: float
    squared_error_before: float
    squared_error_after: float


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` did: its settings (``images``: how many, from the training split),
    the wall time it took and the per-layer errors on the calibration images. Written into
    results.json by ``snnconv evaluate --calibrate``."""

    method: str
    granularity: str
    T: int
    passes: int
    images: int
    seconds: float
    layers: list[LayerError]

    def error(self, kind: str = "mean", when: str = "after") -> float:
        """Mean over layers of ``<kind>_error_<when>`` (kind "mean", "abs" or "squared", when
        "before" or "after")."""
        values = [getattr(e, f"{kind}_error_{when}") for e in self.layers]
        return sum(values) / max(len(values), 1)

    def note(self) -> str:
        return (
            f"calibrated ({self.method}, per {self.granularity}, {self.passes} pass(es)) for "
            f"T={self.T} on {self.images} images: over {len(self.layers)} IF layers, mean |mean "
            f"error| {self.error('mean', 'before'):.4f} -> {self.error('mean', 'after'):.4f}, "
            f"mean |error| {self.error('abs', 'before'):.4f} -> {self.error('abs', 'after'):.4f};"
            f" fitted for T={self.T}, kept as they are at other T"
        )


def _check(snn, images, T, method, granularity, passes, batch_size) -> None:
    """Clear errors for bad options and bad images, before anything is changed."""
    if not isinstance(snn, SpikingNetwork):
        raise TypeError(
            f"calibrate needs a SpikingNetwork (from convert), got {type(snn).__name__}"
        )
    check_steps(T)
    choice("method", method, CALIBRATION_METHODS)
    choice("granularity", granularity, CALIBRATION_GRANULARITIES)
    check_count(passes, "passes")
    check_count(batch_size, "batch_size")
    if method in BIAS_METHODS and granularity != "channel":
        raise OptionError(
            f"method {method!r} corrects the bias of a conv/linear layer, one value per channel: "
            f"use granularity 'channel', not {granularity!r} (or method 'potential')"
        )
    if not torch.is_tensor(images) or not images.is_floating_point() or images.dim() < 2:
        got = (
            f"{images.dtype} of shape {tuple(images.shape)}"
            if torch.is_tensor(images)
            else type(images).__name__
        )
        raise ValueError(f"calibration images must be a float tensor [N, ...], got {got}")
    if images.shape[0] == 0:
        raise ValueError("calibration images: none given (the batch dimension is 0)")
    check_finite("calibration images", images)
    snn.check_input(images[:1], T)


def _batches(snn: SpikingNetwork, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The images in fixed batches, in the memory format of the network's conv weights."""
    weight = next((p for p in snn.ann.parameters() if p.dim() == 4), None)
    fmt = torch.contiguous_format
    if weight is not None and images.dim() == 4:
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            fmt = torch.channels_last
    return [b.contiguous(memory_format=fmt) for b in images.split(batch_size)]


def _layer_nodes(snn: SpikingNetwork) -> dict[str, fx.Node]:
    """IF layer name -> its node in the spiking graph, in network order (the spiking readout
    layer, which has no ANN activation to match, left out)."""
    nodes = {}
    for node in snn.graph.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("neurons."):
            name = str(node.target)[len("neurons.") :]
            if name != READOUT_LAYER:
                nodes[name] = node
    return nodes


def _prefix(snn: SpikingNetwork, name: str) -> fx.GraphModule:
    """The spiking graph cut after IF layer ``name`` (what does not feed it removed): simulating
    it sets the state of ``name`` and of the layers before it at their cost only. Shares every
    module with ``snn.graph``."""
    graph = copy.deepcopy(snn.graph.graph)
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == f"neurons.{name}")
    out = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(out):
        small = graph.call_function(torch.select, (node, 1, 0))  # a view: nothing computed
    out.args = (small,)
    gm = fx.GraphModule(snn.graph, graph, "CalibrationPrefix")
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _feeder(snn: SpikingNetwork, name: str, node: fx.Node) -> fx.Node:
    """The conv/linear node whose bias shifts the current of IF node ``node``: its input, or one
    operand of the add that is its input, read by nothing else."""
    modules = dict(snn.graph.named_modules())
    src = node.args[0]
    candidates = [src]
    if src.op == "call_function" and src.target in ADDS and len(src.users) == 1:
        candidates = [a for a in src.args if isinstance(a, fx.Node)]
    for c in candidates:
        if c.op == "call_module" and isinstance(modules[c.target], FEEDERS) and len(c.users) == 1:
            return c
    raise OptionError(
        f"calibration by bias needs IF layer '{name}' to be fed by a conv or linear layer "
        f"(directly or through one add) that feeds nothing else; its input is '{src.name}' "
        f"({src.op} {src.target}). Use method 'potential', which works for any layer."
    )


def _own_module(snn: SpikingNetwork, node: fx.Node) -> nn.Module:
    """The module of call node ``node`` made the spiking graph's own (a copy, with a zero bias
    if it had none) where it is shared with ``snn.ann`` or called at several nodes."""
    gm = snn.graph
    module = gm.get_submodule(node.target)
    ann_modules = {id(m) for m in snn.ann.modules()}
    uses = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == node.target]
    if id(module) not in ann_modules and len(uses) == 1:
        return module  # already the graph's own (an earlier calibration)
    own = copy.deepcopy(module)
    if own.bias is None:
        own.bias = nn.Parameter(torch.zeros_like(own.weight[:, 0].flatten(1)[:, 0]))
    parent_path, _, field = str(node.target).rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    if len(uses) == 1 and id(parent) not in ann_modules:
        setattr(parent, field, own)
    else:
        node.target = f"calibrated_{node.name}"
        gm.add_submodule(node.target, own)
        gm.recompile()
    return own


def per_unit(value: torch.Tensor, granularity: str) -> torch.Tensor:
    """A per-neuron value [C, ...] as one value per unit: itself per neuron; per channel, the
    mean over positions, shaped [C, 1, ...] to broadcast against one sample."""
    if granularity == "neuron" or value.dim() <= 1:
        return value
    return value.mean(dim=tuple(range(1, value.dim())), keepdim=True)


class _Knob:
    """One layer's correction x per unit on top of what it had: its initial membrane offset
    (``v_init``) or the bias of the module feeding it. ``scale`` is the x that raises the rate
    at T by about 1 (T for a potential, 1 for a bias)."""

    def __init__(self, snn: SpikingNetwork, name: str, node: fx.Node, kind: str, T: int):
        self.layer: IFNeurons = snn.layers[name]
        self.module = None if kind == "potential" else _own_module(snn, _feeder(snn, name, node))
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
    """Per unit, the tightest corrections known to give too few spikes (error > 0: lo) and too
    many (error < 0: hi). The mean count grows with the correction, so the root lies between:
    the next correction is the secant where both are known, else a step of scale * error."""

    def __init__(self, like: torch.Tensor):
        nan = torch.full_like(like, float("nan"))
        self.lo_x, self.lo_e, self.hi_x, self.hi_e = nan, nan.clone(), nan.clone(), nan.clone()

    def next(self, x: torch.Tensor, e: torch.Tensor, scale: float) -> torch.Tensor:
        lo = (e > 0) & ~(self.lo_x >= x)
        hi = (e < 0) & ~(self.hi_x <= x)
        self.lo_x, self.lo_e = torch.where(lo, x, self.lo_x), torch.where(lo, e, self.lo_e)
        self.hi_x, self.hi_e = torch.where(hi, x, self.hi_x), torch.where(hi, e, self.hi_e)
        both = ~(self.lo_x.isnan() | self.hi_x.isnan())
        secant = self.lo_x + self.lo_e * (self.hi_x - self.lo_x) / (self.lo_e - self.hi_e)
        return torch.where(both, secant, x + scale * e)


@dataclass
class _Layer:
    """What calibrating one layer works on: its input currents [T, batch, ...] per batch
    (recorded with the earlier layers calibrated) and its ANN activations per batch. Candidate
    corrections are tried on these alone, in two reused buffers per batch shape (a fresh
    [T, batch, ...] tensor per try costs more in page faults than the scan itself)."""

    neurons: IFNeurons
    currents: list[torch.Tensor]
    acts: list[torch.Tensor]
    T: int
    buffers: dict = field(default_factory=dict)

    def _buffers(self, cur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(cur.shape), cur.stride())
        if key not in self.buffers:
            self.buffers[key] = (torch.empty_like(cur), torch.empty_like(cur))
        return self.buffers[key]

    def rates(self, marks: list[int], addend: torch.Tensor | None = None) -> list[list]:
        """Per batch, the rates V_th * count / t after each step t in ``marks`` (with
        ``addend`` added to every step's current: a bias correction not yet in them)."""
        layer, out = self.neurons, []
        for cur in self.currents:
            work, spikes = self._buffers(cur)
            if addend is not None:
                cur = torch.add(cur, addend.to(cur.dtype), out=work)
            layer.reset(self.T)
            per_mark, done = [], 0
            v_th = layer.threshold_like(cur[0])
            for t in marks:
                layer.scan(cur[done:t], t - done, out=spikes[done:t])
                done = t
                per_mark.append(layer.spike_count * v_th / t)
            out.append(per_mark)
        return out

    def mean_errors(self, marks, granularity, addend=None) -> list[torch.Tensor]:
        """Per mark, the mean of (ANN activation - rate) per unit."""
        rates = self.rates(marks, addend)
        n = sum(a.shape[0] for a in self.acts)
        errs = []
        for i in range(len(marks)):
            total = sum((a - r[i]).double().sum(0) for a, r in zip(self.acts, rates))
            errs.append(per_unit(total / n, granularity))
        return errs

    def squared_error(self, addend: torch.Tensor) -> torch.Tensor:
        """Per channel, the mean over samples and positions of (rate at T - ANN activation)^2."""
        total, n = 0.0, 0
        for a, r in zip(self.acts, self.rates([self.T], addend)):
            d = (r[0] - a).double() ** 2
            total = total + d.sum(dim=[i for i in range(d.dim()) if i != 1])
            n += d.numel() // d.shape[1]
        return total / n


def _record(snn: SpikingNetwork, batches, T: int, name: str) -> _Layer:
    """Layer ``name``'s input currents and ANN activations on every batch."""
    gm = _prefix(snn, name)
    layer = snn.layers[name]
    currents, acts = [], []
    for x in batches:
        with recording([layer]) as store:
            simulate(gm, x, T, workspace=snn.workspace)
        parts = store[layer]
        currents.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        Recorder(snn.ann, {name}, lambda _n, t: acts.append(t)).run(x)
    return _Layer(layer, currents, acts, T)


def _fit_one(snn, layer: _Layer, name, node, kind, granularity, passes) -> None:
    """``passes`` rounds of: measure the mean error per unit at T, correct it (one knob)."""
    knob = _Knob(snn, name, node, kind, layer.T)
    x = bracket = None
    for _ in range(passes):
        addend = None if knob.module is None or x is None else x
        e = layer.mean_errors([layer.T], granularity, addend)[0]
        if x is None:
            x, bracket = torch.zeros_like(e), _Bracket(e)
        x = bracket.next(x, e, knob.scale)
        knob.set(x)


def _fit_threshold(layer: _Layer) -> None:
    """Method "threshold", its first part: per channel, V_th times the factor of
    THRESHOLD_SCALES whose rate at T has the least squared error (the first of equals)."""
    neurons = layer.neurons
    channels = layer.currents[0].shape[2]
    base = neurons.v_th.detach().expand(channels).clone()
    best = best_scale = None
    for scale in THRESHOLD_SCALES:
        neurons.v_th = base * scale
        mse = layer.squared_error(None).reshape(-1)
        factor = torch.full_like(base, scale)
        if best is None:
            best, best_scale = mse, factor
        else:
            better = mse < best
            best = torch.where(better, mse, best)
            best_scale = torch.where(better, factor, best_scale)
    neurons.v_th = base * best_scale


def _fit_mse(snn, layer: _Layer, name, node, passes) -> None:
    """Method "mse": potential and bias per channel (see the module docstring)."""
    T, h = layer.T, max(layer.T // 2, 1)
    pot = _Knob(snn, name, node, "potential", T)
    bias = _Knob(snn, name, node, "bias", T)
    dv = db = None
    marks = sorted({h, T})
    for _ in range(passes):
        errors = layer.mean_errors(marks, "channel", db)
        e_h, e_t = errors[0], errors[-1]
        if dv is None:
            dv, db = torch.zeros_like(e_t), torch.zeros_like(e_t)
        if h == T:  # T = 1: one equation, the potential alone
            dv = dv + T * e_t
        else:  # rate(t) += dv / t + db: cancel the error at h and at T
            a = (e_h - e_t) / (1 / h - 1 / T)
            dv, db = dv + a, db + e_t - a / T
        pot.set(dv)
    v = per_unit(layer.neurons.threshold_like(layer.currents[0][0]), "channel")
    # Candidates: no correction at all (so no channel ends worse than it started), then the
    # grid around (dv, db); per channel the first with the least squared error wins.
    zero = torch.zeros_like(dv)
    candidates = [(zero, zero)] + [
        (dv + v * GRID_UNIT * (k + j), db - v * GRID_UNIT * k / T)
        for k in TIMING_STEPS
        for j in CHARGE_STEPS
    ]
    best = best_v = best_b = None
    for cand_v, cand_b in candidates:
        cand_v, cand_b = cand_v.expand_as(dv), cand_b.expand_as(db)
        pot.set(cand_v)
        mse = layer.squared_error(cand_b).reshape(dv.shape)
        if best is None:
            best, best_v, best_b = mse, cand_v, cand_b
        else:
            better = mse < best
            best = torch.where(better, mse, best)
            best_v = torch.where(better, cand_v, best_v)
            best_b = torch.where(better, cand_b, best_b)
    pot.set(best_v)
    bias.set(best_b)


@dataclass
class _Sums:
    """Per-neuron sums of SNN rates and ANN activations; sums of |ANN - SNN| and its square."""

    rate: dict[str, torch.Tensor]
    ann: dict[str, torch.Tensor]
    abs_err: dict[str, float]
    sq_err: dict[str, float]
    n: int = 0


def _measure(snn: SpikingNetwork, batches, T: int, names: list[str]) -> _Sums:
    """Simulate the whole network T steps on every batch; sum rates, activations, errors."""
    sums = _Sums({}, {}, dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0))
    layers = snn.layers
    for x in batches:
        simulate(snn.graph, x, T, workspace=snn.workspace)
        acts = {}
        Recorder(snn.ann, set(names), acts.__setitem__).run(x)
        for name in names:
            layer = layers[name]
            rate = layer.spike_count * layer.threshold_like(layer.spike_count) / T
            for store, value in ((sums.rate, rate), (sums.ann, acts[name])):
                total = value.double().sum(0)
                store[name] = store[name] + total if name in store else total
            diff = (acts[name] - rate).double()
            sums.abs_err[name] += diff.abs().sum().item()
            sums.sq_err[name] += diff.square().sum().item()
        sums.n += x.shape[0]
    return sums


def _layer_error(name: str, before: _Sums, after: _Sums, unit: str) -> LayerError:
    def mean_err(s: _Sums) -> float:
        return per_unit((s.ann[name] - s.rate[name]) / s.n, unit).abs().mean().item()

    def per_value(total: dict[str, float], s: _Sums) -> float:
        return total[name] / (s.n * s.ann[name].numel())

    return LayerError(
        name,
        mean_err(before),
        mean_err(after),
        per_value(before.abs_err, before),
        per_value(after.abs_err, after),
        per_value(before.sq_err, before),
        per_value(after.sq_err, after),
    )


@torch.no_grad()
def calibrate(
    snn: SpikingNetwork,
    images: torch.Tensor,
    T: int,
    method: str = "mse",
    granularity: str = "channel",
    passes: int = 2,
    batch_size: int = CALIBRATION_BATCH,
) -> Calibration:
    """Calibrate ``snn`` in place for T steps on ``images`` (normalised inputs [N, ...] from
    the training split, unaugmented; never the images you evaluate on); see the module
    docstring. Records what it did in ``snn.notes`` and returns the settings and per-layer
    errors on the calibration images."""
    _check(snn, images, T, method, granularity, passes, batch_size)
    nodes = _layer_nodes(snn)
    if not nodes:
        raise ConversionError("calibrate: the network has no IF layers to calibrate")
    if method in BIAS_METHODS:
        for name, node in nodes.items():
            _feeder(snn, name, node)  # refuse before changing anything
    batches = _batches(snn, images, batch_size)
    names = list(nodes)
    start = time.perf_counter()
    with snn.lock:
        before = _measure(snn, batches, T, names)
        for name, node in nodes.items():
            layer = _record(snn, batches, T, name)
            if method == "threshold":
                _fit_threshold(layer)
            if method in ("mse", "threshold"):
                _fit_mse(snn, layer, name, node, passes)
            else:
                _fit_one(snn, layer, name, node, method, granularity, passes)
            del layer
        after = _measure(snn, batches, T, names)
    unit = "channel" if method in BIAS_METHODS else granularity
    record = Calibration(
        method,
        unit,
        T,
        passes,
        images.shape[0],
        round(time.perf_counter() - start, 3),
        [_layer_error(n, before, after, unit) for n in names],
    )
    snn.notes.append(record.note())
    snn.calibration = record
    return record


def calibration_state(snn: SpikingNetwork) -> dict[str, torch.Tensor]:
    """What calibration changed, as tensors: ``v_th.<layer>`` (every IF layer's threshold),
    ``v_init.<layer>`` for every IF layer with an initial-membrane offset and ``bias.<module
    path>`` for every bias of the spiking graph's own modules (copies made by calibration)."""
    state = {f"v_th.{n}": m.v_th.clone() for n, m in snn.layers.items()}
    state |= {
        f"v_init.{n}": m.v_init.clone() for n, m in snn.layers.items() if m.v_init is not None
    }
    ann_modules = {id(m) for m in snn.ann.modules()}
    for path, module in snn.graph.named_modules():
        if isinstance(module, FEEDERS) and id(module) not in ann_modules:
            state[f"bias.{path}"] = module.bias.detach().clone()
    return state


@torch.no_grad()
def apply_calibration(snn: SpikingNetwork, state: dict[str, torch.Tensor]) -> None:
    """Apply a ``calibration_state`` to a freshly converted network of the same model and
    conversion options: sets the offsets, and gives the graph its own copies of the modules
    whose biases change. Every key and shape is checked before anything changes."""
    layers = snn.layers
    calls = {str(n.target): n for n in snn.graph.graph.nodes if n.op == "call_module"}
    v_th = {n: m.v_th for n, m in layers.items()}
    v_th |= {k[5:]: v for k, v in state.items() if k.startswith("v_th.") and torch.is_tensor(v)}
    plan = []
    for key, value in state.items():
        kind, _, path = key.partition(".")
        if not torch.is_tensor(value) or not value.is_floating_point():
            raise ConversionError(f"calibration state: {key!r} is not a float tensor")
        if kind == "v_th" and path in layers:  # one per layer or per channel, finite and > 0
            ok = value.dim() <= 1 and value.numel() > 0
            ok = ok and bool(torch.isfinite(value).all() and (value > 0).all())
        elif kind == "v_init" and path in layers:
            width = v_th[path].numel()
            ok = value.dim() >= 1 and value.shape[0] in (width, 1) or v_th[path].dim() == 0
        elif (
            kind == "bias" and path in calls and isinstance(snn.graph.get_submodule(path), FEEDERS)
        ):
            ok = value.shape == (snn.graph.get_submodule(path).weight.shape[0],)
        else:
            raise ConversionError(
                f"calibration state: {key!r} names no IF layer or conv/linear module of this "
                "network (saved from another model or other conversion options?)"
            )
        if not ok:
            raise ConversionError(
                f"calibration state: {key!r} (shape {tuple(value.shape)}) does not fit the "
                f"network's {path!r}" + (": V_th must be finite and > 0" if kind == "v_th" else "")
            )
        plan.append((kind, path, value))
    for kind, path, value in plan:
        if kind == "v_th":
            layers[path].v_th = value.detach().to(torch.float32).clone()
        elif kind == "v_init":
            layers[path].v_init = value.clone()
        else:
            _own_module(snn, calls[path]).bias.copy_(value)
