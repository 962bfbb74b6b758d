"""Run a converted network for T steps and return its readout after every step.

``simulate`` is the fast path. It runs the graph once per chunk of time steps, layer by layer, with
time folded into the batch (row t*B + b of a [c*B, ...] tensor is sample b at step t of the chunk),
so each conv runs once over all c*B maps, and each IF layer scans its c steps in a tight loop.
A conv that reads an IF layer's spikes runs as a table lookup (lookup_conv.py) where that applies,
and a sum a + b read only by an IF layer is added inside that layer's scan. A lookup conv read
only by an IF layer (directly or through such a sum) is left pending and run by that layer in
one pass with its update (IFNeurons.scan_conv). The IF layers', lookup convs' and zero pads'
outputs are written into buffers kept in ``workspace`` from call to call. Values that do not
change over time (the analog input and everything computed from it before the first IF layer,
e.g. the first conv's current) are computed once. Memory grows with the chunk length c, not with
T: the first step runs alone to measure the bytes one step needs, then c is chosen to fit
``max_chunk_bytes`` (default: ``default_chunk_bytes`` of the input's device).

``simulate_stepwise`` is the plain loop, one whole-network pass per step with PyTorch's own ops
only; it is the test oracle.

Readout after step t: out[t-1] = (1/t) * sum_{s<=t} y[s], where y[s] is the network output at step
s (the last linear layer's current with readout="current", V_th-amplitude spikes with "spikes").
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv.exceptions import SimulationError
from snnconv.kernels import lookup_conv
from snnconv.simulation.neuron import IFNeurons

CPU_CHUNK_BYTES = 1 << 30


def default_chunk_bytes(device: torch.device) -> int:
    """Bytes of one chunk's tensors. CPU: 1 GiB (with output buffers reused across calls;
    measured on ResNet-20, batch 128, T=32: 1.04 s at 512 MiB, 0.93 s at 1 GiB, 0.91 s at 2 GiB,
    which would keep twice the memory; 1.25 s at one step per chunk). CUDA: an eighth of the card's memory, since there each
    chunk costs a fixed host overhead (one Python pass over the graph, a launch per op) and the
    caching allocator reuses memory; at batch 128 on an H100 (10 GB) that is ~40 ResNet-20 steps."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return CPU_CHUNK_BYTES


ADDS = (operator.add, torch.add)  # a + b nodes the IF scan can take as its two inputs


@dataclass(frozen=True)
class _Pending:
    """A convolution of spikes (node, its input, its output shape) left for the IF layer that
    reads it, which runs both in one pass (IFNeurons.scan_conv)."""

    node: fx.Node
    x: torch.Tensor
    shape: tuple


