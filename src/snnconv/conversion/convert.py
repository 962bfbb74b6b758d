"""ANN -> SNN conversion (Deng & Gu 2021): copy the weights, turn every ReLU-like activation
clip(x, 0, a) into a layer of IF neurons with V_th = a (threshold balancing), add the shift.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Iterable

import torch
from torch import fx, nn

from snnconv import options
from snnconv.activations import QCFS
from snnconv.conversion.graph import ConversionError, check_supported, classify, trace
from snnconv.conversion.prepare import prepare, regime_notes
from snnconv.conversion.thresholds import batch_input, layer_statistic
from snnconv.simulation.executor import simulate
from snnconv.simulation.neuron import IFNeurons, check_finite
from snnconv.simulation.stepwise import simulate_stepwise

READOUT_LAYER = "readout"


class SpikingNetwork(nn.Module):
    """A converted network. ``snn(x, T)`` -> readout after every step, [T, batch, ...].

    Attributes: ``ann`` (the inference-form ANN the SNN mirrors: BN folded, dropout removed),
    ``graph`` (the SNN: ``ann``'s graph with IF layers in place of activations, sharing its
    weights), ``layers`` (IF layers by the name of the activation node they replace), ``shift``,
    ``neuron`` ("if" or "signed"), ``readout``, ``threshold``, ``notes`` (what conversion
    changed), ``calibration`` (the record of ``snnconv.calibrate``, or None), ``workspace``
    (output buffers kept from the last simulation for the next, at most about its chunk's bytes;
    ``snn.workspace.clear()`` frees them; never saved or copied), ``lock`` (held by every
    simulation, so calls from several threads run one at a time; the layers' state, e.g.
    ``spike_count``, belongs to the last call: read it under ``with snn.lock:`` with your call,
    or in ``on_mark``).
    """

    def __init__(
        self,
        ann: fx.GraphModule,
        graph: fx.GraphModule,
        *,
        shift: str,
        neuron: str = "if",
        readout: str,
        threshold: str,
        notes: list[str],
        input_shape: tuple[int, ...] | None,
    ):
        super().__init__()
        self.ann, self.graph = ann, graph
        self.shift, self.readout, self.threshold = shift, readout, threshold
        self.neuron = options.check_neuron(neuron)
        self.notes, self.input_shape = list(notes), input_shape
        self.calibration = None  # the Calibration record once conversion.calibrate ran
        self.workspace: dict[str, torch.Tensor] = {}
        self.lock = threading.RLock()

    def __getstate__(self):
        state = {**self.__dict__, "workspace": {}}  # buffers are scratch: not pickled or copied
        state.pop("lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.lock = threading.RLock()

    @property
    def layers(self) -> dict[str, IFNeurons]:
        return dict(self.graph.neurons.named_children())

    @property
    def thresholds(self) -> dict[str, float | list[float]]:
        return {k: m.v_th.tolist() for k, m in self.layers.items()}

    def set_shift(self, shift: str) -> None:
        """Switch every IF layer to shift "bias", "membrane" or "none"."""
        self.shift = options.check_shift(shift)
        for m in self.layers.values():
            m.shift = shift

    def check_input(self, x: torch.Tensor, steps: int) -> None:
        options.check_steps(steps)
        if not torch.is_tensor(x):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        params = next(self.ann.parameters(), None)
        dtype = params.dtype if params is not None else torch.float32
        if x.dtype != dtype:
            raise TypeError(
                f"input dtype {x.dtype} does not match the network's {dtype}"
                + (
                    "; convert images to float and normalise them first"
                    if not x.is_floating_point()
                    else ""
                )
            )
        rank = _input_rank(self.ann)
        if x.dim() < 2 or x.shape[0] == 0 or (rank is not None and x.dim() != rank):
            want = f"{rank}-D [batch, channels, ...]" if rank else "[batch, ...]"
            raise ValueError(
                f"input must be {want} with a non-empty batch dimension, got shape "
                f"{tuple(x.shape)}"
                + ("; add one with x.unsqueeze(0)" if rank == x.dim() + 1 else "")
            )
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input shape {tuple(x.shape)} does not match the traced model's "
                f"[batch, {', '.join(map(str, self.input_shape))}] (from calibration)"
            )
        check_finite("input", x)

    def forward(
        self, x: torch.Tensor, T: int, max_chunk_bytes: int | None = None, marks=(), on_mark=None
    ) -> torch.Tensor:
        """Readout after every step t = 1..T, [T, batch, ...]; ``on_mark(t)`` runs after each
        step t in ``marks`` (the IF layers' ``spike_count`` then holds the counts up to t)."""
        self.check_input(x, T)
        with self.lock:
            return simulate(self.graph, x, T, max_chunk_bytes, marks, on_mark, self.workspace)

    def stepwise(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Same as ``forward`` by a plain loop over time steps (the reference implementation)."""
        self.check_input(x, T)
        with self.lock:
            return simulate_stepwise(self.graph, x, T)

    def extra_repr(self) -> str:
        return (
            f"shift={self.shift}, neuron={self.neuron}, readout={self.readout}, "
            f"threshold={self.threshold}, "
            f"{len(self.layers)} IF layers"
        )


SIGNED_NOTE = (
    "signed neurons: a neuron may spike -V_th to take back an earlier spike "
    "(spike counts are net; synaptic operations count spikes of both signs)"
)


def _spiking_graph(
    ann: fx.GraphModule,
    v_th: dict[str, float],
    shift: str,
    readout_v_th: float | None,
    signed: bool = False,
) -> fx.GraphModule:
    """``ann``'s graph with each named activation node replaced by IF neurons; shares weights."""
    graph = copy.deepcopy(ann.graph)
    modules = dict(ann.named_modules())
    root = {
        n.target: (modules[n.target] if n.op == "call_module" else getattr(ann, n.target))
        for n in graph.nodes
        if n.op in ("call_module", "get_attr")
    }
    for node in list(graph.nodes):
        if node.name in v_th:
            root[f"neurons.{node.name}"] = IFNeurons(v_th[node.name], shift, signed=signed)
            with graph.inserting_before(node):
                spikes = graph.call_module(f"neurons.{node.name}", (node.args[0],))
            node.replace_all_uses_with(spikes)
            graph.erase_node(node)
        elif node.op == "output" and readout_v_th is not None:
            root[f"neurons.{READOUT_LAYER}"] = IFNeurons(readout_v_th, shift, signed=signed)
            with graph.inserting_before(node):
                spikes = graph.call_module(f"neurons.{READOUT_LAYER}", (node.args[0],))
            node.args = (spikes,)
    if not any(k.startswith("neurons.") for k in root):
        root["neurons"] = nn.Module()  # a network with no activations is linear: no IF layers
    graph.lint()
    return fx.GraphModule(root, graph, "SpikingGraph")


_CONV_RANK = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}


def _input_rank(ann: fx.GraphModule) -> int | None:
    """The input's number of dimensions when the network starts with a convolution (an
    unbatched input would otherwise be taken as a batch), else None."""
    modules = dict(ann.named_modules())
    for node in ann.graph.nodes:
        if node.op == "placeholder":
            for user in node.users:
                if user.op == "call_module" and type(modules[user.target]) in _CONV_RANK:
                    return _CONV_RANK[type(modules[user.target])]
            return None
    return None


def _check_parameters(model: nn.Module, when: str = "") -> None:
    """Every floating parameter and buffer is finite (NaN/inf name the tensor, and when)."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            check_finite(f"parameter '{name}'" + (f" ({when})" if when else ""), t.detach())


def _roles(model: nn.Module, maxpool: str):
    """(traced copy of ``model`` in eval mode, its roles) after the support check."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    _check_parameters(model)
    ann = trace(model)
    roles = classify(ann, maxpool)
    check_supported(roles, dict(ann.named_modules()))
    return ann, roles


def _layers_needing_data(bounds: dict[str, float | None], threshold: str) -> list[str]:
    """The IF layers whose V_th comes from data: all of them unless threshold="activation",
    else the unbounded ReLUs (no bound to use)."""
    return [k for k, b in bounds.items() if threshold != "activation" or b is None]


def needs_calibration(
    model: nn.Module, threshold: str = "activation", readout: str = "current", maxpool: str = "avg"
) -> bool:
    """Whether ``convert(model, threshold=..., readout=...)`` needs calibration data: some layer's
    V_th is measured (threshold "max"/"percentile", or an unbounded ReLU), or the readout spikes."""
    options.choice("threshold", threshold, options.THRESHOLD_MODES)
    options.choice("readout", readout, options.READOUTS)
    _, roles = _roles(model, maxpool)
    bounds = {n.name: r.bound for n, r in roles.items() if r.kind == "neuron"}
    return bool(_layers_needing_data(bounds, threshold)) or readout == "spikes"


def _require_calibration(needs_data: list[str], threshold: str) -> None:
    if threshold != "activation":
        why = f"threshold={threshold!r} measures every layer"
    elif needs_data:
        why = f"layer(s) {needs_data} are unbounded ReLUs with no y_th to use as V_th"
    else:
        why = "readout='spikes' sets the output threshold from the maximum output"
    raise ValueError(
        f"calibration data is required: {why}. Pass calibration=<batches of "
        "inputs>, or train with snnconv.ThresholdReLU and use threshold='activation'."
    )


def _thresholds(ann, bounds, needs_data, calibration, q, notes) -> dict[str, float]:
    """V_th per IF layer: the measured statistic where data decides, else the bound."""
    stats = layer_statistic(ann, needs_data, calibration, q) if needs_data else {}
    v_th = {}
    for name, bound in bounds.items():
        value = stats.get(name, bound)
        if value <= 0:
            fallback = bound or 1.0
            warnings.warn(
                f"layer '{name}' never fired on the calibration data; V_th={fallback:g}",
                stacklevel=3,
            )
            notes.append(
                f"layer '{name}' was silent on the calibration data: V_th set to {fallback:g}"
            )
            value = fallback
        v_th[name] = value
    return v_th


def _readout_threshold(ann, calibration) -> float:
    out = next(n for n in ann.graph.nodes if n.op == "output").args[0]
    value = layer_statistic(ann, [out.name], calibration, 100.0)[out.name]
    if value <= 0:
        raise ValueError(
            "readout='spikes' needs a positive maximum output over the "
            f"calibration data, got {value:g}"
        )
    return value


def _input_shape(calibration) -> tuple[int, ...] | None:
    first = None if calibration is None else next(iter(calibration), None)
    return None if first is None else tuple(batch_input(first).shape[1:])


def _default_shift(ann: fx.GraphModule, notes: list[str]) -> str:
    """shift=None: "membrane" when the model has QCFS activations (their IF form starts at
    V_th/2, Bu et al. 2022), else the paper's "bias"."""
    modules = dict(ann.named_modules())
    if any(isinstance(m, QCFS) for m in modules.values()):
        notes.append("QCFS activations: shift 'membrane' (membranes start at V_th/2)")
        return "membrane"
    return "bias"


def _check_options(threshold: str, shift: str | None, neuron: str, readout: str, maxpool: str):
    options.choice("threshold", threshold, options.THRESHOLD_MODES)
    options.choice("readout", readout, options.READOUTS)
    options.choice("maxpool", maxpool, options.MAXPOOLS)
    options.check_neuron(neuron)
    if shift is not None:
        options.check_shift(shift)


def convert(
    model: nn.Module,
    *,
    calibration: Iterable | torch.Tensor | None = None,
    threshold: str = "activation",
    percentile: float = options.DEFAULT_PERCENTILE,
    shift: str | None = None,
    neuron: str = "if",
    readout: str = "current",
    maxpool: str = "error",
) -> SpikingNetwork:
    """Convert a trained ``model`` into a SpikingNetwork.

    threshold: "activation" takes V_th from each activation's upper bound (ThresholdReLU's y_th,
    QCFS's learnt threshold, ReLU6's 6, clamp's max) without data; unbounded ReLUs then fall back
    to the ``percentile`` of their activations over ``calibration``. "max" / "percentile" use the
    maximum / ``percentile`` (nearest rank, all values) of each layer's activations over the whole
    ``calibration`` set (an iterable of input batches or (inputs, labels) pairs, or one tensor).
    shift: "bias" adds V_th/(2T) to the input current every step, "membrane" starts the membrane
    at V_th/2, "none" neither; None (default): "membrane" for a model with QCFS activations, else
    "bias". neuron: "if" (spikes 0 or V_th) or "signed" (a neuron may also spike -V_th to take
    back a spike it fired too early; see simulation.neuron). readout: "current" averages the last
    layer's current; "spikes" makes the output layer spiking too, with V_th = the maximum output
    over ``calibration``. maxpool: "error" refuses max pooling, "avg" replaces it by average
    pooling (noted).
    """
    _check_options(threshold, shift, neuron, readout, maxpool)
    q = 100.0 if threshold == "max" else options.check_percentile(percentile)
    ann, roles = _roles(model, maxpool)
    bounds = {n.name: r.bound for n, r in roles.items() if r.kind == "neuron"}
    notes = prepare(ann, roles)
    _check_parameters(ann, "after folding BatchNorm")  # e.g. a negative running_var
    shift = _default_shift(ann, notes) if shift is None else shift

    needs_data = _layers_needing_data(bounds, threshold)
    if calibration is None and (needs_data or readout == "spikes"):
        _require_calibration(needs_data, threshold)
    if torch.is_tensor(calibration):
        calibration = [calibration]
    v_th = _thresholds(ann, bounds, needs_data, calibration, q, notes)
    if calibration is not None:  # networks no T will bring close to their ANN (see prepare)
        for note in regime_notes(ann, v_th, batch_input(next(iter(calibration)))):
            notes.append(note)
            warnings.warn(note, stacklevel=2)
    readout_v_th = _readout_threshold(ann, calibration) if readout == "spikes" else None
    graph = _spiking_graph(ann, v_th, shift, readout_v_th, signed=neuron == "signed")
    notes += [SIGNED_NOTE] if neuron == "signed" else []
    return SpikingNetwork(
        ann,
        graph,
        shift=shift,
        neuron=neuron,
        readout=readout,
        threshold=threshold,
        notes=notes,
        input_shape=_input_shape(calibration),
    )
