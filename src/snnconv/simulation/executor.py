"""Run a converted network for T steps and return its readout after every step (the fast path).

The graph runs once per chunk of c time steps, node by node, with time folded into the batch (row
t*B + b of a [c*B, ...] tensor is sample b at step t of the chunk), so each conv runs once over all
c*B maps and each IF layer scans its c steps in a tight loop. What each node does follows the
network's ``Plan`` (plan.py): a conv reading spikes runs as a table lookup
(``kernels.lookup_conv``); a sum read only by an IF layer is handed to its scan (``ScanSum``);
a lookup conv read only by an IF layer is left pending (``PendingConv``) and run by that layer
in one pass with its update; static values (the input and what precedes the first IF layer)
are computed once. Outputs that are written every chunk go into buffers kept in the workspace
(workspace.py).

Memory grows with the chunk length c, not with T: c is chosen to fit ``max_chunk_bytes`` (default
``default_chunk_bytes``) from the bytes one step writes. The first run of a network with a given
``signature`` (input shape, dtype and layout, threads, backend, recording, the parameters'
memory) runs its first step alone to measure them and keeps the figure in the plan
(``Plan.probes``); later runs with that signature size every chunk from the start (a step
alone costs a chunk's fixed work; docs/design.md, "Chunk length", has the measurements). A
chunk that writes more than the figure says raises it for the chunks after.

Readout after step t: out[t-1] = (1/t) * sum_{s<=t} y[s], where y[s] is the network output at step
s (the last linear layer's current with readout="current", V_th-amplitude spikes with "spikes").
``stepwise.simulate_stepwise`` is the plain loop this is tested against.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx

from snnconv.exceptions import SimulationError
from snnconv.kernels import backend, cpu, lookup_conv
from snnconv.simulation import workspace as wsp
from snnconv.simulation.plan import Kind, Plan, Probe, plan_for

CPU_CHUNK_BYTES = 1 << 30


def default_chunk_bytes(device: torch.device) -> int:
    """Bytes of one chunk's tensors (those a step writes: ``_account``). CPU: 1 GiB (with output
    buffers reused across calls; measured on the shipped ResNet-20, batch 128, T=32, 35 MiB a
    step: 1.10 s at one step per chunk, 0.72 s at 256 MiB, 0.69 s at 512 MiB and at 1 GiB, 0.68 s
    at 2 GiB; Intel Xeon, AVX-512). CUDA: an eighth of the card's memory, since there each chunk
    costs a fixed host overhead (one Python pass over the graph, a launch per op) and the caching
    allocator reuses memory."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 8
    return CPU_CHUNK_BYTES


@dataclass(frozen=True)
class PendingConv:
    """A lookup convolution of spikes (its node, its input, its output shape) left for the IF
    layer that reads it, which runs both in one pass (``if_scan.scan_conv``)."""

    node: fx.Node
    x: torch.Tensor
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ScanSum:
    """``a + b`` (equal shapes, dtypes and strides), summed by the IF layer that reads it inside
    its scan; ``a`` may be a pending conv."""

    a: torch.Tensor | PendingConv
    b: torch.Tensor
    nodes: tuple = (None, None)  # the nodes whose values a and b are


Value = torch.Tensor | PendingConv | ScanSum | object


def execute(node: fx.Node, args, kwargs, modules: dict):
    """Run one fx call node on concrete values; failures become SimulationError naming the node."""
    try:
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
    except SimulationError:
        raise
    except Exception as err:
        shapes = [tuple(a.shape) for a in args if torch.is_tensor(a)]
        raise SimulationError(
            f"node '{node.name}' failed on input shape(s) {shapes}: {err}"
        ) from err
    raise AssertionError(node.op)


def fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def is_zero_pad(node: fx.Node, args, kwargs) -> bool:
    """An F.pad call that adds zeros (constant mode, value 0 or None, no negative pad)."""
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


