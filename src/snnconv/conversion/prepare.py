"""Turn a traced ANN into the inference-form ANN its SNN mirrors: BatchNorm folded into the
preceding conv/linear (or transposed conv), dropout and identities removed, in-place ops made
out-of-place, max pooling replaced by average pooling where asked, and constant tensors
(parameters and buffers used directly in forward, e.g. a learnt scale ``self.gamma * x``, and
what is computed from them alone) evaluated once and held by the op that reads them
(``WithConstants``), so every value in the graph other than shapes is an activation of the
input. Eval-mode outputs are unchanged up to float rounding (except for the max-pool swap, which
is recorded as a note)."""

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

    def forward(self, *inputs):
        def fill(a):
            if isinstance(a, Slot):
                return inputs[a.index]
            return getattr(self, a.name) if isinstance(a, Constant) else a

        args, kwargs = fx.node.map_aggregate(self.template, fill)
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
