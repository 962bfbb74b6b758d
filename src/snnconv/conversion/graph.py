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


LINEAR_MODULES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.ZeroPad2d,
)
FOLDABLE = {nn.BatchNorm1d: (nn.Conv1d, nn.Linear), nn.BatchNorm2d: (nn.Conv2d,)}
REMOVED_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
MAX_POOLS = {
    nn.MaxPool1d: nn.AvgPool1d,
    nn.MaxPool2d: nn.AvgPool2d,
    nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
}
MAX_POOL_FUNCTIONS = {
    F.max_pool1d: F.avg_pool1d,
    F.max_pool2d: F.avg_pool2d,
    F.adaptive_max_pool1d: F.adaptive_avg_pool1d,
    F.adaptive_max_pool2d: F.adaptive_avg_pool2d,
}

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
SCALE_FUNCTIONS = (
    operator.mul,
    operator.imul,
    torch.mul,
    operator.truediv,
    operator.itruediv,
    torch.div,
)
LINEAR_FUNCTIONS = (
    F.conv1d,
    F.conv2d,
    F.linear,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    torch.reshape,
)
DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout)
META_METHODS = ("size", "dim")
LINEAR_METHODS = ("view", "reshape", "contiguous", "view_as", "reshape_as")
DIM_METHODS = ("flatten", "mean", "sum", "permute", "transpose", "squeeze", "unsqueeze")
DIM_FUNCTIONS = (
    torch.flatten,
    torch.cat,
    torch.concat,
    torch.mean,
    torch.sum,
    torch.permute,
    torch.transpose,
    torch.squeeze,
    torch.unsqueeze,
)
RELU_METHODS = ("relu", "relu_")
CLAMP_METHODS = ("clamp", "clamp_", "clip", "clip_")

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
    "dimension 0; flatten/concatenate from dimension 1 on"
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
    """True if a dim-taking op (cat, flatten, mean, permute, ...) acts along dimension 0."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    if name == "permute":
        perm = list(node.args[1:]) if node.op == "call_method" else list(arg(node, 1, "dims"))
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = list(perm[0])
        return bool(perm) and perm[0] != 0
    if name == "transpose":
        dims = [arg(node, 1, "dim0"), arg(node, 2, "dim1")]
    elif name in ("cat", "concat", "flatten"):
        dims = [arg(node, 1, "dim" if name != "flatten" else "start_dim", 0)]
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


def _max_pool_role(what: str, maxpool: str, plain: bool) -> Role:
    """Max pooling: replaced by average pooling when asked and the windows allow it."""
    if maxpool == "avg" and plain:
        return Role("approximated", f"{what} replaced by average pooling")
    return _unsupported(
        f"{what}: max pooling of spike trains does not preserve rates"
        + ("" if plain else " (and dilation/return_indices have no average pooling twin)"),
        FIX_MAXPOOL,
    )


def _module_role(node: fx.Node, gm: fx.GraphModule, modules: dict, maxpool: str) -> Role:
    m, what = modules[node.target], describe(node, modules)
    if isinstance(m, REMOVED_MODULES):
        return Role("removed", f"{what} is the identity at inference")
    if type(m) in FOLDABLE:
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        foldable = (
            src is not None
            and src.op == "call_module"
            and isinstance(modules[src.target], FOLDABLE[type(m)])
            and len(src.users) == 1
            and sum(n.op == "call_module" and n.target == src.target for n in gm.graph.nodes) == 1
            and m.track_running_stats
            and m.running_mean is not None
        )
        return (
            Role("folded", f"{what} folded into '{src.name}'")
            if foldable
            else Role("linear", f"{what} kept as a per-channel affine map")
        )
    if type(m) in MAX_POOLS:
        plain = getattr(m, "dilation", 1) in (1, (1,), (1, 1)) and not getattr(
            m, "return_indices", False
        )
        return _max_pool_role(what, maxpool, plain)
    if isinstance(m, nn.Flatten) and m.start_dim == 0:
        return _unsupported(f"{what}(start_dim=0)", FIX_BATCH)
    if isinstance(m, LINEAR_MODULES):
        return Role("linear", f"{what}, linear on spikes")
    return _unsupported(
        f"{what} has no spiking equivalent in snnconv",
        "replace it by a supported layer (see snnconv.inspect)",
    )


def _scale_role(node: fx.Node, what: str, meta: set) -> Role:
    """x * c, c * x, x / c: linear when exactly one operand is an activation."""
    tensors = [x for x in node.args if isinstance(x, fx.Node) and x not in meta]
    constants = [x for x in node.args if _number(x) or x in meta]
    divides = node.target in (operator.truediv, operator.itruediv, torch.div, "div", "div_")
    if len(tensors) == 1 and len(constants) == 1 and (not divides or node.args[0] is tensors[0]):
        return Role("linear", f"{what} by a constant, linear on spikes")
    return _unsupported(
        f"{what} of two activations is not linear",
        "only scaling by a constant number is supported",
    )


def _pad_role(node: fx.Node) -> Role:
    mode, value = arg(node, 2, "mode", "constant"), arg(node, 3, "value", None)
    if mode == "constant" and (value is None or value == 0):
        return Role("linear", "zero padding, linear on spikes")
    return _unsupported(f"F.pad(mode={mode!r}, value={value!r})", "only zero padding is linear")


def _call_role(node: fx.Node, modules: dict, meta: set, maxpool: str) -> Role:
    """Role of a call_function / call_method node that is not an activation. Adds the node to
    ``meta`` if it computes shapes/ints rather than activations."""
    t, what = node.target, describe(node, modules)
    fn, method = node.op == "call_function", node.op == "call_method"
    args = [a for a in node.args if isinstance(a, fx.Node)]
    if (
        (fn and t is getattr and node.args[1] in ("shape", "ndim"))
        or (method and t in META_METHODS)
        or (args and all(a in meta for a in args))
    ):
        meta.add(node)
        return Role("meta", f"{what} (shapes)")
    if fn and t is operator.getitem:
        return (
            Role("linear", "indexing, linear on spikes")
            if _getitem_keeps_batch(node.args[1])
            else _unsupported("indexing along dimension 0", FIX_BATCH)
        )
    if fn and t in DROPOUT_FUNCTIONS:
        return Role("removed", f"{what} is the identity at inference")
    if fn and t in MAX_POOL_FUNCTIONS:
        adaptive = t in (F.adaptive_max_pool1d, F.adaptive_max_pool2d)
        plain = not arg(node, 2 if adaptive else 6, "return_indices", False) and (
            adaptive or arg(node, 4, "dilation", 1) in (1, (1,), (1, 1))
        )
        return _max_pool_role(what, maxpool, plain)
    if (fn and t in ADD_FUNCTIONS) or (method and t in ("add", "add_", "sub", "sub_", "neg")):
        return Role("linear", f"{what}, linear on spikes")
    if (fn and t in SCALE_FUNCTIONS) or (method and t in ("mul", "mul_", "div", "div_")):
        return _scale_role(node, what, meta)
    if fn and t is F.pad:
        return _pad_role(node)
    if (fn and t in LINEAR_FUNCTIONS) or (method and t in LINEAR_METHODS):
        return Role("linear", f"{what}, linear on spikes")
    if (fn and t in DIM_FUNCTIONS) or (method and t in DIM_METHODS):
        return (
            _unsupported(f"{what} along dimension 0", FIX_BATCH)
            if touches_batch(node)
            else Role("linear", f"{what}, linear on spikes")
        )
    return _unsupported(
        f"{what} has no spiking equivalent in snnconv",
        "use only ReLU-like activations and linear ops (conv, linear, average "
        "pooling, add, cat, reshape) between them",
    )


def classify(gm: fx.GraphModule, maxpool: str = "error") -> dict[fx.Node, Role]:
    """Role of every node of a traced (not yet folded) model, in graph order."""
    modules = dict(gm.named_modules())
    roles: dict[fx.Node, Role] = {}
    meta: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            roles[node] = Role("input", "analog input, fed as current every step")
        elif node.op == "get_attr":
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
            ok, bound, why = activation_bound(node, modules)
            what = describe(node, modules)
            if ok:
                v = f"V_th = {bound:g}" if bound is not None else "V_th from calibration data"
                roles[node] = Role("neuron", f"IF neurons ({what}), {v}", bound)
            elif why or looks_like_activation(node, modules):
                roles[node] = _unsupported(
                    f"{what} is not ReLU-like ({why or 'bounds are not 0..a'})", FIX_ACTIVATION
                )
            elif node.op == "call_module":
                roles[node] = _module_role(node, gm, modules, maxpool)
            else:
                roles[node] = _call_role(node, modules, meta, maxpool)
    return roles


def check_supported(roles: dict[fx.Node, Role], modules: dict[str, nn.Module]) -> None:
    """Raise ConversionError listing every unsupported node with its op and the fix."""
    bad = [(n, r) for n, r in roles.items() if r.kind == "unsupported"]
    if bad:
        lines = [f"  node '{n.name}' ({n.op} {describe(n, modules)}): {r.detail}" for n, r in bad]
        raise ConversionError(f"{len(bad)} node(s) cannot be converted:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Coverage:
    """One row per fx node: (name, op, kind, how it is handled). ``print`` shows a table."""

    rows: tuple[tuple[str, str, str, str], ...]

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
        )

    __repr__ = __str__


def inspect(model: nn.Module, maxpool: str = "error") -> Coverage:
    """Trace ``model`` and report, per node, how ``convert`` would handle it. Never raises for
    unsupported nodes (they are listed); raises ConversionError only if tracing fails."""
    gm = trace(model)
    modules = dict(gm.named_modules())
    roles = classify(gm, maxpool)
    return Coverage(
        tuple(
            (
                n.name,
                f"{n.op} {describe(n, modules)}" if n.op.startswith("call") else n.op,
                r.kind,
                r.detail,
            )
            for n, r in roles.items()
        )
    )