def memory_bytes(device: torch.device) -> int | None:
    """The memory a tensor on ``device`` can at most take: the GPU's, or the machine's RAM
    (None when the platform does not say)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_readout_fits(steps: int, one_step: torch.Tensor, memory: int | None) -> None:
    """SimulationError when the readout after every step, [steps, *one_step.shape], cannot fit in
    ``memory`` bytes (it would fail to allocate or be killed by the OS later)."""
    need = steps * one_step.numel() * one_step.element_size()
    if memory is not None and need > memory:
        raise SimulationError(
            f"T={steps} needs {need / 2**30:.1f} GiB for the readout after every step "
            f"([T, {', '.join(map(str, one_step.shape))}] {one_step.dtype}), more than the "
            f"{memory / 2**30:.1f} GiB of memory here: use a smaller T or batch"
        )


class Readout:
    """out[t-1] = (1/t) sum_{s<=t} y[s], written into one [T, batch, ...] tensor as the chunks of
    y arrive, so the readout costs its own size and no more. The running sum is carried step
    after step in float64 on the CPU (as ``torch.cumsum`` accumulates float32 there), so the
    result is the same, bit for bit, whatever the chunking and equal to ``y.cumsum(0) / t``."""

    def __init__(self, steps: int):
        self.steps, self.done = steps, 0
        self.out: torch.Tensor | None = None
        self.total: torch.Tensor | None = None

    BLOCK_BYTES = 32 << 20  # the float64 temporaries of one add() stay below this

    def add(self, y: torch.Tensor) -> None:
        """Append the outputs y [c, batch, ...] of the next c steps."""
        rows = max(1, self.BLOCK_BYTES // max(1, 8 * y[0].numel()))
        for start in range(0, y.shape[0], rows):
            self._add(y[start : start + rows])

    def _add(self, y: torch.Tensor) -> None:
        if self.out is None:
            check_readout_fits(self.steps, y[0], memory_bytes(y.device))
            self.out = torch.empty((self.steps, *y.shape[1:]), dtype=y.dtype, device=y.device)
            wide = y.is_floating_point() and y.device.type == "cpu"
            self.total = torch.zeros(
                y.shape[1:], dtype=torch.float64 if wide else y.dtype, device=y.device
            )
        c = y.shape[0]
        sums = torch.cat([self.total.unsqueeze(0), y.to(self.total.dtype)]).cumsum(0)[1:]
        self.total = sums[-1].clone()
        t = torch.arange(self.done + 1, self.done + c + 1, dtype=y.dtype, device=y.device)
        rows = self.out[self.done : self.done + c]
        torch.div(sums.to(y.dtype), t.view(-1, *([1] * (y.dim() - 1))), out=rows)
        self.done += c


@dataclass
class Chunk:
    """One pass of the graph over c steps: the values of this chunk (``env``), those computed
    once (``static``), the kept buffers, and the bytes one step needs (measured on the way)."""

    gm: fx.GraphModule
    plan: Plan
    modules: dict
    static: dict
    ws: dict
    c: int
    batch: int
    env: dict = field(default_factory=dict)
    step_bytes: int = 0
    # IF node -> (its masks for plan.handoff's conv, the spikes' data pointer and version then)
    masks: dict = field(default_factory=dict)
    # IF node -> (its masks, V_th, its spike map) while the map is not written (plan.masks_only)
    unwritten: dict = field(default_factory=dict)

    def widen(self, v):
        """A static tensor repeated over the chunk's steps, to meet time-varying ones."""
        if torch.is_tensor(v) and v.dim() > 0:
            return (
                v.unsqueeze(0).expand(self.c, *v.shape).reshape(self.c * v.shape[0], *v.shape[1:])
            )
        return v

    def value(self, a: fx.Node, widen: bool, pending: bool = False) -> Value:
        """The value of argument node ``a``; a pending conv is run here unless the caller takes
        it as it is (``pending``)."""
        if a in self.env:
            v = self.env[a]
            if isinstance(v, PendingConv) and not pending:
                v = self.env[a] = self.lookup(v.node, v.x)
            if a in self.unwritten and not pending:
                self.write(a)
            return v
        v = self.static[a]
        return self.widen(v) if widen else v

    def write(self, a: fx.Node) -> None:
        """Write the spike map of IF node ``a`` that only its masks held so far (a reader needs
        the values after all)."""
        masks, v_th, spikes = self.unwritten.pop(a)
        masks.spikes_into(spikes, v_th)
        self.count(spikes)

    def count(self, t: torch.Tensor) -> None:
        """Add the bytes per step of ``t``, a tensor of this chunk's c steps, to ``step_bytes``."""
        self.step_bytes += t.numel() * t.element_size() // self.c

    def lookup(self, node: fx.Node, x: torch.Tensor) -> torch.Tensor:
        """conv(x) for a conv reading spikes: the lookup kernel into a kept buffer where it
        applies, else the module."""
        conv = self.modules[node.target]
        source = self.plan.amplitude[node]
        amp = self.modules[source.target].v_th
        masks = _masks_of(self, source, x)
        if lookup_conv.applies(conv, x):
            shape = lookup_conv.output_shape(conv, x)
            out = wsp.take(self.ws, node.name, shape, x.dtype, x.device, torch.channels_last)
            result = lookup_conv.conv2d(
                conv, x, amp, out=out, negative=node in self.plan.negative, masks=masks
            )
            if result is not None:
                self.count(result)
                return result
        if source in self.unwritten:  # the module reads the values
            self.write(source)
        result = execute(node, (x,), {}, self.modules)
        self.count(result)
        return result


