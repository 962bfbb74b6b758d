"""Trace a model with torch.fx and say how each node is handled in the SNN.

Invariant behind the rules: an SNN simulated with time folded into the batch is exact only if every
node other than an activation is *linear* in its tensor inputs (so it commutes with averaging over
time) and keeps samples apart (it never mixes entries along dimension 0).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv import options
from snnconv.activations import QCFS, ThresholdReLU
from snnconv.exceptions import ConversionError


class SnnTracer(fx.Tracer):
    """The default fx tracer, keeping ThresholdReLU and QCFS as one leaf node each."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (ThresholdReLU, QCFS)) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; tracing failures become ConversionError."""
    if not isinstance(model, nn.Module):
        raise ConversionError(f"expected a torch.nn.Module, got {type(model).__name__}")
    try:
        graph = SnnTracer().trace(model)
    except Exception as err:  # fx raises many types; all mean "not traceable"
        raise ConversionError(
            f"torch.fx could not trace {type(model).__name__}: {err}. Conversion needs a model "
            "whose forward has no data-dependent Python control flow; move such logic out of "
            "forward()."
        ) from err
    return fx.GraphModule(model, graph, model.__class__.__name__)


@dataclass(frozen=True)
class Role:
    """How one fx node is handled.

    kind: "input" | "output" | "constant" | "neuron" | "linear" | "meta" | "folded" | "removed" |
    "approximated" | "unsupported". ``bound`` is the activation's upper bound for neurons
    (None: unbounded ReLU, needs calibration data).
    """

    kind: str
    detail: str
    bound: float | None = None


def _nn(*names: str) -> tuple[type, ...]:
    """The torch.nn classes of these names that this torch version has."""
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


PADS = _nn(
    *(
        f"{kind}Pad{d}d"
        for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
        for d in (1, 2, 3)
    )
)
LINEAR_MODULES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Upsample,  # and its subclasses UpsamplingNearest2d, UpsamplingBilinear2d
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Fold,
    nn.Unfold,
    nn.Flatten,
    nn.Unflatten,
    *PADS,
)
FOLDABLE = {
    nn.BatchNorm1d: (nn.Conv1d, nn.ConvTranspose1d, nn.Linear),
    nn.BatchNorm2d: (nn.Conv2d, nn.ConvTranspose2d),
    nn.BatchNorm3d: (nn.Conv3d, nn.ConvTranspose3d),
}
REMOVED_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
)
MAX_POOLS = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.MaxPool3d: nn.AvgPool3d,
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d,
}
MAX_POOL_FUNCTIONS = {
    F.max_pool1d: F.avg_pool1d,
    F.max_pool2d: F.avg_pool2d,
    F.max_pool3d: F.avg_pool3d,
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
    F.adaptive_max_pool3d: F.adaptive_avg_pool3d,
}
ADAPTIVE_MAX_POOL_FUNCTIONS = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
TUPLE_MODULES = (nn.MultiheadAttention, nn.RNNBase, nn.LSTMCell)

RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_, F.relu_)
CLAMP_FUNCTIONS = (torch.clamp, torch.clip, torch.clamp_)
ADD_FUNCTIONS = (
    operator.add,
    operator.iadd,
    torch.add,
    operator.sub,
    operator.isub,
    torch.sub,
    operator.neg,
    torch.neg,
)
ADD_METHODS = ("add", "add_", "sub", "sub_", "neg")
SCALE_FUNCTIONS = (
    operator.mul,
    operator.imul,
    torch.mul,
    operator.truediv,
    operator.itruediv,
    torch.div,
)
SCALE_METHODS = ("mul", "mul_", "div", "div_")
DIVISIONS = (operator.truediv, operator.itruediv, torch.div, "div", "div_")
LINEAR_FUNCTIONS = (
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.linear,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.interpolate,  # every mode weighs input pixels by fixed coefficients: linear
    F.upsample,
    F.upsample_nearest,
    F.upsample_bilinear,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    F.channel_shuffle,
    F.fold,
    F.unfold,
    torch.reshape,
)
DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
META_METHODS = ("size", "dim")
LINEAR_METHODS = ("view", "reshape", "contiguous", "view_as", "reshape_as")
# ops that take a dim (checked: never 0); the split family returns a tuple of pieces
SPLIT_METHODS = ("chunk", "split", "split_with_sizes", "tensor_split", "unbind")
SPLIT_FUNCTIONS = (torch.chunk, torch.split, torch.tensor_split, torch.unbind)
DIM_METHODS = ("flatten", "mean", "sum", "permute", "transpose", "squeeze", "unsqueeze")
DIM_METHODS += SPLIT_METHODS
DIM_FUNCTIONS = (
    torch.flatten,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.mean,
    torch.sum,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
) + SPLIT_FUNCTIONS
RELU_METHODS = ("relu", "relu_")
CLAMP_METHODS = ("clamp", "clamp_", "clip", "clip_")

