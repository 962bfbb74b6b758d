"""Turn a traced ANN into the inference-form ANN its SNN mirrors: BatchNorm folded into the
preceding conv/linear (or transposed conv), dropout and identities removed, in-place ops made
out-of-place, max pooling replaced by average pooling where asked, and constant tensors
(parameters and buffers used directly in forward, e.g. a learnt scale ``self.gamma * x``, and
what is computed from them alone) evaluated once and held by the op that reads them
(``WithConstants``), so every value in the graph other than shapes is an activation of the
input. Eval-mode outputs are unchanged up to float rounding (except for the max-pool swap, which
is recorded as a note).

``regime_notes`` says whether the prepared ANN, with its thresholds, is one whose SNN will be far
from it at usual T whatever the simulator does (see the comment above it)."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from snnconv.conversion.graph import MAX_POOL_FUNCTIONS, MAX_POOLS, Role, arg

TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
OUT_OF_PLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    torch.relu_: torch.relu,
    F.relu_: F.relu,
    torch.clamp_: torch.clamp,
    F.hardtanh_: F.hardtanh,
}
OUT_OF_PLACE_METHODS = {
    "add_": "add",
    "sub_": "sub",
    "mul_": "mul",
    "div_": "div",
    "relu_": "relu",
    "clamp_": "clamp",
    "clip_": "clip",
    "clamp_min_": "clamp_min",
}


def _out_of_place(gm: fx.GraphModule) -> None:
    """Rewrite in-place ops as out-of-place ones, so no node overwrites a value another node
    (a skip connection, a cached time-constant current, a recorded activation) still reads."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.target = OUT_OF_PLACE_FUNCTIONS.get(node.target, node.target)
        elif node.op == "call_method":
            node.target = OUT_OF_PLACE_METHODS.get(node.target, node.target)
        if "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
    for m in gm.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _avg_pool_for(m: nn.Module) -> nn.Module:
    """Average pooling over the same windows as max-pool module ``m``."""
    avg = MAX_POOLS[type(m)]
    if hasattr(m, "output_size"):
        return avg(m.output_size)
    return avg(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode, count_include_pad=False)


@dataclass(frozen=True)
class Slot:
    """Where the ``index``-th input of a ``WithConstants`` call goes among its arguments."""

    index: int


@dataclass(frozen=True)
class Constant:
    """Where the constant held as buffer ``name`` goes among the arguments."""

    name: str


class WithConstants(nn.Module):
    """One function or Tensor-method call whose constant tensor arguments are held here as
    buffers (they follow ``.to()``/``.double()`` and the state dict); its other tensor
    arguments are this module's inputs, in order. ``template`` is (args, kwargs) with ``Slot``
    and ``Constant`` markers where tensors go."""

    def __init__(self, op: str, target, template: tuple, constants: dict[str, torch.Tensor]):
        super().__init__()
        self.op, self.target, self.template = op, target, template
        for name, value in constants.items():
            self.register_buffer(name, value)

    def arguments(self, *inputs) -> tuple[tuple, dict]:
        """(args, kwargs) of the call on ``inputs``: the template with its slots filled."""

        def fill(a):
            if isinstance(a, Slot):
                return inputs[a.index]
            return getattr(self, a.name) if isinstance(a, Constant) else a

        return fx.node.map_aggregate(self.template, fill)

    def forward(self, *inputs):
        args, kwargs = self.arguments(*inputs)
        if self.op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    def extra_repr(self) -> str:
        name = self.target if isinstance(self.target, str) else self.target.__name__
        return f"{name}, constants {[tuple(b.shape) for b in self.buffers()]}"


