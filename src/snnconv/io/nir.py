"""Export a converted SNN to NIR (the Neuromorphic Intermediate Representation) and import it back.

An snnconv IF layer (simulation/neuron.py) does, per step t, with I[t] the sum of its inputs:

    v[t] = v[t-1] + I[t] + b,   s[t] = [v[t] >= V_th],   v[t] -= V_th s[t],   output V_th s[t]

with v[0] = V_th/2 (shift "membrane") else 0, and b = V_th/(2T) (shift "bias") else 0. With
``if_form="loop"`` (the default) it is written exactly, with NIR's own nodes (edges into one node
are summed):

    <L>_v      I(r=1)           integrates the sum of every edge into it
    <L>_fire   Threshold(θ)     s = [v > θ]; θ = the largest float32 below V_th, so for float32 v,
                                v > θ is exactly v >= V_th
    <L>_reset  Scale(-V_th)     <L>_fire -> <L>_reset -> <L>_v: the soft reset, fed back
    <L>        Scale(V_th)      the layer's output, spikes of amplitude V_th (L = the layer's name)
    <L>_bias   Conv2d / Affine  zero weights and bias b, reading the input: the constant current b

Shift "membrane" is written with the integrator holding v - V_th/2 (it starts at 0) and
θ = the largest float32 below V_th/2: the same spikes. ``if_form="if"`` writes nir.IF(r=1,
v_threshold=θ, v_reset=0) and puts what nir.IF cannot say (reset by subtraction, V_th, the
initial membrane) in the node's metadata. docs/nir.md says what other tools do with each form.

The other ops become Conv2d (biases kept; grouped convs as dense ones with zero blocks, since
nir 1.0's Conv2d types only fit groups=1), Affine/Linear, AvgPool2d, Flatten (dimensions counted
without the batch), Scale; a residual add is two edges into one node; torch.cat, channel slicing,
strided slicing and zero padding (ResNet's option-A shortcut ``F.pad(x[:, :, ::2, ::2], ...)``)
are fixed convolutions / linear maps with 0/1 weights, exact since x*1 + 0 + ... + 0 = x. The
graph's metadata holds T, the input encoding, the comparator, the reset, the shift and the readout.

``import_nir`` reads such a graph back into a SpikingNetwork: it rebuilds an ANN (torch modules,
ThresholdReLU(V_th) at each IF layer, named as in the file) and converts it, so that a file
snnconv wrote simulates spike for spike as the network it came from.
"""

from __future__ import annotations

import functools
import io
import math
import operator
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv.activations import ThresholdReLU
from snnconv.conversion.convert import SpikingNetwork, convert
from snnconv.conversion.graph import arg, describe
from snnconv.exceptions import CheckpointError, ConversionError, OptionError, SnnconvError
from snnconv.io.checkpoint import atomic_write
from snnconv.options import check_steps, choice
from snnconv.simulation.neuron import IFNeurons

FORMAT = "snnconv-nir-1"
IF_FORMS = ("loop", "if")
INPUT, OUTPUT = "input", "output"
DEFAULT_BIAS_FRACTION = 0.5
READABLE = "IF loops, nir.IF written by snnconv, Conv2d, Affine, Linear, AvgPool2d, Flatten, Scale"
GRAPH_METADATA = {  # the fixed part of every exported graph's metadata
    "format": FORMAT,
    "dt": 1.0,
    "input_encoding": "analog: the input's value is fed, unchanged, as a current at every step",
    "comparator": "v >= V_th, written as v > theta with theta the largest float32 below V_th",
    "reset": "subtract V_th on a spike (soft reset); at most one spike per step; no leak",
    "amplitude": "an IF layer's output is V_th * spike",
    "readout_rule": "the readout after t steps is the mean over steps 1..t of the output node",
}


def _nir():
    """The ``nir`` package, imported only when export or import is called."""
    try:
        import nir
    except ImportError as err:
        raise SnnconvError(
            "NIR export and import need the package nir >= 1.0: pip install 'snnconv[nir]' "
            "(or pip install 'nir>=1.0')"
        ) from err
    return nir


def below(x) -> np.ndarray:
    """The largest float32 below each value of ``x``: for float32 v, v > below(V) iff v >= V."""
    x = np.asarray(x, dtype=np.float32)
    return np.nextafter(x, np.float32(-np.inf), dtype=np.float32)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(a) for a in v)


def _pair2(v) -> tuple[int, int]:
    """An int, a pair or a one-element array (as NIR files hold them) as a pair of ints."""
    flat = np.asarray(v).reshape(-1)
    return _pair(int(flat[0])) if flat.size == 1 else _pair(flat)


def _refuse(node: fx.Node, modules: dict, reason: str) -> ConversionError:
    return ConversionError(
        f"cannot export node '{node.name}' ({describe(node, modules)}) to NIR: {reason}; "
        "nothing was written"
    )


# ---------------------------------------------------------------------------------------------
# Export


MAX_POOL_REASON = (
    "max pooling of spike trains does not keep the rates snnconv's conversion relies on, and NIR "
    "has no max pooling; convert with maxpool='avg' or retrain with average pooling"
)
MAX_POOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)
REFUSED_MODULES = {
    (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d): MAX_POOL_REASON,
    (nn.BatchNorm1d, nn.BatchNorm2d): (
        "batch norm that was not folded into the conv/linear before it; NIR has no batch norm; "
        "place it right after a conv/linear layer (conv -> BN -> activation) so it folds"
    ),
    (nn.Conv1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d): (
        "1-D convolutions and pooling are not exported (NIR has no 1-D pooling)"
    ),
}
MODULE_KINDS = (
    (IFNeurons, "neurons"),
    (nn.Conv2d, "conv"),
    (nn.Linear, "linear"),
    (nn.AvgPool2d, "avgpool"),
    (nn.AdaptiveAvgPool2d, "avgpool"),
    (nn.Flatten, "reshape"),
    (nn.ZeroPad2d, "pad"),
    ((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout), "identity"),
)
FUNCTION_KINDS = {
    **dict.fromkeys((operator.add, operator.iadd, torch.add), "add"),
    **dict.fromkeys((operator.sub, operator.isub, torch.sub), "sub"),
    **dict.fromkeys((operator.neg, torch.neg), "neg"),
    **dict.fromkeys((operator.mul, operator.imul, torch.mul), "mul"),
    **dict.fromkeys((operator.truediv, operator.itruediv, torch.div), "div"),
    **dict.fromkeys((torch.cat, torch.concat), "cat"),
    **dict.fromkeys((torch.flatten, torch.reshape), "reshape"),
    **dict.fromkeys((F.avg_pool2d, F.adaptive_avg_pool2d), "avgpool"),
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout), "identity"),
    operator.getitem: "getitem",
    F.pad: "pad",
}
METHOD_KINDS = {
    **dict.fromkeys(("add", "add_"), "add"),
    **dict.fromkeys(("sub", "sub_"), "sub"),
    "neg": "neg",
    **dict.fromkeys(("mul", "mul_"), "mul"),
    **dict.fromkeys(("div", "div_"), "div"),
    **dict.fromkeys(("flatten", "view", "reshape", "view_as", "reshape_as"), "reshape"),
    "contiguous": "identity",
}