# Ops that are not linear, with the reason (instead of calling them "not ReLU-like").
WHY_ATTENTION = (
    "it is not linear: attention multiplies activations (queries by keys, attention weights by "
    "values), and the product of two spike rates is not carried by any IF layer"
)
WHY_NORM = "it is not linear: it divides each sample by a statistic of its own activations"
NOT_LINEAR_MODULES = {
    _nn(
        "MultiheadAttention",
        "Transformer",
        "TransformerEncoder",
        "TransformerDecoder",
        "TransformerEncoderLayer",
        "TransformerDecoderLayer",
    ): WHY_ATTENTION,
    _nn(
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LocalResponseNorm",
        "RMSNorm",
    ): WHY_NORM,
    (nn.RNNBase, nn.RNNCellBase): "it is recurrent, with nonlinear gates",
    (nn.Bilinear,): "it is not linear: it multiplies its two inputs",
    (nn.Embedding, nn.EmbeddingBag): "it looks rows up by integer index",
}
NOT_LINEAR_FUNCTIONS = {
    F.scaled_dot_product_attention: WHY_ATTENTION,
    F.multi_head_attention_forward: WHY_ATTENTION,
    F.layer_norm: WHY_NORM,
    F.group_norm: WHY_NORM,
    F.instance_norm: WHY_NORM,
    F.local_response_norm: WHY_NORM,
    F.normalize: WHY_NORM,
}
if hasattr(F, "rms_norm"):
    NOT_LINEAR_FUNCTIONS[F.rms_norm] = WHY_NORM
# Products: linear when one operand is a constant (then nn.Linear does it), else not.
MATMUL_FUNCTIONS = (operator.matmul, torch.matmul, torch.mm, torch.bmm, torch.einsum)
MATMUL_METHODS = ("matmul", "mm", "bmm")
# Linear ops whose dimension handling snnconv does not check yet.
LINEAR_NOT_YET_FUNCTIONS = (
    torch.roll,
    torch.flip,
    torch.cumsum,
    torch.diff,
    torch.tile,
    torch.narrow,
    torch.select,
    torch.index_select,
    torch.gather,
    torch.repeat_interleave,
    torch.tensordot,
    F.grid_sample,
)
LINEAR_NOT_YET_METHODS = (
    "roll",
    "flip",
    "cumsum",
    "diff",
    "tile",
    "repeat",
    "expand",
    "expand_as",
    "narrow",
    "select",
    "index_select",
    "gather",
    "repeat_interleave",
    "unfold",
    "t",
)

FIX_ACTIVATION = (
    "replace it by nn.ReLU or snnconv.ThresholdReLU and retrain; only ReLU-like "
    "activations clip(x, 0, a) have an integrate-and-fire equivalent"
)
FIX_MAXPOOL = (
    "pass maxpool='avg' to replace it by average pooling (an approximation: the SNN then "
    "follows a changed ANN), or retrain the model with nn.AvgPool2d"
)
FIX_BATCH = (
    "time is folded into the batch dimension during simulation, so no op may act along "
    "dimension 0; flatten/concatenate/split from dimension 1 on"
)
FIX_NOT_YET = (
    "work around it by writing the same map with supported ops (conv, linear, average pooling, "
    "upsampling, add, scaling, cat/chunk/reshape/permute from dimension 1 on, indexing that "
    "starts with ':'), or by folding it into the weights of a neighbouring conv/linear layer"
)
FIX_MATMUL = "a product with a constant weight matrix can be written as nn.Linear"
FIX_UNKNOWN = (
    "conversion needs ReLU-like activations and, between them, only ops linear in their input "
    "that keep samples apart (conv, linear, average pooling, upsampling, add, scaling by a "
    "constant, cat, chunk, reshape); snnconv.inspect lists how each node is handled"
)
FIX_NOT_LINEAR = (
    "rate-based conversion has no equivalent: between activations it can only pass spike rates "
    "through ops linear in their input that keep samples apart"
)