def _scan_sum(ch: Chunk, node: fx.Node):
    """A ScanSum for the IF layer that reads ``node``, or the plain sum where the scan cannot
    take the two (a broadcast or mixed add)."""
    pair = [ch.value(a, widen=True, pending=True) for a in node.args]
    nodes = list(node.args)
    if isinstance(pair[1], PendingConv):
        pair.reverse()  # a + b == b + a exactly: the conv goes first
        nodes.reverse()
    a, b = pair
    if isinstance(a, PendingConv) and not (
        torch.is_tensor(b)
        and b.dtype == torch.float32
        and b.shape == a.shape
        and b.is_contiguous(memory_format=torch.channels_last)
    ):
        a, b = (ch.value(n, widen=True) for n in node.args)  # runs the conv
    if isinstance(a, PendingConv) or (
        torch.is_tensor(a)
        and torch.is_tensor(b)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and a.stride() == b.stride()
    ):
        return ScanSum(a, b, tuple(nodes))
    return execute(node, [ch.value(n, widen=True) for n in node.args], {}, ch.modules)


def _neuron(ch: Chunk, node: fx.Node) -> torch.Tensor:
    """Run IF layer ``node`` over the chunk's c steps; spikes [c*B, ...] in a kept buffer."""
    layer, src, c, batch = ch.modules[node.target], node.args[0], ch.c, ch.batch
    current = ch.value(src, widen=False, pending=True)
    addend, nodes = None, (None, None)
    if isinstance(current, ScanSum):
        current, addend, nodes = current.a, current.b, current.nodes
    spikes = None
    if isinstance(current, PendingConv):  # the conv and this layer in one pass
        out = wsp.take(
            ch.ws, node.name, current.shape, torch.float32, current.x.device, torch.channels_last
        )
        conv = ch.modules[current.node.target]
        source = ch.plan.amplitude[current.node]
        masks_out = _masks_for(ch, node, current.shape, layer.signed)
        spikes = layer.scan_conv(
            conv,
            current.x,
            ch.modules[source.target].v_th,
            c,
            out=out.view(c, batch, *out.shape[1:]),
            addend=addend,
            negative=current.node in ch.plan.negative,
            masks=_masks_of(ch, source, current.x),
            masks_out=masks_out,
            addend_masks=ch.unwritten[nodes[1]][:2] if nodes[1] in ch.unwritten else None,
        )
        if spikes is None:  # the kernel declined: the conv, then the scan
            current = ch.lookup(current.node, current.x)
        elif masks_out is not None:
            ch.count(masks_out.data)
            ch.masks[node] = (masks_out, out.data_ptr(), out._version)
            if masks_out.only:
                ch.unwritten[node] = (masks_out, layer.v_th, out)
    if spikes is None:
        for n in nodes:  # the scan reads their values
            if n in ch.unwritten:
                ch.write(n)
        constant = src not in ch.plan.dynamic and addend is None
        rows = current.shape[0] * (c if constant else 1)
        out = wsp.take_like(ch.ws, node.name, (rows, *current.shape[1:]), current)
        out = out.view(c, batch, *out.shape[1:])
        if constant:
            spikes = layer.scan(current, c, constant=True, out=out)
        else:
            view = lambda t: t.view(c, batch, *t.shape[1:])
            spikes = layer.scan(
                view(current), c, out=out, addend=None if addend is None else view(addend)
            )
    return spikes.view(c * batch, *spikes.shape[2:])


