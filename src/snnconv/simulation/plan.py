"""The analysis of a spiking graph that the executor follows: computed once per network.

For every node of the fx graph the plan says which kind of work it is (``Kind``) and what the
executor may do with it:

- neurons: IF layers (``IFNeurons`` call_module nodes);
- dynamic: nodes whose value changes over time (the IF layers and everything after them); the
  others (the analog input and what is computed from it before the first IF layer) run once;
- spike convs: ``nn.Conv2d`` nodes whose input is an IF layer's spike map (the lookup kernel
  applies to them); ``amplitude[conv]`` names the IF node whose V_th the spikes carry;
  ``negative``: those reading a signed layer (maps that hold -V_th too);
- scan sums: ``a + b`` of two dynamic values whose only user is an IF layer, summed inside that
  layer's scan instead of in a pass of its own;
- fire convs: spike convs whose only user is an IF layer or a scan sum feeding one, run by that IF
  layer in one pass with its update;
- handoff[n]: for an IF layer read by a fire conv, that conv (the first, if several): the layer's
  fused update also makes the masks that conv reads (``cpu.SpikeMasks``), so the conv skips its
  pass over the spike map;
- masks_only: the IF layers read only by their handoff conv and by scan sums (whose IF layer
  can take the addend as masks): they write only the masks, not the spike map (the executor
  makes the map from the masks where a reader needs the values after all);
- free_after[n]: the dynamic values whose last reader is n (dropped once n has run).
"""

from __future__ import annotations

import enum
import operator
import weakref
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv.simulation.neuron import IFNeurons

ADDS = (operator.add, torch.add)  # a + b nodes the IF scan can take as its two inputs


class Kind(enum.Enum):
    INPUT = "input"
    ATTR = "attr"
    OUTPUT = "output"
    NEURON = "neuron"
    SCAN_SUM = "scan_sum"
    SPIKE_CONV = "spike_conv"
    PAD = "pad"
    OP = "op"


class Probe(NamedTuple):
    """What a first step alone measured: the bytes a step writes, one step's output."""

    step_bytes: int
    out_shape: tuple[int, ...]
    out_dtype: torch.dtype


@dataclass(frozen=True)
class Plan:
    nodes: tuple[fx.Node, ...]
    kind: dict[fx.Node, Kind]
    dynamic: frozenset[fx.Node]
    amplitude: dict[fx.Node, fx.Node]  # spike conv -> the IF node feeding it
    fire_convs: frozenset[fx.Node]
    handoff: dict[fx.Node, fx.Node]  # IF node -> the fire conv that reads its masks
    masks_only: frozenset[fx.Node]  # IF nodes read only by that conv and scan sums
    negative: frozenset[fx.Node]  # spike convs reading a signed layer
    free_after: dict[fx.Node, tuple[fx.Node, ...]]
    output: fx.Node  # the value the graph returns
    signed: frozenset[fx.Node]  # the IF layers with signed neurons when the plan was made
    # per run signature (executor.signature), what the first run with it measured on its first
    # step: later runs size their chunks from the start instead of probing one step alone
    probes: dict[tuple, Probe] = field(default_factory=dict, compare=False)

    @property
    def neurons(self) -> list[fx.Node]:
        return [n for n in self.nodes if self.kind[n] is Kind.NEURON]


def _is_spike_conv(n: fx.Node, modules: dict, neurons: set) -> bool:
    return (
        n.op == "call_module"
        and isinstance(modules[n.target], nn.Conv2d)
        and len(n.args) == 1
        and not n.kwargs
        and n.args[0] in neurons
    )


def _is_scan_sum(n: fx.Node, dynamic: set, neurons: set) -> bool:
    return (
        n.op == "call_function"
        and n.target in ADDS
        and not n.kwargs
        and len(n.args) == 2
        and all(a in dynamic for a in n.args)
        and len(n.users) == 1
        and next(iter(n.users)) in neurons
    )


def _dynamic(nodes: list[fx.Node], neurons: set) -> set[fx.Node]:
    dynamic = set()
    for n in nodes:
        if n in neurons or any(a in dynamic for a in n.all_input_nodes):
            dynamic.add(n)
    return dynamic


def _free_after(nodes: list[fx.Node], dynamic: set) -> dict[fx.Node, tuple[fx.Node, ...]]:
    last_use = {}
    for n in nodes:
        for a in n.all_input_nodes:
            last_use[a] = n
    free: dict[fx.Node, list[fx.Node]] = {}
    for a, n in last_use.items():
        if a in dynamic:
            free.setdefault(n, []).append(a)
    return {n: tuple(v) for n, v in free.items()}


def _kind(n: fx.Node, neurons: set, sums: set, convs: set) -> Kind:
    if n.op == "placeholder":
        return Kind.INPUT
    if n.op == "get_attr":
        return Kind.ATTR
    if n.op == "output":
        return Kind.OUTPUT
    if n in neurons:
        return Kind.NEURON
    if n in sums:
        return Kind.SCAN_SUM
    if n in convs:
        return Kind.SPIKE_CONV
    if n.op == "call_function" and n.target is F.pad:
        return Kind.PAD
    return Kind.OP


def make_plan(gm: fx.GraphModule) -> Plan:
    """The plan of ``gm`` (see the module docstring)."""
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    neurons = {
        n for n in nodes if n.op == "call_module" and isinstance(modules[n.target], IFNeurons)
    }
    dynamic = _dynamic(nodes, neurons)
    convs = {n for n in nodes if _is_spike_conv(n, modules, neurons)}
    sums = {n for n in nodes if _is_scan_sum(n, dynamic, neurons)}
    signed = _signed(neurons, modules)
    negative = {n for n in convs if n.args[0] in signed}
    fire = {n for n in convs if len(n.users) == 1 and next(iter(n.users)) in neurons | sums}
    output = next(n for n in nodes if n.op == "output")
    handoff = {
        n: next(u for u in nodes if u in fire and u.args[0] is n)
        for n in neurons
        if any(u in fire for u in n.users)
    }
    return Plan(
        nodes=tuple(nodes),
        kind={n: _kind(n, neurons, sums, convs) for n in nodes},
        dynamic=frozenset(dynamic),
        amplitude={n: n.args[0] for n in convs},
        fire_convs=frozenset(fire),
        handoff=handoff,
        masks_only=frozenset(n for n, conv in handoff.items() if set(n.users) <= {conv} | sums),
        negative=frozenset(negative),
        free_after=_free_after(nodes, dynamic),
        output=output.args[0],
        signed=signed,
    )


def _signed(neurons, modules: dict) -> frozenset[fx.Node]:
    return frozenset(n for n in neurons if modules[n.target].signed)


_plans: weakref.WeakKeyDictionary[fx.Graph, Plan] = weakref.WeakKeyDictionary()


def plan_for(gm: fx.GraphModule) -> Plan:
    """``make_plan(gm)``, cached while the graph object lives (a new graph, or a layer made signed
    or not since, gets a new plan)."""
    plan = _plans.get(gm.graph)
    if (
        plan is None
        or len(plan.nodes) != len(gm.graph.nodes)
        or plan.signed != _signed(plan.neurons, dict(gm.named_modules()))
    ):
        plan = _plans[gm.graph] = make_plan(gm)
    return plan
