"""Turn a traced ANN into the inference-form ANN its SNN mirrors: BatchNorm folded into the
preceding conv/linear, dropout and identities removed, in-place ops made out-of-place, max
pooling replaced by average pooling where asked. Eval-mode outputs are unchanged up to float
rounding (except for the max-pool swap, which is recorded as a note)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from snnconv.conversion.graph import MAX_POOL_FUNCTIONS, MAX_POOLS, Role, arg

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


def prepare(gm: fx.GraphModule, roles: dict[fx.Node, Role]) -> list[str]:
    """Apply the folded/removed/approximated roles to ``gm`` in place; return notes on changes."""
    modules = dict(gm.named_modules())
    notes = []
    for node, role in list(roles.items()):
        if role.kind == "folded":
            src = node.args[0]
            conv, bn = modules[src.target], modules[node.target]
            fuse = fuse_linear_bn_eval if isinstance(conv, nn.Linear) else fuse_conv_bn_eval
            _set_submodule(gm, src.target, fuse(conv.eval(), bn.eval()))
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
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return notes