def _masks_for(ch: Chunk, node: fx.Node, shape, signed: bool) -> cpu.SpikeMasks | None:
    """Kept buffers for the masks of IF node ``node``'s spikes (``shape``) in the layout of the
    conv that reads them (plan.handoff), or None where there is no such conv."""
    reader = ch.plan.handoff.get(node)
    layout = None if reader is None else lookup_conv.mask_layout(ch.modules[reader.target])
    if layout is None:
        return None
    gb, ph, pw = layout
    n, c, h, w = shape
    size = (n, cpu.mask_bytes(c, h, w, gb, ph, pw, signed))
    data = wsp.take(ch.ws, node.name + ".masks", size, torch.uint8, torch.device("cpu"))
    nonzero = wsp.take(ch.ws, node.name + ".nonzero", (1,), torch.int64, torch.device("cpu"))
    return cpu.SpikeMasks(data, nonzero, gb, ph, pw, signed, node in ch.plan.masks_only)


def _masks_of(ch: Chunk, node: fx.Node, x: torch.Tensor) -> cpu.SpikeMasks | None:
    """The masks IF node ``node`` handed off in this chunk, if ``x`` is still the spike map they
    were made from (same memory, not changed in place since: its version counter)."""
    kept = ch.masks.get(node)
    if kept is None:
        return None
    masks, ptr, version = kept
    return masks if x.data_ptr() == ptr and x._version == version else None


def _spike_conv(ch: Chunk, node: fx.Node, x) -> Value:
    if (
        node in ch.plan.fire_convs
        and torch.is_tensor(x)
        and x.dim() == 4
        and lookup_conv.applies(ch.modules[node.target], x)
    ):  # run by the IF layer that reads it
        return PendingConv(node, x, lookup_conv.output_shape(ch.modules[node.target], x))
    return ch.lookup(node, x)


def _call(ch: Chunk, node: fx.Node, dyn: bool) -> Value:
    """The value of a call node of this chunk, by its kind in the plan."""
    kind = ch.plan.kind[node]
    if kind is Kind.NEURON:
        return _neuron(ch, node)
    if kind is Kind.SCAN_SUM:
        return _scan_sum(ch, node)
    if kind is Kind.SPIKE_CONV:  # its input as it is: masks only, it may be
        return _spike_conv(ch, node, ch.value(node.args[0], dyn, pending=True))
    args = fx.node.map_arg(node.args, lambda a: ch.value(a, dyn))
    kwargs = fx.node.map_arg(node.kwargs, lambda a: ch.value(a, dyn))
    if kind is Kind.PAD and dyn and is_zero_pad(node, args, kwargs):
        x, pad = args
        shape = wsp.pad_shape(x, pad)
        out = wsp.take(ch.ws, node.name, tuple(shape), x.dtype, x.device, wsp.pad_layout(x))
        return wsp.pad_into(x, pad, out)
    return execute(node, args, kwargs, ch.modules)


def _account(ch: Chunk, node: fx.Node, result: Value) -> None:
    """Check a time-varying result kept the folded batch; add its bytes per step. A pending conv
    and a spike map that only its masks hold take no memory until they are written (counted
    then, by ``Chunk.lookup`` and ``Chunk.write``): the conv fused into its IF layer never is."""
    if torch.is_tensor(result):
        if result.dim() == 0 or result.shape[0] != ch.c * ch.batch:
            raise SimulationError(
                f"node '{node.name}' changed the batch dimension (got shape "
                f"{tuple(result.shape)}, expected {ch.c * ch.batch} rows = {ch.c} steps x "
                f"{ch.batch} samples); reshape with x.flatten(1) or x.view(x.size(0), -1), never "
                f"with a fixed batch size"
            )
        if node not in ch.unwritten:
            ch.count(result)