def _kind(node: fx.Node, modules: dict) -> str:
    """What the exporter does with a node: a key of _Exporter's handlers, or "unknown"."""
    if node.op == "call_module":
        m = modules[node.target]
        for classes, reason in REFUSED_MODULES.items():
            if isinstance(m, classes):
                raise _refuse(node, modules, reason)
        return next((kind for cls, kind in MODULE_KINDS if isinstance(m, cls)), "unknown")
    if node.op == "call_function":
        if node.target in MAX_POOL_FUNCTIONS:
            raise _refuse(node, modules, MAX_POOL_REASON)
        return FUNCTION_KINDS.get(node.target, "unknown")
    if node.op == "call_method":
        return METHOD_KINDS.get(node.target, "unknown")
    return node.op


def _values(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> dict[fx.Node, object]:
    """Every node's value for one all-zero input of two samples (IF layers pass their current
    on): tensors give the shapes, other values (sizes) the numbers that reshapes use."""
    modules = dict(gm.named_modules())
    param = next(gm.parameters(), None)
    like = (
        {"dtype": torch.float32}
        if param is None
        else {"dtype": param.dtype, "device": param.device}
    )
    env: dict[fx.Node, object] = {}
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op == "output":
                break
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            if node.op == "placeholder":
                env[node] = torch.zeros((2, *input_shape), **like)
            elif node.op == "get_attr":
                env[node] = functools.reduce(getattr, node.target.split("."), gm)
            elif node.op == "call_module":
                m = modules[node.target]
                env[node] = args[0] if isinstance(m, IFNeurons) else m(*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            else:
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
    return env


def _fit(n_in: int, n_out: int) -> tuple[int, int, int]:
    """(kernel, dilation, padding) of a conv along one dimension that maps n_in to n_out."""
    if n_out == n_in:
        return 1, 1, 0
    if n_out < n_in:
        return 2, n_in - n_out, 0
    pad = (n_out - n_in + 1) // 2
    return (1, 1, pad) if (n_out - n_in) % 2 == 0 else (2, 1, pad)


def _shift_kernel(before: int, after: int) -> tuple[int, int, int]:
    """(kernel size, padding, index of the 1) of a conv that zero-pads ``before``/``after``."""
    pad = max(before, after)
    return 1 + abs(before - after), pad, pad - before


@dataclass
class _Exporter:
    """Builds the NIR nodes and edges of one SpikingNetwork, node by node of its fx graph."""

    nir: object
    snn: SpikingNetwork
    T: int | None
    if_form: str
    nodes: dict = field(default_factory=dict)
    edges: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)  # NIR node name -> shape without the batch
    sums: dict = field(default_factory=dict)  # fx node -> NIR node names whose sum is its value
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.modules = dict(self.snn.graph.named_modules())
        self.taken = set(self.snn.layers) | {INPUT, OUTPUT}

    # -- graph building --------------------------------------------------------------------

    def unique(self, name: str) -> str:
        base, i = re.sub(r"\W", "_", name), 0
        name = base
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def add(self, name: str, node, sources=(), shape=None) -> str:
        """Add ``node`` under ``name`` (already unique), fed by the sum of ``sources``."""
        self.nodes[name] = node
        if shape is not None:
            self.shapes[name] = tuple(shape)
        self.connect(sources, name)
        return name

    def connect(self, sources, dst: str) -> None:
        """Edges from each source to ``dst``; NIR sums them. A source that appears twice goes
        through an identity Scale the second time (NIR has no parallel edges)."""
        seen = {s for s, d in self.edges if d == dst}
        for src in sources:
            if src in seen:
                ones = np.ones(self.shapes[src], dtype=np.float32)
                src = self.add(self.unique(f"{src}_copy"), self.nir.Scale(ones), [src])
            self.edges.append((src, dst))
            seen.add(src)

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.env[node].shape[1:])

    def sources(self, node: fx.Node) -> list[str]:
        if not isinstance(node, fx.Node) or node not in self.sums:
            raise _refuse(node, self.modules, "an argument is not a tensor the graph computes")
        return self.sums[node]

    # -- the walk --------------------------------------------------------------------------

    def run(self, input_shape: tuple[int, ...]):
        gm = self.snn.graph
        try:
            self.env = _values(gm, input_shape)
        except Exception as err:
            raise OptionError(
                f"input_shape {tuple(input_shape)} does not fit the network: {err}"
            ) from err
        for node in gm.graph.nodes:
            if node.op == "output":
                self.output(node)
                break
            kind = _kind(node, self.modules)
            if not torch.is_tensor(self.env[node]):
                continue  # sizes and shapes: read by the reshapes that use them
            handler = getattr(self, f"op_{kind}", None)
            if handler is None:
                raise _refuse(node, self.modules, "no NIR mapping for this op in snnconv")
            self.sums[node] = handler(node)
        return self.nir.NIRGraph(
            nodes=self.nodes, edges=self.edges, metadata=self.metadata(), type_check=True
        )

    def metadata(self) -> dict:
        layers = self.snn.layers
        fractions = {m.bias_fraction for m in layers.values()}
        meta = {
            **GRAPH_METADATA,
            "if_form": self.if_form,
            "shift": self.snn.shift,
            "readout": self.snn.readout,
            "layers": ",".join(layers),
            "bias_fraction": fractions.pop() if len(fractions) == 1 else DEFAULT_BIAS_FRACTION,
            "snnconv_version": _version(),
        }
        if self.T is not None:
            meta["T"] = int(self.T)
        return meta

    def output(self, node: fx.Node) -> None:
        out = node.args[0]
        if not isinstance(out, fx.Node) or out not in self.sums:
            raise _refuse(node, self.modules, "the network must return a single tensor")
        shape = self.shape(out)
        self.add(OUTPUT, self.nir.Output(np.array(shape)), self.sums[out], shape)

    # -- ops -------------------------------------------------------------------------------

    def op_placeholder(self, node: fx.Node) -> list[str]:
        if INPUT in self.nodes:
            raise _refuse(node, self.modules, "NIR export takes a network with one input")
        shape = self.shape(node)
        return [self.add(INPUT, self.nir.Input(np.array(shape)), shape=shape)]

    def op_identity(self, node: fx.Node) -> list[str]:
        return self.sources(node.args[0])

    def op_add(self, node: fx.Node) -> list[str]:
        a, b = node.args[0], arg(node, 1, "other")
        if arg(node, 2, "alpha", 1) != 1 or not all(isinstance(t, fx.Node) for t in (a, b)):
            raise _refuse(node, self.modules, "only the sum of two tensors is a sum of edges")
        return self.sources(a) + self.sources(b)

    def op_neg(self, node: fx.Node) -> list[str]:
        return [self.scale(node, self.sources(node.args[0]), -1.0, {"torch": "neg"})]

    def op_sub(self, node: fx.Node) -> list[str]:
        a, b = node.args[0], arg(node, 1, "other")
        if arg(node, 2, "alpha", 1) != 1 or not all(isinstance(t, fx.Node) for t in (a, b)):
            raise _refuse(node, self.modules, "only the difference of two tensors is exported")
        return self.sources(a) + [self.scale(node, self.sources(b), -1.0, {"torch": "neg"})]

    def number(self, value):
        value = self.env.get(value) if isinstance(value, fx.Node) else value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) and value != 0 else None

    def op_mul(self, node: fx.Node) -> list[str]:
        a, b = node.args[0], arg(node, 1, "other")
        x, c = (a, self.number(b)) if self.number(a) is None else (b, self.number(a))
        if c is None or not torch.is_tensor(self.env.get(x)):
            raise _refuse(node, self.modules, "only scaling by a nonzero constant is linear")
        return [self.scale(node, self.sources(x), c, {"torch": "mul"})]

    def op_div(self, node: fx.Node) -> list[str]:
        c = self.number(arg(node, 1, "other"))
        if c is None or arg(node, 2, "rounding_mode") is not None:
            raise _refuse(node, self.modules, "only division by a nonzero constant is linear")
        meta = {"torch": "div", "divisor": c}  # x / c rounds unlike x * (1/c): the importer divides
        return [self.scale(node, self.sources(node.args[0]), 1.0 / c, meta)]

    def scale(self, node: fx.Node, sources: list[str], c: float, meta: dict) -> str:
        shape = self.shape(node)
        value = np.full(shape, c, dtype=np.float32)
        name = self.unique(node.name)
        return self.add(name, self.nir.Scale(value, metadata=meta), sources, shape)

    def op_conv(self, node: fx.Node) -> list[str]:
        m = self.modules[node.target]
        if m.padding_mode != "zeros" or len(node.args) != 1 or node.kwargs:
            raise _refuse(node, self.modules, "only zero-padded convs of one input are exported")
        padding = _conv_padding(m)
        if padding is None:
            raise _refuse(node, self.modules, "padding='same' with an even kernel is asymmetric")
        weight = _array(m.weight)
        if m.groups > 1:  # nir's Conv2d types assume groups=1: dense, with zero blocks
            weight = _dense(weight, m.groups)
        bias = _array(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
        conv = self.nir.Conv2d(
            input_shape=self.shape(node.args[0])[1:],
            weight=weight,
            stride=_pair(m.stride),
            padding=padding,
            dilation=_pair(m.dilation),
            groups=1,
            bias=bias,
            metadata={"torch": "Conv2d", "groups": m.groups, "has_bias": m.bias is not None},
        )
        name = self.unique(node.name)
        return [self.add(name, conv, self.sources(node.args[0]), self.shape(node))]

    def op_linear(self, node: fx.Node) -> list[str]:
        m = self.modules[node.target]
        if len(self.shape(node)) != 1:
            raise _refuse(node, self.modules, "nn.Linear on a tensor of more than 2 dimensions")
        weight = _array(m.weight)
        layer = (
            self.nir.Affine(weight, _array(m.bias))
            if m.bias is not None
            else self.nir.Linear(weight)
        )
        name = self.unique(node.name)
        return [self.add(name, layer, self.sources(node.args[0]), self.shape(node))]

    def op_avgpool(self, node: fx.Node) -> list[str]:
        x = node.args[0]
        pool = _pool_params(node, self.modules, self.shape(x), self.shape(node))
        if isinstance(pool, str):
            raise _refuse(node, self.modules, pool)
        kernel, stride, padding, meta = pool
        layer = self.nir.AvgPool2d(
            kernel_size=np.array(kernel),
            stride=np.array(stride),
            padding=np.array(padding),
            metadata=meta,
        )
        layer.input_type = {"input": np.array(self.shape(x))}
        layer.output_type = {"output": np.array(self.shape(node))}
        return [self.add(self.unique(node.name), layer, self.sources(x), self.shape(node))]

    def op_reshape(self, node: fx.Node) -> list[str]:
        x = node.args[0]
        before, after = self.shape(x), self.shape(node)
        if before == after:
            return self.sources(x)
        dims = _flatten_dims(before, after)
        if dims is None:
            raise _refuse(node, self.modules, f"a reshape {before} -> {after} is not a flatten")
        layer = self.nir.Flatten(np.array(before), start_dim=dims[0], end_dim=dims[1])
        return [self.add(self.unique(node.name), layer, self.sources(x), after)]

    def op_cat(self, node: fx.Node) -> list[str]:
        tensors, dim = arg(node, 0, "tensors"), arg(node, 1, "dim", 0)
        shape = self.shape(node)
        if dim not in (1, 1 - len(shape) - 1) or len(shape) not in (1, 3):
            raise _refuse(node, self.modules, "only concatenation along channels is exported")
        names, offset = [], 0
        for i, t in enumerate(tensors):
            width = self.shape(t)[0]
            route = np.zeros((shape[0], width), dtype=np.float32)
            route[np.arange(width) + offset, np.arange(width)] = 1.0
            meta = {"torch": "cat", "offset": offset}
            name = self.unique(f"{node.name}_{i}")
            names.append(self.route(name, route, (0, 0), (1, 1), t, shape, meta))
            offset += width
        return names

    def route(self, name, channels, kernel_at, stride, x: fx.Node, shape, meta) -> str:
        """A fixed 0/1 map: channels [out, in] placed at kernel position ``kernel_at`` of a
        (kernel_at + 1)-sized kernel (a shift), with ``stride``; Linear for 1-D tensors."""
        if len(shape) == 1:
            return self.add(name, self.nir.Linear(channels, metadata=meta), self.sources(x), shape)
        kh, kw = kernel_at[0] + 1, kernel_at[1] + 1
        weight = np.zeros((*channels.shape, kh, kw), dtype=np.float32)
        weight[:, :, kernel_at[0], kernel_at[1]] = channels
        return self.conv_node(name, weight, stride, (0, 0), x, shape, meta)

    def conv_node(self, name, weight, stride, padding, x: fx.Node, shape, meta) -> str:
        conv = self.nir.Conv2d(
            input_shape=self.shape(x)[1:],
            weight=weight,
            stride=stride,
            padding=padding,
            dilation=(1, 1),
            groups=1,
            bias=np.zeros(weight.shape[0], np.float32),
            metadata=meta,
        )
        return self.add(name, conv, self.sources(x), shape)

    def op_getitem(self, node: fx.Node) -> list[str]:
        x, shape = node.args[0], self.shape(node)
        found = _slices(node.args[1], self.shape(x))
        if isinstance(found, str):
            raise _refuse(node, self.modules, found)
        channels, starts, steps = found
        meta = {"torch": "getitem"}
        return [self.route(self.unique(node.name), channels, starts, steps, x, shape, meta)]

    def op_pad(self, node: fx.Node) -> list[str]:
        x = node.args[0]
        if node.op == "call_module":
            widths, mode, value = self.modules[node.target].padding, "constant", 0
        else:
            widths = arg(node, 1, "pad")
            mode, value = arg(node, 2, "mode", "constant"), arg(node, 3, "value", None)
        before, after = self.shape(x), self.shape(node)
        found = _pads(widths, before) if mode == "constant" and not value else "not zero padding"
        if len(before) not in (1, 3):
            found = "only padding of [batch, C] or [batch, C, H, W] tensors is exported"
        if isinstance(found, str):
            raise _refuse(node, self.modules, found)
        (cl, cr), (ht, hb), (wl, wr) = found
        channels = np.zeros((after[0], before[0]), dtype=np.float32)
        channels[np.arange(before[0]) + cl, np.arange(before[0])] = 1.0
        if len(before) == 1:
            meta = {"torch": "pad"}
            layer = self.nir.Linear(channels, metadata=meta)
            return [self.add(self.unique(node.name), layer, self.sources(x), after)]
        fused = self.fuse_slice(node, x, channels, (ht, hb, wl, wr))
        if fused is not None:
            return fused
        (kh, ph, ih), (kw, pw, iw) = _shift_kernel(ht, hb), _shift_kernel(wl, wr)
        weight = np.zeros((after[0], before[0], kh, kw), dtype=np.float32)
        weight[:, :, ih, iw] = channels
        meta = {"torch": "pad"}
        return [self.conv_node(self.unique(node.name), weight, (1, 1), (ph, pw), x, after, meta)]

    def fuse_slice(self, node, x, channels, spatial) -> list[str] | None:
        """pad(x[...]) with channel padding only, where the slice feeds nothing else: one conv
        (ResNet's option-A shortcut: a strided 1x1 conv with 0/1 weights)."""
        if any(spatial) or _kind(x, self.modules) != "getitem" or len(x.users) != 1:
            return None
        (old,) = self.sums[x]
        sliced = self.nodes.pop(old)
        weight = np.einsum("om,mikl->oikl", channels, sliced.weight).astype(np.float32)
        name = self.unique(node.name)
        self.edges = [(s, name if d == old else d) for s, d in self.edges]
        del self.sums[x]
        conv = self.nir.Conv2d(
            input_shape=sliced.input_shape,
            weight=weight,
            stride=sliced.stride,
            padding=sliced.padding,
            dilation=(1, 1),
            groups=1,
            bias=np.zeros(weight.shape[0], np.float32),
            metadata={"torch": "getitem+pad"},
        )
        self.nodes[name] = conv
        self.shapes[name] = self.shape(node)
        return [name]

    # -- IF layers -------------------------------------------------------------------------

    def op_neurons(self, node: fx.Node) -> list[str]:
        layer: IFNeurons = self.modules[node.target]
        name, shape = node.target.split(".", 1)[1], self.shape(node)
        v_th = _full(layer.v_th, shape)
        if v_th is None:
            raise _refuse(node, self.modules, f"{layer.v_th.numel()} thresholds do not fit {shape}")
        sources = list(self.sources(node.args[0]))
        if layer.shift == "bias":
            sources.append(self.bias_source(name, layer, shape))
        membrane = layer.shift == "membrane"
        if self.if_form == "if":
            meta = {
                "snnconv": "IF",
                "reset": "subtract",
                "v_th": v_th,
                "v_init": v_th / 2 if membrane else np.zeros_like(v_th),
                "comparator": ">=",
            }
            ones, zeros = np.ones(shape, np.float32), np.zeros(shape, np.float32)
            neuron = self.nir.IF(r=ones, v_threshold=below(v_th), v_reset=zeros, metadata=meta)
            fire = self.add(self.unique(f"{name}_if"), neuron, sources, shape)
        else:
            integrator = self.nir.I(r=np.ones(shape, np.float32))
            v = self.add(self.unique(f"{name}_v"), integrator, sources, shape)
            theta = below(v_th / 2 if membrane else v_th)  # halving a float32 is exact
            fire = self.add(self.unique(f"{name}_fire"), self.nir.Threshold(theta), [v], shape)
            reset = self.add(self.unique(f"{name}_reset"), self.nir.Scale(-v_th), [fire], shape)
            self.connect([reset], v)
        return [self.add(name, self.nir.Scale(v_th.copy()), [fire], shape)]

    def bias_source(self, name: str, layer: IFNeurons, shape) -> str:
        """The constant current b = bias_fraction * V_th / T: zero weights and bias b, reading
        the input (x*0 + b = b for any finite input)."""
        b = layer.v_th.detach().float() * (layer.bias_fraction / self.T)  # IFNeurons.bias
        meta = {"snnconv": "bias", "T": int(self.T), "bias_fraction": layer.bias_fraction}
        in_shape = self.shapes[INPUT]
        source = [INPUT]
        if len(shape) == 1:
            if len(in_shape) != 1:
                flat = self.nir.Flatten(np.array(in_shape), start_dim=0)
                size = (int(np.prod(in_shape)),)
                source = [self.add(self.unique(f"{name}_flat"), flat, source, size)]
            weight = np.zeros((shape[0], int(np.prod(in_shape))), np.float32)
            bias = np.broadcast_to(_array(b), shape).astype(np.float32)
            node = self.nir.Affine(weight, bias, metadata=meta)
            return self.add(self.unique(f"{name}_bias"), node, source, shape)
        if len(shape) != 3 or len(in_shape) != 3:
            raise ConversionError(
                f"cannot export IF layer '{name}' to NIR: shift='bias' needs a constant current "
                f"of shape {shape} from an input of shape {in_shape} (only 3-D or 1-D layers)"
            )
        (kh, dh, ph), (kw, dw, pw) = (_fit(i, o) for i, o in zip(in_shape[1:], shape[1:]))
        conv = self.nir.Conv2d(
            input_shape=in_shape[1:],
            weight=np.zeros((shape[0], in_shape[0], kh, kw), np.float32),
            stride=(1, 1),
            padding=(ph, pw),
            dilation=(dh, dw),
            groups=1,
            bias=np.broadcast_to(_array(b), (shape[0],)).astype(np.float32),
            metadata=meta,
        )
        return self.add(self.unique(f"{name}_bias"), conv, source, shape)


def _version() -> str:
    from snnconv import __version__

    return __version__


def _full(v_th: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray | None:
    """V_th (a scalar or one value per channel) as a float32 array of the layer's shape."""
    v = _array(v_th)
    if v.ndim == 1:
        if not shape or shape[0] != v.size:
            return None
        v = v.reshape(-1, *([1] * (len(shape) - 1)))
    return np.ascontiguousarray(np.broadcast_to(v, shape), dtype=np.float32)


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's weight [out, in/groups, kh, kw] as a dense one with zero blocks."""
    out, per_in = weight.shape[:2]
    dense = np.zeros((out, per_in * groups, *weight.shape[2:]), dtype=np.float32)
    per_out = out // groups
    for g in range(groups):
        rows = slice(g * per_out, (g + 1) * per_out)
        dense[rows, g * per_in : (g + 1) * per_in] = weight[rows]
    return dense


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return _pair(m.padding)


def _pool_params(node: fx.Node, modules: dict, before, after):
    """(kernel, stride, padding, metadata) of an average pooling, or why it has no NIR form."""
    if len(before) != 3:
        return "average pooling of a tensor that is not [batch, C, H, W]"
    if node.op == "call_module":
        m = modules[node.target]
        adaptive = isinstance(m, nn.AdaptiveAvgPool2d)
        p = {k: getattr(m, k, None) for k in ("kernel_size", "stride", "padding", "ceil_mode")}
        p.update(count=getattr(m, "count_include_pad", True), div=getattr(m, "divisor_override", 0))
    else:
        adaptive = node.target is F.adaptive_avg_pool2d
        names = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
        defaults = (None, None, 0, False, True)
        p = {n: arg(node, i + 1, n, d) for i, (n, d) in enumerate(zip(names, defaults))}
        p.update(count=p.pop("count_include_pad"), div=arg(node, 6, "divisor_override"))
    if adaptive:
        if any(b % a for a, b in zip(after[1:], before[1:])):
            return f"adaptive average pooling {before[1:]} -> {after[1:]} has unequal windows"
        kernel = tuple(b // a for a, b in zip(after[1:], before[1:]))
        meta = {"torch": "AdaptiveAvgPool2d", "output_size": np.array(after[1:])}
        return kernel, kernel, (0, 0), meta
    kernel, padding = _pair(p["kernel_size"]), _pair(p["padding"])
    stride = _pair(p["stride"]) if p["stride"] not in (None, []) else kernel
    if p["ceil_mode"] or p["div"] or (any(padding) and not p["count"]):
        return "ceil_mode, divisor_override or count_include_pad=False have no NIR form"
    return kernel, stride, padding, {"torch": "AvgPool2d"}


def _flatten_dims(before: tuple, after: tuple) -> tuple[int, int] | None:
    """(start, end) dims (without the batch; end -1 for the last) of the flatten before -> after."""
    for s in range(len(before)):
        for e in range(s + 1, len(before)):
            merged = before[:s] + (math.prod(before[s : e + 1]),) + before[e + 1 :]
            if merged == after:
                return s, -1 if e == len(before) - 1 else e
    return None


def _slices(index, shape: tuple):
    """x[index] on [batch, *shape] as (channel map [out, in], kernel offsets, strides), or why
    it has no NIR form. Takes ':' on the batch, any slice of channels, x[a::s] spatially."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (len(shape) + 2 - len(index)) + index[at + 1 :]
    index = index + (slice(None),) * (len(shape) + 1 - len(index))
    if len(index) != len(shape) + 1 or not all(isinstance(i, slice) for i in index):
        return "only slices (no integer or tensor indices) of every dimension are exported"
    if index[0] != slice(None) or len(shape) not in (1, 3):
        return "only slices of channels and of H, W of a [batch, C(, H, W)] tensor are exported"
    picked = range(shape[0])[index[1]]
    channels = np.zeros((len(picked), shape[0]), dtype=np.float32)
    channels[np.arange(len(picked)), list(picked)] = 1.0
    starts, steps = [], []
    for s, n in zip(index[2:], shape[1:]):
        start, step = s.start or 0, s.step or 1
        if start < 0 or step < 1 or (s.stop is not None and s.stop < n):
            return "spatial slices must be x[a::s] with a >= 0 (no end, no negative index)"
        starts.append(start)
        steps.append(step)
    return channels, tuple(starts) or (0, 0), tuple(steps) or (1, 1)


def _pads(widths, shape: tuple):
    """F.pad widths on [batch, *shape] as ((c before, after), (h ...), (w ...)), or why not."""
    widths = list(widths)
    if len(widths) % 2 or len(widths) > 2 * len(shape) or min(widths, default=0) < 0:
        return "only zero padding (no cropping) of channels and H, W is exported"
    pairs = [tuple(widths[i : i + 2]) for i in range(0, len(widths), 2)][::-1]  # first dim first
    pairs = [(0, 0)] * (len(shape) - len(pairs)) + pairs
    return tuple(pairs) + ((0, 0),) * (3 - len(pairs))


def _write(nir, graph, path) -> None:
    """The graph into ``path``, atomically: serialised in memory first, then renamed in place."""
    buf = io.BytesIO()
    nir.write(buf, graph)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def export_nir(
    snn: SpikingNetwork,
    path: str | os.PathLike | None = None,
    *,
    T: int | None = None,
    if_form: str = "loop",
    input_shape: tuple[int, ...] | None = None,
):
    """``snn`` as a ``nir.NIRGraph``; also written to ``path`` (atomically) when given.

    T: the number of steps the file is for, recorded in the metadata; required for shift="bias",
    whose constant current V_th/(2T) depends on it. if_form: "loop" (exact: I, Threshold and a
    Scale(-V_th) fed back) or "if" (nir.IF plus metadata; see the module docstring).
    input_shape: one sample's shape, e.g. (3, 32, 32); defaults to ``snn.input_shape`` (known
    when the network was converted with calibration data). Anything NIR cannot represent raises
    ConversionError naming the node, before any file is touched.
    """
    nir = _nir()
    if not isinstance(snn, SpikingNetwork):
        raise OptionError(f"export_nir takes a SpikingNetwork, got {type(snn).__name__}")
    choice("if_form", if_form, IF_FORMS)
    if T is not None:
        check_steps(T)
    shape = input_shape if input_shape is not None else snn.input_shape
    if shape is None:
        raise OptionError(
            "input_shape is needed (one sample's shape, e.g. (3, 32, 32)): this network was "
            "converted without calibration data, so its input shape is unknown"
        )
    signed = [k for k, m in snn.layers.items() if m.signed]
    if signed:
        raise ConversionError(
            f"cannot export IF layer '{signed[0]}' to NIR: it has signed neurons (a spike of "
            "-V_th when the membrane falls below 0 and the net count is positive), and NIR has "
            "no node that keeps a spike count; convert with neuron='if'. Nothing was written"
        )
    shifted = [k for k, m in snn.layers.items() if m.shift == "bias"]
    if shifted and T is None:
        raise OptionError(
            f"T is needed: shift='bias' adds V_th/(2T) to the current of layers {shifted}, "
            "and the file holds that constant for one T"
        )
    exporter = _Exporter(nir, snn, T, if_form)
    try:
        graph = exporter.run(tuple(int(s) for s in shape))
    except (ValueError, AssertionError) as err:
        if isinstance(err, SnnconvError):
            raise
        raise ConversionError(
            f"the NIR graph does not type-check: {err}; nothing was written"
        ) from err
    if path is not None:
        _write(nir, graph, path)
    return graph


# ---------------------------------------------------------------------------------------------
# Import


@dataclass
class _Neuron:
    """One IF layer found in a NIR graph: its output node ``name``, the nodes it absorbs, the
    nodes whose sum is its current (in edge order), V_th (the layer's full shape) and shift."""

    name: str
    v_th: np.ndarray
    shift: str
    inputs: list[str]
    members: set[str]
    bias_fraction: float = DEFAULT_BIAS_FRACTION
    T: int | None = None


def _bad(name: str, node, reason: str) -> ConversionError:
    return ConversionError(f"cannot import NIR node '{name}' ({type(node).__name__}): {reason}")


def _read(nir, graph_or_path):
    """(NIRGraph, where it came from) for a graph or the path of a .nir file."""
    if isinstance(graph_or_path, nir.NIRGraph):
        return graph_or_path, "a NIRGraph"
    if not isinstance(graph_or_path, (str, os.PathLike)):
        raise OptionError(
            f"import_nir takes a nir.NIRGraph or a path, got {type(graph_or_path).__name__}"
        )
    path = os.fspath(graph_or_path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no NIR file {path!r}")
    try:
        return nir.read(path), path
    except Exception as err:  # h5py and nir raise many types; all mean "not a NIR file we read"
        raise CheckpointError(f"cannot read NIR file {path!r}: {err}") from err


def _links(graph) -> tuple[dict, dict]:
    """(sources of each node, destinations of each node), both in edge order."""
    ins: dict[str, list[str]] = {k: [] for k in graph.nodes}
    outs: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for src, dst in graph.edges:
        ins[dst].append(src)
        outs[src].append(dst)
    return ins, outs


def _same(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _scale_out(nir, graph, name: str, outs: dict, v_th) -> str:
    """The one node an IF layer's spikes go to: Scale(V_th), the layer's output."""
    dests = outs[name]
    if len(dests) != 1 or not isinstance(graph.nodes[dests[0]], nir.Scale):
        raise _bad(name, graph.nodes[name], "its spikes must go to one Scale(V_th) only")
    if not _same(graph.nodes[dests[0]].scale, v_th):
        raise _bad(dests[0], graph.nodes[dests[0]], "spike amplitude differs from V_th")
    return dests[0]


def _is_bias(nir, graph, name: str, outs: dict, target: str) -> bool:
    """A constant current: a Conv2d/Affine with all-zero weights whose only reader is ``target``."""
    node = graph.nodes[name]
    return (
        isinstance(node, (nir.Conv2d, nir.Affine))
        and outs[name] == [target]
        and not np.any(node.weight)
        and bool(np.any(node.bias))
    )


def _bias_value(node, shape) -> np.ndarray:
    bias = np.asarray(node.bias, np.float32)
    if len(shape) > 1:
        bias = bias.reshape(-1, *([1] * (len(shape) - 1)))
    return np.broadcast_to(bias, shape)


def _add_bias(neuron: _Neuron, nir, graph, ins: dict, outs: dict, target: str) -> None:
    """Take the constant-current sources of ``target`` (the integrator) into ``neuron``: its
    shift becomes "bias", checked to be bias_fraction * V_th / T exactly."""
    found = [s for s in ins[target] if _is_bias(nir, graph, s, outs, target)]
    if not found:
        return
    node = graph.nodes[found[0]]
    if len(found) > 1 or neuron.shift != "none":
        raise _bad(target, graph.nodes[target], "more than one shift (constant currents, V_th/2)")
    meta = {**graph.metadata, **node.metadata}
    frac = float(meta.get("bias_fraction", DEFAULT_BIAS_FRACTION))
    b = _bias_value(node, neuron.v_th.shape)
    T = int(meta["T"]) if "T" in meta else round(frac * float(neuron.v_th.flat[0] / b.flat[0]))
    expect = _array(torch.from_numpy(neuron.v_th) * (frac / max(T, 1)))
    if T < 1 or not _same(b, expect):
        raise _bad(found[0], node, f"its constant current is not {frac:g} * V_th / T for T={T}")
    neuron.inputs = [s for s in neuron.inputs if s != found[0]]
    neuron.members.add(found[0])
    neuron.shift, neuron.bias_fraction, neuron.T = "bias", frac, T


def _loop_neurons(nir, graph, ins: dict, outs: dict) -> dict[str, _Neuron]:
    """IF layers written as I -> Threshold -> Scale(-V_th) -> back into I."""
    found = {}
    for fire, node in graph.nodes.items():
        if not isinstance(node, nir.Threshold):
            continue
        src = ins[fire]
        if len(src) != 1 or not isinstance(graph.nodes[src[0]], nir.I):
            raise _bad(fire, node, "a Threshold must read one integrator I (an IF loop)")
        v = src[0]
        resets = [d for d in outs[fire] if outs[d] == [v] and isinstance(graph.nodes[d], nir.Scale)]
        if len(resets) != 1 or len(outs[fire]) != 2:
            raise _bad(fire, node, "an IF loop feeds one Scale(-V_th) back and one Scale(V_th) out")
        reset = resets[0]
        v_th = -np.asarray(graph.nodes[reset].scale, np.float32)
        amp = _scale_out(nir, graph, fire, {fire: [d for d in outs[fire] if d != reset]}, v_th)
        if not np.all(np.asarray(graph.nodes[v].r) == 1):
            raise _bad(v, graph.nodes[v], "the integrator's r must be 1")
        theta = np.asarray(node.threshold, np.float32)
        shifts = {"none": below(v_th), "membrane": below(v_th / 2)}
        shift = next((k for k, t in shifts.items() if _same(theta, t)), None)
        if shift is None:
            raise _bad(fire, node, "threshold is neither just below V_th nor just below V_th/2")
        inputs = [s for s in ins[v] if s != reset]
        neuron = _Neuron(amp, v_th, shift, inputs, {v, fire, reset, amp})
        _add_bias(neuron, nir, graph, ins, outs, v)
        found[amp] = neuron
    return found


def _if_neurons(nir, graph, ins: dict, outs: dict) -> dict[str, _Neuron]:
    """IF layers written as nir.IF with snnconv's metadata (reset by subtraction, V_th, v_init)."""
    found = {}
    for name, node in graph.nodes.items():
        if not isinstance(node, nir.IF):
            continue
        meta = node.metadata
        if meta.get("reset") != "subtract" or "v_th" not in meta:
            raise _bad(
                name,
                node,
                "nir.IF resets to v_reset, snnconv's IF neurons by subtracting V_th; only nir.IF "
                "nodes whose metadata says reset='subtract' and gives v_th (as snnconv writes "
                "them) are read",
            )
        v_th = np.asarray(meta["v_th"], np.float32)
        v_init = np.asarray(meta.get("v_init", 0.0), np.float32)
        if not _same(node.v_threshold, below(v_th)):
            raise _bad(name, node, "v_threshold is not just below the metadata's v_th")
        if np.any(v_init) and not _same(v_init, v_th / 2):
            raise _bad(name, node, "the initial membrane is neither 0 nor V_th/2")
        amp = _scale_out(nir, graph, name, outs, v_th)
        shift = "membrane" if np.any(v_init) else "none"
        neuron = _Neuron(amp, v_th, shift, list(ins[name]), {name, amp})
        _add_bias(neuron, nir, graph, ins, outs, name)
        found[amp] = neuron
    return found


def _order(output: str, preds) -> list[str]:
    """The nodes the output depends on, each after its inputs (iterative depth-first search)."""
    done, order, active = set(), [], set()
    stack = [(output, False)]
    while stack:
        name, expanded = stack.pop()
        if expanded:
            active.discard(name)
            done.add(name)
            order.append(name)
            continue
        if name in done:
            continue
        if name in active:
            raise ConversionError(
                f"cannot import NIR graph: a cycle through '{name}' that is not an IF loop"
            )
        active.add(name)
        stack.append((name, True))
        stack.extend((p, False) for p in reversed(preds(name)) if p not in done)
    return order


def _regroup(weight: np.ndarray, groups: int) -> np.ndarray | None:
    """A dense weight with zero blocks back to a grouped one (None unless the blocks are zero)."""
    out, dense_in = weight.shape[:2]
    if out % groups or dense_in % groups:
        return None
    per_out, per_in = out // groups, dense_in // groups
    grouped = np.concatenate(
        [
            weight[g * per_out : (g + 1) * per_out, g * per_in : (g + 1) * per_in]
            for g in range(groups)
        ]
    )
    return grouped if np.array_equal(_dense(grouped, groups), weight) else None


def _conv_module(name: str, node) -> nn.Conv2d:
    weight = np.asarray(node.weight, np.float32)
    groups = int(node.groups)
    wanted = int(node.metadata.get("groups", 1))
    if groups == 1 and wanted > 1:
        grouped = _regroup(weight, wanted)
        weight, groups = (weight, 1) if grouped is None else (grouped, wanted)
    padding = node.padding if isinstance(node.padding, str) else _pair(node.padding)
    bias = np.asarray(node.bias, np.float32)
    has_bias = bool(node.metadata.get("has_bias", True)) or bool(np.any(bias))
    m = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        tuple(weight.shape[2:]),
        stride=_pair(node.stride),
        padding=padding,
        dilation=_pair(node.dilation),
        groups=groups,
        bias=has_bias,
    )
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(weight))
        if has_bias:
            m.bias.copy_(torch.from_numpy(bias))
    return m


def _linear_module(node, bias) -> nn.Linear:
    weight = np.asarray(node.weight, np.float32)
    m = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(weight))
        if bias is not None:
            m.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
    return m


def _pool_module(node) -> nn.Module:
    kernel, stride, padding = (_pair2(v) for v in (node.kernel_size, node.stride, node.padding))
    size = node.metadata.get("output_size")
    shape = (node.input_type or {}).get("input")
    if node.metadata.get("torch") == "AdaptiveAvgPool2d" and size is not None and shape is not None:
        size = _pair(np.asarray(size).reshape(-1))
        if (
            kernel == stride
            and not any(padding)
            and all(k * o == int(n) for k, o, n in zip(kernel, size, shape[1:]))
        ):
            return nn.AdaptiveAvgPool2d(size)  # rounds as the source network did
    return nn.AvgPool2d(kernel, stride, padding)


def _scale(nir, graph, name: str, node, x: fx.Node, g: fx.Graph) -> fx.Node:
    values = np.unique(np.asarray(node.scale, np.float32))
    if values.size != 1:
        raise _bad(name, node, "a Scale by different values per neuron has no snnconv form")
    divisor = node.metadata.get("divisor")
    if node.metadata.get("torch") == "div" and divisor is not None:
        if _same(np.float32(1.0 / float(divisor)), values[0]):
            return g.call_function(operator.truediv, (x, float(divisor)))
    return g.call_function(operator.mul, (x, float(values[0])))


@dataclass
class _Rebuild:
    """Builds the ANN (an fx.GraphModule) a NIR graph describes, IF layers as ThresholdReLU."""

    nir: object
    graph: object
    neurons: dict
    ins: dict
    root: nn.Module = field(default_factory=nn.Module)
    g: fx.Graph = field(default_factory=fx.Graph)

    def preds(self, name: str) -> list[str]:
        found = self.neurons[name].inputs if name in self.neurons else self.ins[name]
        inside = {m for n in self.neurons.values() for m in n.members} - set(self.neurons)
        for p in found:
            if p in inside:
                raise _bad(name, self.graph.nodes[name], f"it reads '{p}', inside an IF layer")
        return found

    def module(self, name: str, m: nn.Module, x: fx.Node) -> fx.Node:
        attr = re.sub(r"\W", "_", name)
        attr = attr if attr.isidentifier() else f"_{attr}"
        while hasattr(self.root, attr) or attr in ("training", "forward", "graph", "code"):
            attr += "_"
        self.root.add_module(attr, m)
        return self.g.call_module(attr, (x,))

    def emit(self, name: str, x: fx.Node | None) -> fx.Node | None:
        nir, node = self.nir, self.graph.nodes.get(name)
        if name in self.neurons:
            v_th = self.neurons[name].v_th
            return self.module(name, ThresholdReLU(float(v_th.max())), x)
        if isinstance(node, nir.Input):
            return self.g.placeholder("x")
        if x is None:
            raise _bad(name, node, "nothing feeds it")
        if isinstance(node, nir.Output):
            return self.g.output(x)
        if isinstance(node, nir.Conv2d):
            return self.module(name, _conv_module(name, node), x)
        if isinstance(node, nir.Affine):
            return self.module(name, _linear_module(node, node.bias), x)
        if isinstance(node, nir.Linear):
            return self.module(name, _linear_module(node, None), x)
        if isinstance(node, nir.AvgPool2d):
            return self.module(name, _pool_module(node), x)
        if isinstance(node, nir.Flatten):
            start, end = int(node.start_dim), int(node.end_dim)  # NIR counts without the batch
            return self.module(name, nn.Flatten(start + 1, end + 1 if end >= 0 else end), x)
        if isinstance(node, nir.Scale):
            return _scale(nir, self.graph, name, node, x, self.g)
        raise _bad(name, node, f"no snnconv equivalent (snnconv reads {READABLE})")

    def run(self) -> fx.GraphModule:
        nodes = self.graph.nodes
        outputs = [k for k, n in nodes.items() if isinstance(n, self.nir.Output)]
        inputs = [k for k, n in nodes.items() if isinstance(n, self.nir.Input)]
        if len(outputs) != 1 or len(inputs) != 1:
            raise ConversionError(
                f"cannot import NIR graph: snnconv takes one Input and one Output node, found "
                f"{len(inputs)} and {len(outputs)}"
            )
        env: dict[str, fx.Node] = {}
        for name in _order(outputs[0], self.preds):
            terms = [env[p] for p in self.preds(name)]
            x = terms[0] if terms else None
            for t in terms[1:]:  # the edges into a node, summed in edge order
                x = self.g.call_function(operator.add, (x, t))
            env[name] = self.emit(name, x)
        return fx.GraphModule(self.root, self.g, "NIRNetwork")


def _layer_v_th(neuron: _Neuron) -> torch.Tensor:
    """A layer's V_th as snnconv holds it: a scalar, or one value per channel."""
    v = neuron.v_th
    if v.size and np.all(v == v.flat[0]):
        return torch.tensor(float(v.flat[0]))
    per_channel = v.reshape(v.shape[0], -1)[:, 0] if v.ndim else v
    if v.ndim and _same(np.broadcast_to(per_channel.reshape(-1, *[1] * (v.ndim - 1)), v.shape), v):
        return torch.from_numpy(per_channel.copy())
    raise ConversionError(
        f"cannot import IF layer '{neuron.name}': its thresholds differ within a channel "
        "(snnconv holds one V_th per layer or per channel)"
    )


def import_nir(graph_or_path) -> SpikingNetwork:
    """A SpikingNetwork from a NIR graph (or a .nir file) that snnconv's ``export_nir`` wrote:
    same layers (by name), thresholds, shift and readout, so that it simulates spike for spike
    as the network exported. IF layers are read in either form (I/Threshold/Scale loops, or
    nir.IF with snnconv's metadata); anything without an snnconv equivalent raises
    ConversionError naming the node."""
    nir = _nir()
    graph, source = _read(nir, graph_or_path)
    ins, outs = _links(graph)
    neurons = {**_loop_neurons(nir, graph, ins, outs), **_if_neurons(nir, graph, ins, outs)}
    meta = graph.metadata or {}
    shifts = {n.shift for n in neurons.values()} or {str(meta.get("shift", "none"))}
    if len(shifts) != 1:
        raise ConversionError(f"cannot import NIR graph: layers with different shifts {shifts}")
    gm = _Rebuild(nir, graph, neurons, ins).run()
    snn = convert(gm, shift=shifts.pop())
    for name, neuron in neurons.items():
        layer = snn.layers[name]
        layer.v_th = _layer_v_th(neuron).to(layer.v_th.dtype)
        layer.bias_fraction = neuron.bias_fraction
    (shape,) = graph.input_type.values()
    snn.input_shape = tuple(int(s) for s in shape)
    if meta.get("readout") in ("current", "spikes"):
        snn.readout = str(meta["readout"])
    steps = {n.T for n in neurons.values() if n.T is not None} | (
        {int(meta["T"])} if "T" in meta else set()
    )
    snn.notes.append(
        f"imported from NIR ({source}); written for T={sorted(steps)}"
        if steps
        else f"imported from NIR ({source})"
    )
    return snn