def execute(node: fx.Node, args, kwargs, modules: dict):
    """Run one fx call node on concrete values."""
    if node.op == "call_module":
        return modules[node.target](*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    raise AssertionError(node.op)


def _fetch(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _call(node, args, kwargs, modules):
    try:
        return execute(node, args, kwargs, modules)
    except SimulationError:
        raise
    except Exception as err:
        shapes = [tuple(a.shape) for a in args if torch.is_tensor(a)]
        raise SimulationError(
            f"node '{node.name}' failed on input shape(s) {shapes}: {err}"
        ) from err


def _is_zero_pad(node: fx.Node, args, kwargs) -> bool:
    """An F.pad node that adds zeros (constant mode, value 0 or None, no negative pad)."""
    if node.op != "call_function" or node.target is not F.pad or len(args) != 2:
        return False
    mode, value = kwargs.get("mode", "constant"), kwargs.get("value", None)
    pad = args[1]
    return (
        mode == "constant"
        and value in (None, 0, 0.0)
        and set(kwargs) <= {"mode", "value"}
        and torch.is_tensor(args[0])
        and isinstance(pad, (tuple, list))
        and len(pad) % 2 == 0
        and len(pad) // 2 <= args[0].dim()
        and all(isinstance(p, int) and p >= 0 for p in pad)
    )


def _pad_into(x: torch.Tensor, pad, out: torch.Tensor | None) -> torch.Tensor:
    """F.pad(x, pad) with zeros, as PyTorch computes it (fill, then copy x inside), written into
    ``out`` when it has the padded shape and x's dtype, device and memory format (a kept buffer
    saves the page faults of fresh memory: on ResNet-20's option-A shortcuts, 15 ms per chunk)."""
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        shape[-1 - i] += pad[2 * i] + pad[2 * i + 1]
    st = x.stride()
    fmt = (
        torch.channels_last
        if x.dim() == 4 and st[1] <= st[3] <= st[2] <= st[0] and not x.is_contiguous()
        else torch.contiguous_format
    )  # the layout F.pad keeps
    if (
        out is None
        or list(out.shape) != shape
        or out.dtype != x.dtype
        or out.device != x.device
        or not out.is_contiguous(memory_format=fmt)
    ):
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    inside = out
    for i in range(len(pad) // 2):
        inside = inside.narrow(x.dim() - 1 - i, pad[2 * i], x.shape[-1 - i])
    out.zero_()
    inside.copy_(x)
    return out


def _readout(outputs: list[torch.Tensor]) -> torch.Tensor:
    y = torch.cat(outputs)
    t = torch.arange(1, y.shape[0] + 1, dtype=y.dtype, device=y.device)
    return y.cumsum(0) / t.view(-1, *([1] * (y.dim() - 1)))


def simulate(
    gm: fx.GraphModule,
    x: torch.Tensor,
    steps: int,
    max_chunk_bytes: int | None = None,
    marks=(),
    on_mark=None,
    workspace: dict | None = None,
) -> torch.Tensor:
    """Readout after every step, [steps, batch, ...], for analog input x [batch, ...].
    ``on_mark(t)`` is called right after step t for each t in ``marks`` (e.g. to read the IF
    layers' spike counts at several T in one run). ``workspace`` (a dict the caller keeps) holds
    the IF layers', lookup convolutions' and zero pads' output buffers from one call to the next:
    fresh memory costs page faults (measured: a third of a CPU simulation's time at 2 GiB
    chunks)."""
    marks = sorted({t for t in marks if 0 < t <= steps})
    if max_chunk_bytes is None:
        max_chunk_bytes = default_chunk_bytes(x.device)
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    neurons = {
        n for n in nodes if n.op == "call_module" and isinstance(modules[n.target], IFNeurons)
    }
    for n in neurons:
        modules[n.target].reset(steps)
    spike_fed = {
        n: modules[n.args[0].target]
        for n in nodes  # convs reading an IF layer's spikes
        if n.op == "call_module"
        and isinstance(modules[n.target], nn.Conv2d)
        and len(n.args) == 1
        and not n.kwargs
        and n.args[0] in neurons
    }
    dynamic = set()  # nodes whose value changes over time: IF layers and everything after them
    for n in nodes:
        if n in neurons or any(a in dynamic for a in n.all_input_nodes):
            dynamic.add(n)
    into_scan = {
        n
        for n in nodes  # a + b feeding only an IF layer: added inside its scan
        if n.op == "call_function"
        and n.target in ADDS
        and not n.kwargs
        and len(n.args) == 2
        and all(a in dynamic for a in n.args)
        and len(n.users) == 1
        and next(iter(n.users)) in neurons
    }
    into_fire = {
        n
        for n in spike_fed  # convs read only by an IF layer (or its add): fused with it
        if len(n.users) == 1 and next(iter(n.users)) in neurons | into_scan
    }
    last_use = {}
    for n in nodes:
        for a in n.all_input_nodes:
            last_use[a] = n
    free_after = {}
    for a, n in last_use.items():
        if a in dynamic:
            free_after.setdefault(n, []).append(a)

    batch = x.shape[0]
    static: dict[fx.Node, object] = {}
    buffers = {} if workspace is None else workspace  # node name -> reused output buffer
    outputs, done, chunk, measured = [], 0, 1, False
    with torch.no_grad():
        while done < steps:
            c = min([chunk, steps - done] + [t - done for t in marks if t > done])
            env: dict[fx.Node, object] = {}
            step_bytes = 0

            def keep(name, result):
                """Keep ``result`` as node ``name``'s buffer unless it already lies in it (it may
                be a view of the first rows: the kept buffer stays whole)."""
                kept = buffers.get(name)
                if kept is None or result.data_ptr() != kept.data_ptr():
                    buffers[name] = result
                return result

            def lookup(node, x):
                """conv(x) for a conv reading spikes: the lookup where it applies, into a kept buffer."""
                result = lookup_conv.conv2d(
                    modules[node.target], x, spike_fed[node].v_th, out=buffers.get(node.name)
                )
                return _call(node, (x,), {}, modules) if result is None else keep(node.name, result)

            def value(a, widen, pending=False):
                """Value of an argument node; a static tensor is repeated over the chunk's steps
                when it meets time-varying ones (``widen``). A conv left for its IF layer is run
                here unless the caller takes it as it is (``pending``)."""
                if a in env:
                    v = env[a]
                    if isinstance(v, _Pending) and not pending:
                        v = env[a] = lookup(v.node, v.x)
                    return v
                v = static[a]
                if widen and torch.is_tensor(v) and v.dim() > 0:
                    v = v.unsqueeze(0).expand(c, *v.shape).reshape(c * v.shape[0], *v.shape[1:])
                return v

            for node in nodes:
                if node.op == "output":
                    out = node.args[0]
                    y = (
                        env[out]
                        if out in env
                        else static[out]
                        .unsqueeze(0)
                        .expand(c, *static[out].shape)
                        .reshape(c * batch, *static[out].shape[1:])
                    )
                    outputs.append(y.reshape(c, batch, *y.shape[1:]).clone())
                    break
                if node in static:
                    continue
                is_dyn = node in dynamic
                if node.op == "placeholder":
                    static[node] = x
                    continue
                if node.op == "get_attr":
                    static[node] = _fetch(gm, node.target)
                    continue
                pair = None
                if node in into_scan:  # a broadcast or mixed add is computed here instead
                    pair = [value(a, widen=True, pending=True) for a in node.args]
                    if isinstance(pair[1], _Pending):
                        pair.reverse()  # a + b == b + a exactly: the conv goes first
                    if isinstance(pair[0], _Pending) and not (
                        torch.is_tensor(pair[1])
                        and pair[1].dtype == torch.float32
                        and pair[1].shape == pair[0].shape
                        and pair[1].is_contiguous(memory_format=torch.channels_last)
                    ):
                        pair = [value(a, widen=True) for a in node.args]  # runs the conv
                    if not isinstance(pair[0], _Pending) and (
                        not all(torch.is_tensor(t) for t in pair)
                        or pair[0].shape != pair[1].shape
                        or pair[0].dtype != pair[1].dtype
                        or pair[0].stride() != pair[1].stride()
                    ):
                        pair = None
                if pair is not None:
                    result = tuple(pair)  # a + b, summed by the IF layer that reads it
                elif node in neurons:
                    src = node.args[0]
                    current = value(src, widen=False, pending=True)
                    buf = buffers.get(node.name)
                    buf = buf[:c] if buf is not None and len(buf) >= c else None
                    layer, spikes = modules[node.target], None
                    pending, addend = current if isinstance(current, tuple) else (current, None)
                    if isinstance(pending, _Pending):  # the conv and this layer in one pass
                        conv_node = pending.node
                        spikes = layer.scan_conv(
                            modules[conv_node.target],
                            pending.x,
                            spike_fed[conv_node].v_th,
                            c,
                            out=buf,
                            addend=addend,
                        )
                        if spikes is None:  # the kernel declined: the conv, then the scan
                            conv_out = lookup(conv_node, pending.x)
                            current = conv_out if addend is None else (conv_out, addend)
                    if spikes is None:
                        if isinstance(current, tuple):
                            a, b = (t.view(c, batch, *t.shape[1:]) for t in current)
                            spikes = layer.scan(a, c, out=buf, addend=b)
                        elif src in dynamic:
                            spikes = layer.scan(
                                current.view(c, batch, *current.shape[1:]), c, out=buf
                            )
                        else:
                            spikes = layer.scan(current, c, constant=True, out=buf)
                    keep(node.name, spikes)
                    result = spikes.view(c * batch, *spikes.shape[2:])
                else:
                    args = fx.node.map_arg(node.args, lambda a: value(a, is_dyn))
                    kwargs = fx.node.map_arg(node.kwargs, lambda a: value(a, is_dyn))
                    if (
                        node in into_fire
                        and torch.is_tensor(args[0])
                        and args[0].dim() == 4
                        and lookup_conv.applies(modules[node.target], args[0])
                    ):
                        result = _Pending(
                            node,
                            args[0],  # run by the IF layer that reads it
                            lookup_conv.output_shape(modules[node.target], args[0]),
                        )
                    elif node in spike_fed:
                        result = lookup(node, args[0])
                    elif is_dyn and _is_zero_pad(node, args, kwargs):
                        result = keep(
                            node.name, _pad_into(args[0], args[1], buffers.get(node.name))
                        )
                    else:
                        result = _call(node, args, kwargs, modules)
                if not is_dyn:
                    static[node] = result
                    continue
                if isinstance(result, _Pending):
                    step_bytes += 4 * torch.Size(result.shape).numel() // c
                elif torch.is_tensor(result):
                    if result.dim() == 0 or result.shape[0] != c * batch:
                        raise SimulationError(
                            f"node '{node.name}' changed the batch dimension (got shape "
                            f"{tuple(result.shape)}, expected {c * batch} rows = {c} steps x "
                            f"{batch} samples); reshape with x.flatten(1) or "
                            f"x.view(x.size(0), -1), never with a fixed batch size"
                        )
                    step_bytes += result.numel() * result.element_size() // c
                env[node] = result
                for a in free_after.get(node, ()):
                    env.pop(a, None)
            done += c
            if on_mark is not None and done in marks:
                on_mark(done)
            if not measured:  # the first chunk is one step: size the others from it
                chunk, measured = max(1, max_chunk_bytes // max(step_bytes, 1)), True
    return _readout(outputs)


def simulate_stepwise(gm: fx.GraphModule, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The test oracle: every step runs the whole network on [batch, ...] tensors."""
    modules = dict(gm.named_modules())
    for m in modules.values():
        if isinstance(m, IFNeurons):
            m.reset(steps)
    outputs = []
    with torch.no_grad():
        for _ in range(steps):
            env = {}
            for node in gm.graph.nodes:
                if node.op == "placeholder":
                    env[node] = x
                elif node.op == "get_attr":
                    env[node] = _fetch(gm, node.target)
                elif node.op == "output":
                    outputs.append(env[node.args[0]].unsqueeze(0))
                else:
                    args = fx.node.map_arg(node.args, env.__getitem__)
                    kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
                    m = modules.get(node.target) if node.op == "call_module" else None
                    env[node] = (
                        m.step(args[0])
                        if isinstance(m, IFNeurons)
                        else _call(node, args, kwargs, modules)
                    )
    return _readout(outputs)
