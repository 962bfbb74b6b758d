"""ANN -> SNN conversion (Deng & Gu 2021): copy the weights, turn every ReLU-like activation
clip(x, 0, a) into a layer of IF neurons with V_th = a (threshold balancing), add the shift.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import fx, nn

from snnconv.conversion.graph import ConversionError, check_supported, classify, trace
from snnconv.conversion.prepare import prepare
from snnconv.conversion.thresholds import batch_input, layer_statistic
from snnconv.simulation.neuron import IFNeurons, check_finite, check_shift
from snnconv.simulation.executor import simulate
from snnconv.simulation.stepwise import simulate_stepwise

THRESHOLDS = ("activation", "max", "percentile")
READOUTS = ("current", "spikes")
MAXPOOLS = ("error", "avg")
READOUT_LAYER = "readout"


class SpikingNetwork(nn.Module):
    """A converted network. ``snn(x, T)`` -> readout after every step, [T, batch, ...].

    Attributes: ``ann`` (the inference-form ANN the SNN mirrors: BN folded, dropout removed),
    ``graph`` (the SNN: ``ann``'s graph with IF layers in place of activations, sharing its
    weights), ``layers`` (IF layers by the name of the activation node they replace), ``shift``,
    ``readout``, ``threshold``, ``notes`` (what conversion changed), ``workspace`` (output
    buffers kept from the last simulation for the next, at most about its chunk's bytes;
    ``snn.workspace.clear()`` frees them; never saved or copied).
    """

    def __init__(
        self,
        ann: fx.GraphModule,
        graph: fx.GraphModule,
        *,
        shift: str,
        readout: str,
        threshold: str,
        notes: list[str],
        input_shape: tuple[int, ...] | None,
    ):
        super().__init__()
        self.ann, self.graph = ann, graph
        self.shift, self.readout, self.threshold = shift, readout, threshold
        self.notes, self.input_shape = list(notes), input_shape
        self.workspace: dict[str, torch.Tensor] = {}

    def __getstate__(self):
        return {**self.__dict__, "workspace": {}}  # buffers are scratch: not pickled or deep-copied

    @property
    def layers(self) -> dict[str, IFNeurons]:
        return dict(self.graph.neurons.named_children())

    @property
    def thresholds(self) -> dict[str, float | list[float]]:
        return {k: m.v_th.tolist() for k, m in self.layers.items()}

    def set_shift(self, shift: str) -> None:
        """Switch every IF layer to shift "bias", "membrane" or "none"."""
        self.shift = check_shift(shift)
        for m in self.layers.values():
            m.shift = shift

    def check_input(self, x: torch.Tensor, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"T must be an integer >= 1, got {steps!r}")
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
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"input must have a non-empty batch dimension, got {tuple(x.shape)}")
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
        return simulate(self.graph, x, T, max_chunk_bytes, marks, on_mark, self.workspace)

    def stepwise(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Same as ``forward`` by a plain loop over time steps (the reference implementation)."""
        self.check_input(x, T)
        return simulate_stepwise(self.graph, x, T)

    def extra_repr(self) -> str:
        return (
            f"shift={self.shift}, readout={self.readout}, threshold={self.threshold}, "
            f"{len(self.layers)} IF layers"
        )


