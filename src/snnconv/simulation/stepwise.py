"""The test oracle: every step runs the whole network on [batch, ...] tensors with PyTorch's own
ops, and each IF layer by the reference update ``neuron.if_step``. No kernel, no chunking, no
kept buffers: ``executor.simulate`` is held against this (tests/test_simulate.py)."""

from __future__ import annotations

import torch
from torch import fx

from snnconv.simulation.executor import Readout, execute, fetch_attr
from snnconv.simulation.neuron import IFNeurons


def simulate_stepwise(gm: fx.GraphModule, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Readout after every step, [steps, batch, ...], by a plain loop over time."""
    modules = dict(gm.named_modules())
    for m in modules.values():
        if isinstance(m, IFNeurons):
            m.reset(steps)
    result = Readout(steps)
    with torch.no_grad():
        for _ in range(steps):
            env = {}
            for node in gm.graph.nodes:
                if node.op == "placeholder":
                    env[node] = x
                elif node.op == "get_attr":
                    env[node] = fetch_attr(gm, node.target)
                elif node.op == "output":
                    result.add(env[node.args[0]].unsqueeze(0))
                else:
                    args = fx.node.map_arg(node.args, env.__getitem__)
                    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
                    m = modules.get(node.target) if node.op == "call_module" else None
                    env[node] = (
                        m.step(args[0])
                        if isinstance(m, IFNeurons)
                        else execute(node, args, kwargs, modules)
                    )
    return result.out