def arg(node: fx.Node, pos: int, name: str, default=None):
    """Argument ``name`` of a call node, given by position ``pos`` or by keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Short text naming what a node calls, e.g. ``nn.Conv2d`` or ``torch.sigmoid``."""
    if node.op == "call_module":
        cls = type(modules[node.target])
        return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__
    if node.op == "call_function":
        mod = getattr(node.target, "__module__", None) or ""
        name = getattr(node.target, "__name__", str(node.target))
        if mod == "builtins":  # getattr, ...
            return name
        prefix = {"torch.nn.functional": "F", "_operator": "operator"}.get(mod, "torch")
        return f"{prefix}.{name}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _clamp_bound(lo, hi) -> tuple[bool, float | None, str]:
    """(is ReLU-like, upper bound, reason) for clamp(x, lo, hi)."""
    if not (_number(lo) and lo == 0):
        return False, None, f"lower bound {lo!r} is not 0"
    if hi is None:
        return True, None, ""
    if not _number(hi) or not math.isfinite(hi) or hi <= 0:
        return False, None, f"upper bound {hi!r} is not a positive number"
    return True, float(hi), ""


def _module_bound(m: nn.Module) -> tuple[bool, float | None, str]:
    if isinstance(m, ThresholdReLU):
        return True, m.y_th, ""
    if isinstance(m, QCFS):  # V_th = the learnt threshold; the ANN keeps the quantisation
        return True, float(m.threshold.detach()), ""
    if isinstance(m, nn.ReLU6):
        return True, 6.0, ""
    if isinstance(m, nn.ReLU):
        return True, None, ""
    if isinstance(m, nn.Hardtanh):
        return _clamp_bound(m.min_val, m.max_val)
    return False, None, ""


def _function_bound(node: fx.Node) -> tuple[bool, float | None, str]:
    t = node.target
    if t in RELU_FUNCTIONS:
        return True, None, ""
    if t is F.relu6:
        return True, 6.0, ""
    if t in (F.hardtanh, F.hardtanh_):
        return _clamp_bound(arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0))
    if t in CLAMP_FUNCTIONS:
        return _clamp_bound(arg(node, 1, "min"), arg(node, 2, "max"))
    if t is torch.clamp_min:
        return _clamp_bound(arg(node, 1, "min"), None)
    return False, None, ""


def _method_bound(node: fx.Node) -> tuple[bool, float | None, str]:
    if node.target in RELU_METHODS:
        return True, None, ""
    if node.target in CLAMP_METHODS:
        return _clamp_bound(arg(node, 1, "min"), arg(node, 2, "max"))
    if node.target in ("clamp_min", "clamp_min_"):
        return _clamp_bound(arg(node, 1, "min"), None)
    return False, None, ""


def activation_bound(
    node: fx.Node, modules: dict[str, nn.Module]
) -> tuple[bool, float | None, str]:
    """(is a ReLU-like activation clip(x, 0, a), a or None, why not) for one node."""
    if node.op == "call_module":
        return _module_bound(modules[node.target])
    if node.op == "call_function":
        return _function_bound(node)
    if node.op == "call_method":
        return _method_bound(node)
    return False, None, ""


OTHER_ACTIVATIONS = (
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "prelu",
    "rrelu",
    "softplus",
    "mish",
    "hardswish",
    "hardsigmoid",
    "softmax",
    "log_softmax",
    "logsigmoid",
    "softsign",
    "tanhshrink",
    "threshold",
)


