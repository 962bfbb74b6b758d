"""An IF layer over a chunk of steps: the faster paths of ``neuron.if_step``, equal to it bit for
bit.

``scan`` runs c steps of one layer at once on a current [c, batch, ...] (or a constant one): by the
compiled kernel of the device where one applies (``kernels.backend``), else by the PyTorch loop
below, three in-place passes per step (add, compare, subtract V_th on a spike). Signed neurons
always take a PyTorch loop of their own (``_scan_signed``). Both perform the
float operations of ``if_step`` in the same order. With ``addend`` the input is current + addend,
rounded exactly as the separate add would be, but summed inside the kernel (one pass over memory
less). ``scan_conv`` runs the lookup convolution of the previous layer's spikes and this layer's
update in one compiled pass (``kernels.lookup_conv``), never writing the current to memory.

tests/test_neurons.py and tests/test_fused.py hold these against ``if_step``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from snnconv.kernels import backend, cpu, lookup_conv
from snnconv.simulation.neuron import IFNeurons, settle


def empty_steps(one: torch.Tensor, steps: int) -> torch.Tensor:
    """Uninitialised [steps, *one.shape], in ``one``'s memory format (channels_last stays so)."""
    if (
        one.dim() == 4
        and not one.is_contiguous()
        and one.is_contiguous(memory_format=torch.channels_last)
    ):
        flat = torch.empty(
            (steps * one.shape[0], *one.shape[1:]),
            dtype=one.dtype,
            device=one.device,
            memory_format=torch.channels_last,
        )
        return flat.view(steps, *one.shape)
    return torch.empty((steps, *one.shape), dtype=one.dtype, device=one.device)


def _fits(out: torch.Tensor | None, one: torch.Tensor, steps: int) -> bool:
    """``out`` can hold [steps, *one.shape] spikes with ``one``'s layout at every step."""
    return (
        out is not None
        and out.shape == (steps, *one.shape)
        and out.stride()[1:] == one.stride()
        and out.dtype == one.dtype
        and out.device == one.device
    )


def scan(
    layer: IFNeurons,
    current: torch.Tensor,
    steps: int,
    constant: bool = False,
    out: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
) -> torch.Tensor:
    """``steps`` steps of ``layer``: current [steps, batch, ...] (or [batch, ...] held for every
    step when ``constant``) -> spikes [steps, batch, ...] (amplitude V_th), in ``out`` if it
    fits."""
    recorder = layer.recorder
    if addend is not None and (constant or recorder is not None):
        current, addend = current + addend, None
    one = current if constant else current[0]
    state = layer.start(one)
    p, v_th = layer.params, layer.threshold_like(one)
    if recorder is not None:
        recorder.append(current.expand(steps, *one.shape).clone() if constant else current.clone())
    if not _fits(out, one, steps):
        out = empty_steps(one, steps)
    v = state.v
    if p.signed:
        return _scan_signed(layer, current, steps, constant, out, addend)
    if cpu.usable(current, constant, addend, v, out, v_th) and cpu.scan_available(v.device):
        theta, amp = p.kernel_thresholds(v.dtype, layer.steps, state.t, steps)
        with torch.profiler.record_function("snnconv::if_scan (fused)"):
            cpu.if_scan(current, constant, addend, v, theta, amp, out, state.count, state.unset)
        state.t, state.unset = state.t + steps, False
        return out
    settle(state)
    b = p.bias(v_th, layer.steps)
    for k in range(steps):  # three in-place passes per step; out[k] holds 0/1 spikes first
        v.add_(current if constant else current[k] if addend is None else current[k] + addend[k])
        torch.ge(v, v_th - (state.t + k + 1) * b, out=out[k])
        v.addcmul_(out[k], v_th, value=-1)
    state.t += steps
    state.count.add_(out.sum(0))
    return out.mul_(v_th)