def run_chunk(ch: Chunk, x: torch.Tensor) -> torch.Tensor:
    """One pass of the graph over the chunk; returns the outputs [c, batch, ...] (possibly a view
    of a kept buffer: read it before the next chunk)."""
    for node in ch.plan.nodes:
        kind = ch.plan.kind[node]
        if kind is Kind.OUTPUT:
            y = ch.value(ch.plan.output, widen=True)
            return y.reshape(ch.c, ch.batch, *y.shape[1:])
        if node in ch.static:
            continue
        if kind is Kind.INPUT:
            ch.static[node] = x
            continue
        if kind is Kind.ATTR:
            ch.static[node] = fetch_attr(ch.gm, node.target)
            continue
        dyn = node in ch.plan.dynamic
        result = _call(ch, node, dyn)
        if not dyn:
            ch.static[node] = result
            continue
        _account(ch, node, result)
        ch.env[node] = result
        for a in ch.plan.free_after.get(node, ()):
            ch.env.pop(a, None)
    raise AssertionError("graph without output")


def signature(gm: fx.GraphModule, plan: Plan, modules: dict, x: torch.Tensor) -> tuple:
    """What decides which values a step writes besides the plan: the input's shape, dtype,
    layout and device, the thread count and backend (the fused kernel declines batches smaller
    than the threads), recording (which declines it too), and the parameters' memory and versions
    (their layout decides where the lookup applies)."""
    return (
        tuple(x.shape),
        x.dtype,
        x.stride(),
        x.device,
        torch.get_num_threads(),
        backend.enabled(),
        any(modules[n.target].recorder is not None for n in plan.neurons),
        tuple((p.data_ptr(), p._version, p.stride()) for p in gm.parameters()),
    )


SIGNATURES_KEPT = 8  # per plan: a training loop changes the parameters' versions every step


def _remember(memo: dict, key: tuple, value: Probe) -> None:
    """memo[key] = value, forgetting the oldest signature beyond SIGNATURES_KEPT."""
    memo.pop(key, None)
    memo[key] = value
    while len(memo) > SIGNATURES_KEPT:
        memo.pop(next(iter(memo)))


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
    the output buffers from one call to the next."""
    marks = sorted({t for t in marks if 0 < t <= steps})
    if max_chunk_bytes is None:
        max_chunk_bytes = default_chunk_bytes(x.device)
    plan = plan_for(gm)
    modules = dict(gm.named_modules())
    for n in plan.neurons:
        modules[n.target].reset(steps)
    static: dict = {}
    ws = {} if workspace is None else workspace
    steps_in = lambda step_bytes: max(1, max_chunk_bytes // max(step_bytes, 1))  # noqa: E731
    key = signature(gm, plan, modules, x)
    probe = plan.probes.get(key)
    known, chunk = None, 1  # no probe yet: the first chunk is one step, which measures it
    if probe is not None:  # a readout that cannot fit is refused before anything runs
        one = torch.empty(probe.out_shape, dtype=probe.out_dtype, device="meta")
        check_readout_fits(steps, one, memory_bytes(x.device))
        known, chunk = probe.step_bytes, steps_in(probe.step_bytes)
    result, done = Readout(steps), 0
    with torch.no_grad():
        while done < steps:
            c = min([chunk, steps - done] + [t - done for t in marks if t > done])
            ch = Chunk(gm, plan, modules, static, ws, c, x.shape[0])
            result.add(run_chunk(ch, x))
            done += c
            if on_mark is not None and done in marks:
                on_mark(done)
            if known is None or ch.step_bytes > known:  # size the chunks after from it
                known = ch.step_bytes
                out = result.out
                _remember(plan.probes, key, Probe(known, tuple(out.shape[1:]), out.dtype))
                chunk = steps_in(known)
    return result.out