def looks_like_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True for activations that are not ReLU-like: sigmoid, GELU, leaky ReLU, ..., and clamp or
    hardtanh with bounds other than (0, a)."""
    if node.op == "call_module":
        m = modules[node.target]
        return (
            isinstance(m, nn.Hardtanh)
            or type(m).__name__.lower() in {a.replace("_", "") for a in OTHER_ACTIVATIONS}
            or type(m).__module__ == "torch.nn.modules.activation"
        )
    if node.op == "call_function":
        return (
            node.target in CLAMP_FUNCTIONS + (F.hardtanh, F.hardtanh_, torch.clamp_min)
            or getattr(node.target, "__name__", "").rstrip("_") in OTHER_ACTIVATIONS
        )
    return node.op == "call_method" and (
        node.target in CLAMP_METHODS + ("clamp_min", "clamp_min_")
        or node.target.rstrip("_") in OTHER_ACTIVATIONS
    )


def touches_batch(node: fx.Node) -> bool:
    """True if a dim-taking op (cat, flatten, mean, permute, chunk, ...) acts along dimension 0."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "permute":
        perm = list(node.args[1:]) if node.op == "call_method" else list(arg(node, 1, "dims"))
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = list(perm[0])
        return bool(perm) and perm[0] != 0
    if name == "transpose":
        dims = [arg(node, 1, "dim0"), arg(node, 2, "dim1")]
    elif name in ("cat", "concat", "stack", "flatten", "unbind"):
        dims = [arg(node, 1, "dim" if name != "flatten" else "start_dim", 0)]
    elif name in ("chunk", "split", "split_with_sizes", "tensor_split"):
        dims = [arg(node, 2, "dim", 0)]
    else:  # mean, sum, squeeze, unsqueeze: no dim means a full reduction for mean/sum
        dim = arg(node, 1, "dim", 0 if name in ("mean", "sum") else None)
        dims = list(dim) if isinstance(dim, (tuple, list)) else [dim]
    return any(isinstance(d, int) and d == 0 for d in dims)


def _getitem_keeps_batch(index) -> bool:
    """x[index] keeps dimension 0 whole: the index starts with ':' or '...'."""
    first = index[0] if isinstance(index, tuple) and index else index
    return first is Ellipsis or (isinstance(first, slice) and first == slice(None))


def _unsupported(why: str, fix: str) -> Role:
    return Role("unsupported", f"{why}; {fix}")