def _constant_values(gm: fx.GraphModule, constants: list[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """The value of every constant node (graph order), computed once, detached."""
    values: dict[fx.Node, object] = {}
    modules = dict(gm.named_modules())
    with torch.no_grad():
        for node in constants:
            if node.op == "get_attr":
                values[node] = _attr(gm, node.target)
                continue
            args = fx.node.map_arg(node.args, values.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, values.__getitem__)
            if node.op == "call_module":
                values[node] = modules[node.target](*args, **kwargs)
            elif node.op == "call_method":
                values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                values[node] = node.target(*args, **kwargs)
    return {n: v.detach().clone() if torch.is_tensor(v) else v for n, v in values.items()}


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _with_constants(node: fx.Node, values: dict) -> tuple[WithConstants, tuple[fx.Node, ...]]:
    """The ``WithConstants`` module doing ``node``'s call with the constants in ``values`` held
    as buffers, and the nodes it takes as inputs."""
    inputs: list[fx.Node] = []
    held: dict[str, torch.Tensor] = {}

    def place(a: fx.Node):
        if a in values:
            if not torch.is_tensor(values[a]):
                return values[a]
            held[f"c{len(held)}"] = values[a]
            return Constant(f"c{len(held) - 1}")
        if a not in inputs:
            inputs.append(a)
        return Slot(inputs.index(a))

    template = fx.node.map_arg((node.args, node.kwargs), place)
    return WithConstants(node.op, node.target, template, held), tuple(inputs)


def _bind_constants(gm: fx.GraphModule, constants: list[fx.Node]) -> None:
    """Replace each call that reads a constant tensor and an activation by a ``WithConstants``
    module holding the constant; drop the constant nodes nothing reads any more."""
    values = _constant_values(gm, constants)
    for node in list(gm.graph.nodes):
        if (
            node.op in ("call_function", "call_method")
            and node not in values
            and any(a in values for a in node.all_input_nodes)
        ):
            module, inputs = _with_constants(node, values)
            target = f"{node.name}_constants"
            gm.add_submodule(target, module)
            with gm.graph.inserting_before(node):
                bound = gm.graph.call_module(target, inputs)
            node.replace_all_uses_with(bound)
            gm.graph.erase_node(node)
    for node in reversed(constants):
        if not node.users:
            gm.graph.erase_node(node)


def prepare(gm: fx.GraphModule, roles: dict[fx.Node, Role]) -> list[str]:
    """Apply the folded/removed/approximated roles to ``gm`` in place; return notes on changes."""
    modules = dict(gm.named_modules())
    notes = []
    for node, role in list(roles.items()):
        if role.kind == "folded":
            src = node.args[0]
            conv, bn = modules[src.target], modules[node.target]
            if isinstance(conv, nn.Linear):
                fused = fuse_linear_bn_eval(conv.eval(), bn.eval())
            else:
                transpose = isinstance(conv, TRANSPOSED_CONVS)
                fused = fuse_conv_bn_eval(conv.eval(), bn.eval(), transpose=transpose)
            _set_submodule(gm, src.target, fused)
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            notes.append(f"BatchNorm '{node.name}' folded into '{src.name}'")
        elif role.kind == "removed":
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif role.kind == "approximated":
            if node.op == "call_module":
                _set_submodule(gm, node.target, _avg_pool_for(modules[node.target]))
            elif node.target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
                node.args, node.kwargs = (node.args[0], arg(node, 1, "output_size")), {}
                node.target = MAX_POOL_FUNCTIONS[node.target]
            else:
                kwargs = dict(
                    kernel_size=arg(node, 1, "kernel_size"),
                    stride=arg(node, 2, "stride"),
                    padding=arg(node, 3, "padding", 0),
                    ceil_mode=arg(node, 5, "ceil_mode", False),
                    count_include_pad=False,
                )
                node.args, node.kwargs = (node.args[0],), kwargs
                node.target = MAX_POOL_FUNCTIONS[node.target]
            notes.append(
                f"max pooling '{node.name}' replaced by average pooling: the SNN follows "
                "this changed ANN (snn.ann), not the original model"
            )
    _out_of_place(gm)
    _bind_constants(gm, [n for n, r in roles.items() if r.kind == "constant"])
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return notes


# --- How much the inference ANN amplifies rate quantisation (issue 16, MobileNetV2 finding) ---
#
# An IF layer's rate after T steps is its clipped activation rounded to the grid V_th/T (exactly
# so for a constant current; uneven spike trains add to it). Rounding every layer of the clipped
# ANN that way gives what perfectly even spike trains would compute: the "quantised ANN". A
# random-init MobileNetV2 whose BN normalises its activations amplifies such errors ~1.145x per
# IF layer over 35 layers: rounding alone moves its output by 25 % of the input-dependent part at
# T=1024 (the SNN: 80 %); with random BN statistics its output hardly depends on the input at all
# (benchmarks/mobilenet_finding.py has the figures). A trained ResNet-20: 0.11 % at T=1024.
REGIME_STEPS = 1024  # the T at which the quantised ANN is compared
REGIME_TOLERANCE = 0.05  # a relative output error above this at REGIME_STEPS gets a note
REGIME_MAX_STEPS = 1 << 16
REGIME_SAMPLES = 32  # calibration inputs the probe runs on (two ANN passes per T tried)


class ClippedANN(fx.Interpreter):
    """The inference ANN with each named activation clipped to [0, V_th] (the SNN's limit as
    T -> infinity) and, with ``steps``, rounded to the grid V_th/T (the quantised ANN)."""

    def __init__(self, ann: fx.GraphModule, v_th: dict, steps: int | None = None):
        super().__init__(ann)
        self.v_th, self.steps, self.acts = v_th, steps, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name not in self.v_th:
            return out
        v = torch.as_tensor(self.v_th[n.name], dtype=out.dtype, device=out.device)
        if v.dim() == 1:  # per channel (dimension 1)
            v = v.view(-1, *([1] * (out.dim() - 2)))
        out = torch.minimum(out.clamp(min=0), v)
        if self.steps is not None:
            out = (torch.floor(out * self.steps / v + 0.5).clamp(0, self.steps)) * v / self.steps
        self.acts[n.name] = out
        return out


def quantisation_error(ann: fx.GraphModule, v_th: dict, x: torch.Tensor, steps: int) -> float:
    """||quantised ANN - clipped ANN|| / ||clipped ANN - its batch mean|| on inputs ``x``: the
    output error rate quantisation alone causes at T = ``steps``, relative to the part of the
    output that depends on the input."""
    with torch.no_grad():
        y = ClippedANN(ann, v_th).run(x)
        q = ClippedANN(ann, v_th, steps).run(x)
    spread = (y - y.mean(0)).norm()
    return ((q - y).norm() / spread.clamp_min(torch.finfo(y.dtype).tiny)).item()


def regime_notes(ann: fx.GraphModule, v_th: dict, x: torch.Tensor) -> list[str]:
    """Notes on a network whose SNN will be far from its ANN at usual T whatever the simulator
    does: its output barely depends on the input, or it amplifies rate quantisation (see
    ``quantisation_error``). ``x``: a few calibration inputs (at least 2)."""
    x = x[:REGIME_SAMPLES]
    if not v_th or x.shape[0] < 2:
        return []
    with torch.no_grad():
        y = ClippedANN(ann, v_th).run(x)
    signal = ((y - y.mean(0)).norm() / y.norm().clamp_min(torch.finfo(y.dtype).tiny)).item()
    if signal < 1e-3:
        return [
            f"the output hardly depends on the input: its input-dependent part is {signal:.1e} "
            "of its size on the calibration data (an untrained network, or BN statistics that do "
            "not match the activations?); any SNN error is large relative to that part"
        ]
    first = error = quantisation_error(ann, v_th, x, REGIME_STEPS)
    if error <= REGIME_TOLERANCE:
        return []
    steps = REGIME_STEPS
    while error > REGIME_TOLERANCE and steps < REGIME_MAX_STEPS:
        steps *= 2
        error = quantisation_error(ann, v_th, x, steps)
    needed = f"T >= {steps}" if error <= REGIME_TOLERANCE else f"T > {REGIME_MAX_STEPS}"
    return [
        f"this network amplifies small errors from layer to layer: rounding every layer's rate "
        f"to V_th/T (what even spike trains give) already moves its output by {first:.0%} of "
        f"its input-dependent part at T={REGIME_STEPS}, and uneven spike trains add more; "
        f"rounding alone needs {needed} to stay within {REGIME_TOLERANCE:.0%} (a property of "
        "the weights, not of the simulator; trained networks are usually far less sensitive)"
    ]