def _spiking_graph(
    ann: fx.GraphModule, v_th: dict[str, float], shift: str, readout_v_th: float | None
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
            root[f"neurons.{node.name}"] = IFNeurons(v_th[node.name], shift)
            with graph.inserting_before(node):
                spikes = graph.call_module(f"neurons.{node.name}", (node.args[0],))
            node.replace_all_uses_with(spikes)
            graph.erase_node(node)
        elif node.op == "output" and readout_v_th is not None:
            root[f"neurons.{READOUT_LAYER}"] = IFNeurons(readout_v_th, shift)
            with graph.inserting_before(node):
                spikes = graph.call_module(f"neurons.{READOUT_LAYER}", (node.args[0],))
            node.args = (spikes,)
    if not any(k.startswith("neurons.") for k in root):
        root["neurons"] = nn.Module()  # a network with no activations is linear: no IF layers
    graph.lint()
    return fx.GraphModule(root, graph, "SpikingGraph")


def _check_parameters(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point():
            check_finite(f"parameter '{name}'", t.detach())


def convert(
    model: nn.Module,
    *,
    calibration: Iterable | torch.Tensor | None = None,
    threshold: str = "activation",
    percentile: float = 99.99,
    shift: str = "bias",
    readout: str = "current",
    maxpool: str = "error",
) -> SpikingNetwork:
    """Convert a trained ``model`` into a SpikingNetwork.

    threshold: "activation" takes V_th from each activation's upper bound (ThresholdReLU's y_th,
    ReLU6's 6, clamp's max) without data; unbounded ReLUs then fall back to the ``percentile`` of
    their activations over ``calibration``. "max" / "percentile" use the maximum / ``percentile``
    (nearest rank, all values) of each layer's activations over the whole ``calibration`` set
    (an iterable of input batches or (inputs, labels) pairs, or one tensor).
    shift: "bias" adds V_th/(2T) to the input current every step, "membrane" starts the membrane
    at V_th/2, "none" neither. readout: "current" averages the last layer's current; "spikes" makes
    the output layer spiking too, with V_th = the maximum output over ``calibration``.
    maxpool: "error" refuses max pooling, "avg" replaces it by average pooling (noted).
    """
    for name, value, allowed in (
        ("threshold", threshold, THRESHOLDS),
        ("readout", readout, READOUTS),
        ("maxpool", maxpool, MAXPOOLS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    check_shift(shift)
    if not 0 < float(percentile) <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    _check_parameters(model)
    ann = trace(model)
    roles = classify(ann, maxpool)
    check_supported(roles, dict(ann.named_modules()))
    bounds = {n.name: r.bound for n, r in roles.items() if r.kind == "neuron"}
    notes = prepare(ann, roles)

    needs_data = [k for k, b in bounds.items() if threshold != "activation" or b is None]
    if calibration is None and (needs_data or readout == "spikes"):
        why = (
            f"threshold={threshold!r} measures every layer"
            if threshold != "activation"
            else f"layer(s) {needs_data} are unbounded ReLUs with no y_th to use as V_th"
        )
        if not needs_data:
            why = "readout='spikes' sets the output threshold from the maximum output"
        raise ValueError(
            f"calibration data is required: {why}. Pass calibration=<batches of "
            "inputs>, or train with snnconv.ThresholdReLU and use "
            "threshold='activation'."
        )
    if torch.is_tensor(calibration):
        calibration = [calibration]
    q = 100.0 if threshold == "max" else float(percentile)
    stats = layer_statistic(ann, needs_data, calibration, q) if needs_data else {}
    v_th = {}
    for name, bound in bounds.items():
        value = stats.get(name, bound)
        if value <= 0:
            fallback = bound or 1.0
            warnings.warn(f"layer '{name}' never fired on the calibration data; V_th={fallback:g}")
            notes.append(
                f"layer '{name}' was silent on the calibration data: V_th set to {fallback:g}"
            )
            value = fallback
        v_th[name] = value
    readout_v_th = None
    if readout == "spikes":
        out = next(n for n in ann.graph.nodes if n.op == "output").args[0]
        readout_v_th = layer_statistic(ann, [out.name], calibration, 100.0)[out.name]
        if readout_v_th <= 0:
            raise ValueError(
                "readout='spikes' needs a positive maximum output over the "
                f"calibration data, got {readout_v_th:g}"
            )
    input_shape = None
    if calibration is not None:
        first = next(iter(calibration), None)
        if first is not None:
            input_shape = tuple(batch_input(first).shape[1:])
    graph = _spiking_graph(ann, v_th, shift, readout_v_th)
    return SpikingNetwork(
        ann,
        graph,
        shift=shift,
        readout=readout,
        threshold=threshold,
        notes=notes,
        input_shape=input_shape,
    )