def _matches(node: fx.Node, functions: tuple, methods: tuple) -> bool:
    """The node calls one of ``functions`` or one of the Tensor ``methods``."""
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _not_linear_reason(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """Why a known non-linear op (attention, a normalisation, an RNN) cannot be converted."""
    if node.op == "call_module":
        m = modules[node.target]
        return next((why for cls, why in NOT_LINEAR_MODULES.items() if isinstance(m, cls)), None)
    if node.op == "call_function":
        return NOT_LINEAR_FUNCTIONS.get(node.target)
    return None


def _is_getitem(node: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and isinstance(node.args[0], fx.Node)
    )


def _after_unsupported(src: fx.Node, roles: dict) -> bool:
    """``src`` is an unsupported node or an item taken from one (what it holds is unknown)."""
    if roles[src].kind == "unsupported":
        return True
    return _is_getitem(src) and _after_unsupported(src.args[0], roles)


def _returns_tuple(src: fx.Node, modules: dict) -> bool:
    """``src`` returns a tuple: chunk, split, unbind, attention, an RNN, or a slice of those."""
    if _matches(src, SPLIT_FUNCTIONS, SPLIT_METHODS):
        return True
    if src.op == "call_module":
        return isinstance(modules[src.target], TUPLE_MODULES)
    return (
        _is_getitem(src) and isinstance(src.args[1], slice) and _returns_tuple(src.args[0], modules)
    )


def _getitem_role(node: fx.Node, roles: dict, modules: dict) -> Role:
    src, index = node.args[0], node.args[1]
    if not isinstance(src, fx.Node):
        return Role("linear", "indexing, linear on spikes")
    if _after_unsupported(src, roles):  # reported there; what [index] picks is unknown
        return Role("linear", f"[{index!r}] of what '{src.name}' returns (see that node)")
    if isinstance(index, (int, slice)) and _returns_tuple(src, modules):
        which = f"item {index}" if isinstance(index, int) else "items"
        return Role("linear", f"{which} of the tuple '{src.name}' returns, linear on spikes")
    if _getitem_keeps_batch(index):
        return Role("linear", "indexing, linear on spikes")
    return _unsupported("indexing along dimension 0 (the batch)", FIX_BATCH)


def _max_pool_role(what: str, maxpool: str, plain: bool) -> Role:
    """Max pooling: replaced by average pooling when asked and the windows allow it."""
    if maxpool == "avg" and plain:
        return Role("approximated", f"{what} replaced by average pooling")
    return _unsupported(
        f"{what}: max pooling of spike trains does not preserve rates"
        + ("" if plain else " (and dilation/return_indices have no average pooling twin)"),
        FIX_MAXPOOL,
    )


def _batchnorm_role(node: fx.Node, gm: fx.GraphModule, modules: dict) -> Role:
    """Folded into the conv/linear before it when it is that node's only user, else kept as the
    per-channel affine map it is in eval mode; batch statistics are refused."""
    m, what = modules[node.target], describe(node, modules)
    if not m.track_running_stats or m.running_mean is None:
        return _unsupported(
            f"{what}(track_running_stats=False) normalises with the statistics of each batch: "
            "it is not linear and mixes the samples of a batch",
            "train it with running statistics (the default), which conversion folds",
        )
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    foldable = (
        src is not None
        and src.op == "call_module"
        and isinstance(modules[src.target], FOLDABLE[type(m)])
        and len(src.users) == 1
        and sum(n.op == "call_module" and n.target == src.target for n in gm.graph.nodes) == 1
    )
    if foldable:
        return Role("folded", f"{what} folded into '{src.name}'")
    return Role("linear", f"{what} kept as a per-channel affine map")


def _module_role(node: fx.Node, gm: fx.GraphModule, modules: dict, maxpool: str) -> Role:
    m, what = modules[node.target], describe(node, modules)
    if isinstance(m, REMOVED_MODULES):
        return Role("removed", f"{what} is the identity at inference")
    if type(m) in FOLDABLE:
        return _batchnorm_role(node, gm, modules)
    if type(m) in MAX_POOLS:
        plain = getattr(m, "dilation", 1) in (1, (1,), (1, 1), (1, 1, 1)) and not getattr(
            m, "return_indices", False
        )
        return _max_pool_role(what, maxpool, plain)
    if (isinstance(m, nn.Flatten) and m.start_dim == 0) or (
        isinstance(m, nn.Unflatten) and m.dim == 0
    ):
        return _unsupported(f"{what} along dimension 0", FIX_BATCH)
    if isinstance(m, LINEAR_MODULES):
        return Role("linear", f"{what}, linear on spikes")
    return _unsupported(f"{what} is not an op snnconv knows to be linear", FIX_UNKNOWN)


def _operands(node: fx.Node, meta: set, consts: set) -> tuple[list, list]:
    """(activation operands, constant operands: numbers, shapes, constant tensors)."""
    flat = [a for x in node.args for a in (x if isinstance(x, (tuple, list)) else [x])]
    acts = [a for a in flat if isinstance(a, fx.Node) and a not in meta and a not in consts]
    constants = [a for a in flat if _number(a) or a in meta or a in consts]
    return acts, constants


def _scale_role(node: fx.Node, what: str, meta: set, consts: set) -> Role:
    """x * c, c * x, x / c: linear when exactly one operand is an activation and the other a
    number or a constant tensor (a Parameter or buffer, e.g. a learnt per-channel scale)."""
    acts, constants = _operands(node, meta, consts)
    divides = node.target in DIVISIONS
    if len(acts) == 1 and len(constants) == 1 and (not divides or node.args[0] is acts[0]):
        tensor = constants[0] in consts
        return Role("linear", f"{what} by a constant{' tensor' * tensor}, linear on spikes")
    if len(acts) == 1 and divides:
        return _unsupported(f"{what} of a constant by an activation is not linear", FIX_UNKNOWN)
    return _unsupported(
        f"{what} of two activations is not linear",
        "only scaling by a constant (a number, a Parameter or a buffer) is supported",
    )


def _matmul_role(node: fx.Node, what: str, meta: set, consts: set) -> Role:
    acts, constants = _operands(node, meta, consts)
    if len(acts) == 1 and any(c in consts for c in constants):
        return _unsupported(
            f"{what} by a constant tensor is linear but not supported yet", FIX_MATMUL
        )
    return _unsupported(
        f"{what} of two activations is not linear (it multiplies activations)", FIX_NOT_LINEAR
    )


def _pad_role(node: fx.Node) -> Role:
    """F.pad: zero padding and the reflect/replicate/circular modes are linear; a constant
    other than 0 is affine, like a bias (the SNN adds it every step)."""
    mode, value = arg(node, 2, "mode", "constant"), arg(node, 3, "value", None)
    if mode == "constant" and value not in (None, 0, 0.0):
        return Role("linear", f"constant padding with {value!r}, affine like a bias")
    return Role("linear", f"{mode if mode != 'constant' else 'zero'} padding, linear on spikes")


def _dim_role(node: fx.Node, what: str) -> Role:
    if touches_batch(node):
        return _unsupported(f"{what} along dimension 0", FIX_BATCH)
    return Role("linear", f"{what}, linear on spikes")


def _call_role(node: fx.Node, modules: dict, roles: dict, meta: set, consts: set, maxpool: str):
    """Role of a call_function / call_method node that is not an activation."""
    t, what, fn = node.target, describe(node, modules), node.op == "call_function"
    if fn and t is operator.getitem:
        return _getitem_role(node, roles, modules)
    if fn and t in DROPOUT_FUNCTIONS:
        return Role("removed", f"{what} is the identity at inference")
    if fn and t in MAX_POOL_FUNCTIONS:
        adaptive = t in ADAPTIVE_MAX_POOL_FUNCTIONS
        plain = not arg(node, 2 if adaptive else 6, "return_indices", False) and (
            adaptive or arg(node, 4, "dilation", 1) in (1, (1,), (1, 1), (1, 1, 1))
        )
        return _max_pool_role(what, maxpool, plain)
    if _matches(node, ADD_FUNCTIONS, ADD_METHODS):
        return Role("linear", f"{what}, linear on spikes")
    if _matches(node, SCALE_FUNCTIONS, SCALE_METHODS):
        return _scale_role(node, what, meta, consts)
    if _matches(node, MATMUL_FUNCTIONS, MATMUL_METHODS):
        return _matmul_role(node, what, meta, consts)
    if fn and t is F.pad:
        return _pad_role(node)
    if _matches(node, LINEAR_FUNCTIONS, LINEAR_METHODS):
        return Role("linear", f"{what}, linear on spikes")
    if _matches(node, DIM_FUNCTIONS, DIM_METHODS):
        return _dim_role(node, what)
    if _matches(node, LINEAR_NOT_YET_FUNCTIONS, LINEAR_NOT_YET_METHODS):
        return _unsupported(f"{what} is linear but not supported yet", FIX_NOT_YET)
    return _unsupported(f"{what} is not an op snnconv knows to be linear", FIX_UNKNOWN)


def _shape_or_constant(node: fx.Node, meta: set, consts: set, what: str) -> Role | None:
    """Meta role for shape arithmetic (x.size(), x.shape[1], ...), constant role for what is
    computed from constant tensors only (folded at conversion); None for anything else."""
    inputs = node.all_input_nodes
    if (
        (
            node.op == "call_function"
            and node.target is getattr
            and node.args[1] in ("shape", "ndim")
        )
        or (node.op == "call_method" and node.target in META_METHODS)
        or (inputs and all(a in meta for a in inputs))
    ):
        meta.add(node)
        return Role("meta", f"{what} (shapes)")
    if inputs and all(a in consts for a in inputs):
        consts.add(node)
        return Role("constant", f"{what} of constant tensors, computed once at conversion")
    return None


def _node_role(node, modules, roles, meta, consts, maxpool) -> Role:
    """Role of one call node (see ``classify``)."""
    what = describe(node, modules)
    role = _shape_or_constant(node, meta, consts, what)
    if role is not None:
        return role
    ok, bound, why = activation_bound(node, modules)
    if ok:
        v = f"V_th = {bound:g}" if bound is not None else "V_th from calibration data"
        return Role("neuron", f"IF neurons ({what}), {v}", bound)
    reason = _not_linear_reason(node, modules)
    if reason is not None:
        return _unsupported(f"{what}: {reason}", FIX_NOT_LINEAR)
    if why or looks_like_activation(node, modules):
        return _unsupported(
            f"{what} is not ReLU-like ({why or 'bounds are not 0..a'})", FIX_ACTIVATION
        )
    if node.op == "call_module":
        return _module_role(node, node.graph.owning_module, modules, maxpool)
    return _call_role(node, modules, roles, meta, consts, maxpool)


def classify(gm: fx.GraphModule, maxpool: str = "error") -> dict[fx.Node, Role]:
    """Role of every node of a traced (not yet folded) model, in graph order."""
    modules = dict(gm.named_modules())
    roles: dict[fx.Node, Role] = {}
    meta: set[fx.Node] = set()
    consts: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            roles[node] = Role("input", "analog input, fed as current every step")
        elif node.op == "get_attr":
            consts.add(node)
            roles[node] = Role("constant", "constant tensor")
        elif node.op == "output":
            roles[node] = (
                Role("output", "readout")
                if isinstance(node.args[0], fx.Node)
                else _unsupported(
                    "the model returns a tuple/dict", "return a single tensor of logits"
                )
            )
        else:
            roles[node] = _node_role(node, modules, roles, meta, consts, maxpool)
    return roles


def check_supported(roles: dict[fx.Node, Role], modules: dict[str, nn.Module]) -> None:
    """Raise ConversionError listing every unsupported node with its op and the fix."""
    bad = [(n, r) for n, r in roles.items() if r.kind == "unsupported"]
    if bad:
        lines = [f"  node '{n.name}' ({n.op} {describe(n, modules)}): {r.detail}" for n, r in bad]
        raise ConversionError(f"{len(bad)} node(s) cannot be converted:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Coverage:
    """One row per fx node: (name, op, kind, how it is handled), and notes on the converted
    network when calibration data was given. ``print`` shows a table."""

    rows: tuple[tuple[str, str, str, str], ...]
    notes: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return all(kind != "unsupported" for _, _, kind, _ in self.rows)

    @property
    def neuron_layers(self) -> list[str]:
        return [name for name, _, kind, _ in self.rows if kind == "neuron"]

    def __str__(self) -> str:
        head = ("node", "op", "kind", "handling")
        width = [max(len(r[i]) for r in self.rows + (head,)) for i in range(3)]
        fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r[:3], width)) + "  " + r[3]
        counts = {}
        for r in self.rows:
            counts[r[2]] = counts.get(r[2], 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        return "\n".join(
            [fmt(head), fmt(tuple("-" * w for w in width) + ("-" * 8,))]
            + [fmt(r) for r in self.rows]
            + [f"({summary})"]
            + [f"note: {n}" for n in self.notes]
        )

    __repr__ = __str__


def _notes(model: nn.Module, calibration, maxpool: str, threshold: str, percentile) -> tuple:
    """What conversion with these settings notes (BN folded, ...), and the regime notes of
    ``prepare.regime_notes`` on the first calibration batch."""
    from snnconv.conversion.convert import convert  # lazy: convert imports this module
    from snnconv.conversion.prepare import regime_notes
    from snnconv.conversion.thresholds import batch_input

    snn = convert(
        model, calibration=calibration, threshold=threshold, percentile=percentile, maxpool=maxpool
    )
    first = calibration if torch.is_tensor(calibration) else next(iter(calibration))
    v_th = {k: m.v_th for k, m in snn.layers.items()}
    extra = regime_notes(snn.ann, v_th, batch_input(first).to(next(snn.ann.parameters()).dtype))
    return tuple(snn.notes) + tuple(n for n in extra if n not in snn.notes)


def inspect(
    model: nn.Module,
    maxpool: str = "error",
    calibration=None,
    threshold: str = "activation",
    percentile: float = options.DEFAULT_PERCENTILE,
) -> Coverage:
    """Trace ``model`` and report, per node, how ``convert`` would handle it. Never raises for
    unsupported nodes (they are listed); raises ConversionError only if tracing fails. With
    ``calibration`` (as for ``convert``) and a supported model, the network is also converted
    with ``threshold``/``percentile`` and the notes say what conversion changed and whether the
    network is in a regime where its SNN will be far from the ANN at usual T (its output
    hardly depends on the input, or it amplifies rate quantisation)."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    roles = classify(gm, maxpool)
    rows = tuple(
        (
            n.name,
            f"{n.op} {describe(n, modules)}" if n.op.startswith("call") else n.op,
            r.kind,
            r.detail,
        )
        for n, r in roles.items()
    )
    cov = Coverage(rows)
    if calibration is None or not cov.supported:
        return cov
    return Coverage(rows, _notes(model, calibration, maxpool, threshold, percentile))