def _scan_signed(
    layer: IFNeurons,
    current: torch.Tensor,
    steps: int,
    constant: bool,
    out: torch.Tensor,
    addend: torch.Tensor | None,
) -> torch.Tensor:
    """``scan`` for signed neurons: the C++ kernel where it applies (CPU), else the operations of
    ``if_step`` in place (out[k] holds s[t] in {-1, 0, 1} until the final scaling by V_th)."""
    state, p = layer.state, layer.params
    v, v_th, count = state.v, layer.threshold_like(state.v), state.count
    if (
        cpu.usable(current, constant, addend, v, out, v_th)
        and state.events.stride() == count.stride() == v.stride()
        and backend.scan_backend(v.device) == "cpp"
    ):
        theta, amp = p.kernel_thresholds(v.dtype, layer.steps, state.t, steps)
        with torch.profiler.record_function("snnconv::if_scan (signed, fused)"):
            cpu.kernel().if_scan(
                current,
                constant,
                addend,
                v,
                theta,
                amp,
                out,
                count,
                events=state.events,
                fresh=state.unset,
            )
        state.t, state.unset = state.t + steps, False
        return out
    settle(state)
    b = p.bias(v_th, layer.steps)
    negative = torch.empty(v.shape, dtype=torch.bool, device=v.device)
    for k in range(steps):
        v.add_(current if constant else current[k] if addend is None else current[k] + addend[k])
        theta = v_th - (state.t + k + 1) * b
        s = out[k]
        torch.ge(v, theta, out=s)
        torch.lt(v, theta - v_th, out=negative)
        negative.logical_and_(count > 0)
        s.sub_(negative.to(s.dtype))
        v.addcmul_(s, v_th, value=-1)
        count.add_(s)
        state.events.add_(s.abs())
    state.t += steps
    return out.mul_(v_th)


def scan_conv(
    layer: IFNeurons,
    conv: nn.Conv2d,
    spikes: torch.Tensor,
    amp: torch.Tensor,
    steps: int,
    out: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
    negative: bool = False,
    masks: cpu.SpikeMasks | None = None,
    masks_out: cpu.SpikeMasks | None = None,
    addend_masks: tuple[cpu.SpikeMasks, torch.Tensor | float] | None = None,
) -> torch.Tensor | None:
    """``scan(layer, conv(spikes) viewed [steps, B, ...], steps, out=out, addend=addend)`` with
    the lookup convolution and the update in one pass: ``spikes`` [steps*B, C, H, W] are the
    previous IF layer's output (amplitudes ``amp``; ``negative``: a signed layer's, -amp too),
    channels_last. The same numbers, bit for bit, as the conv, then ``scan``. ``masks``: the
    masks of ``spikes`` that layer handed on (read instead of the values); ``masks_out``: where
    this layer's spikes' masks go for the next conv (written only when the result is not None);
    ``addend_masks``: (masks, V_th) of the spikes ``addend`` holds, read instead of it.
    Returns None, having changed nothing, where the fused kernel does not apply (recording,
    fewer samples than threads, layouts it does not take, not a spike map)."""
    n = spikes.shape[0] if spikes.dim() == 4 else 0
    if (
        layer.recorder is not None
        or n == 0
        or n % steps
        or n // steps < torch.get_num_threads()
        or not lookup_conv.applies(conv, spikes)
    ):
        return None
    shape = lookup_conv.output_shape(conv, spikes)
    one = (n // steps, *shape[1:])
    if layer.state is None:
        layer.start(torch.empty(one, memory_format=torch.channels_last))
    state = layer.state
    v, v_th = state.v, layer.threshold_like(state.v)
    if out is None or out.shape != (steps, *one) or out.stride()[1:] != v.stride():
        out = torch.empty(shape, memory_format=torch.channels_last).view(steps, *one)
    if addend is not None:
        if addend.shape != shape:
            return None
        addend = addend.view(steps, *one)
    if not cpu.usable(out, False, addend, v, out, v_th):
        return None
    if state.events is not None and state.events.stride() != v.stride():
        return None
    if masks_out is not None and masks_out.negative != (state.events is not None):
        return None  # masks made for the other kind of neuron: they would stay unwritten
    fire = _fire(layer, steps, shape[1], addend, masks_out, addend_masks)
    done = lookup_conv.conv2d(
        conv, spikes, amp, out=out.view(shape), fire=fire, negative=negative, masks=masks
    )
    if done is None:
        return None
    state.t, state.unset = state.t + steps, False
    return done.view(steps, *one)


def _fire(layer, steps: int, channels: int, addend, masks_out, addend_masks) -> cpu.FusedIF:
    """The fused update's arguments: the kernel takes one threshold per step and channel and
    one amplitude per channel (a layer's one V_th repeated), also for the addend's masks."""
    state = layer.state
    theta, v_th = layer.params.kernel_thresholds(torch.float32, layer.steps, state.t, steps)
    per_channel = (channels,)
    fire = cpu.FusedIF(
        state.v,
        state.count,
        theta.expand(steps, channels).contiguous(),
        v_th.expand(per_channel).contiguous(),
        addend,
        steps,
        state.events,
        masks_out,
        fresh=state.unset,
    )
    if addend_masks is None:
        return fire
    held, amplitude = addend_masks
    amplitude = torch.as_tensor(amplitude, dtype=torch.float32).expand(per_channel).contiguous()
    return dataclasses.replace(fire, addend_masks=held, addend_vth=amplitude)
