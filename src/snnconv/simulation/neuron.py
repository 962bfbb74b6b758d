"""Integrate-and-fire neurons with soft reset: the only state in a converted network.

Per step t = 1..T, with input current I[t] and threshold V_th (a scalar or one value per channel):

    v[t] = v[t-1] + I[t] + b          b = V_th/(2T) for shift="bias" (bias_fraction 1/2), else 0
    s[t] = 1 if v[t] >= V_th else 0   at most one spike per step
    v[t] = v[t] - s[t] * V_th         soft reset (reset by subtraction), no leak
    output V_th * s[t]                spikes carry amplitude V_th

and v[0] = V_th/2 for shift="membrane", else 0. For a constant current z this gives, after T steps,

    rate = (V_th/T) * clip(floor(T*z/V_th + 1/2), 0, T)      (shift "bias" or "membrane")
    rate = (V_th/T) * clip(floor(T*z/V_th), 0, T)            (shift "none")

i.e. rounding with ties (T*z/V_th exactly k + 1/2) rounded up, because a neuron fires at v = V_th.
With "bias" that holds at the final step T only (b is set for T); with "membrane" it holds at every
t <= T, so the readout after any t steps is the round-quantised value for t steps.
"""

from __future__ import annotations

import torch
from torch import nn

from snnconv.kernels import cpu, lookup_conv

SHIFTS = ("bias", "membrane", "none")


def check_shift(shift: str) -> str:
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    return shift


class IFNeurons(nn.Module):
    """A layer of IF neurons. ``v_th``: float, or a 1-D tensor with one threshold per channel
    (dimension 1 of the current). Call ``reset(T)`` before each simulation of T steps."""

    def __init__(self, v_th: float | torch.Tensor, shift: str = "bias", bias_fraction: float = 0.5):
        super().__init__()
        v_th = torch.as_tensor(v_th, dtype=torch.float32).detach().clone()
        if v_th.dim() > 1 or v_th.numel() == 0:
            raise ValueError(
                f"v_th must be a scalar or a 1-D per-channel tensor, got shape {tuple(v_th.shape)}"
            )
        if not torch.isfinite(v_th).all() or (v_th <= 0).any():
            raise ValueError(f"v_th must be finite and > 0, got {v_th.tolist()}")
        self.register_buffer("v_th", v_th)
        self.shift = check_shift(shift)
        self.bias_fraction = float(bias_fraction)  # b = bias_fraction * V_th / T ("bias" shift)
        self.record = False  # when True, input currents are kept in `recorded`
        self.recorded: list[torch.Tensor] = []
        self.steps = None  # T of the current simulation
        self.t = 0  # steps done since reset
        self.v = None  # membrane potential minus t*b, [batch, ...] (see membrane);
        # its memory is reused by the next simulation
        self._spare = None  # the last simulation's membrane tensor, reused by the next
        self.spike_count = None  # spikes per neuron since reset, [batch, ...]

    def extra_repr(self) -> str:
        v = f"{self.v_th.item():g}" if self.v_th.dim() == 0 else f"per-channel[{self.v_th.numel()}]"
        return f"v_th={v}, shift={self.shift}"

    def reset(self, steps: int) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"T must be an integer >= 1, got {steps!r}")
        if self.v is not None:
            self._spare = self.v  # the next simulation's membranes go here: memory already mapped
        self.steps, self.v, self.spike_count, self.recorded, self.t = steps, None, None, [], 0

    def threshold_like(self, current: torch.Tensor) -> torch.Tensor:
        """V_th shaped to broadcast against a one-step current [batch, channels, ...]."""
        v_th = self.v_th.to(current.dtype)
        if v_th.dim() == 1:
            if current.dim() < 2 or current.shape[1] != v_th.numel():
                raise ValueError(
                    f"{v_th.numel()} per-channel thresholds do not fit a current of "
                    f"shape {tuple(current.shape)} (channels are dimension 1)"
                )
            v_th = v_th.view(-1, *([1] * (current.dim() - 2)))
        return v_th

    @property
    def membrane(self) -> torch.Tensor | None:
        """The membrane potential v[t]. The shift b is never added to the current; ``self.v``
        holds v[t] - t*b and the neuron fires at V_th - t*b, which is the same condition."""
        return None if self.v is None else self.v + self.t * self.bias(self.threshold_like(self.v))

    def bias(self, v_th: torch.Tensor) -> torch.Tensor | float:
        return v_th * (self.bias_fraction / self.steps) if self.shift == "bias" else 0.0

    def _start(self, like: torch.Tensor, v_th: torch.Tensor) -> None:
        if self.steps is None:
            raise RuntimeError("IFNeurons.reset(T) must be called before simulating")
        if self.v is None:
            start = v_th / 2 if self.shift == "membrane" else torch.zeros((), dtype=like.dtype)
            spare, self._spare = self._spare, None
            if (
                spare is None
                or spare.shape != like.shape
                or spare.stride() != like.stride()
                or spare.dtype != like.dtype
                or spare.device != like.device
            ):
                spare = torch.empty_like(like)
            self.v = spare.zero_().add_(start)
            self.spike_count = torch.zeros_like(like)

    def _thresholds(self, v_th: torch.Tensor, steps: int) -> torch.Tensor:
        """Firing thresholds of the next ``steps`` steps, V_th - t*b (see ``membrane``)."""
        done = torch.arange(
            self.t + 1, self.t + steps + 1, dtype=self.v.dtype, device=self.v.device
        )
        return v_th - done * self.bias(v_th)

    def step(self, current: torch.Tensor) -> torch.Tensor:
        """One time step: current [batch, ...] -> spikes (amplitude V_th), same shape."""
        v_th = self.threshold_like(current)
        self._start(current, v_th)
        if self.record:
            self.recorded.append(current.unsqueeze(0).clone())
        self.t += 1
        self.v = self.v + current
        fired = (self.v >= v_th - self.t * self.bias(v_th)).to(current.dtype)
        self.v = torch.addcmul(self.v, fired, v_th, value=-1)  # same rounding as scan()
        self.spike_count = self.spike_count + fired
        return fired * v_th

    def scan(
        self,
        current: torch.Tensor,
        steps: int,
        constant: bool = False,
        out: torch.Tensor | None = None,
        addend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``steps`` time steps at once: current [steps, batch, ...] (or [batch, ...] held for
        every step when ``constant``) -> spikes [steps, batch, ...], written into ``out`` if
        given (a reused buffer saves the page faults of fresh memory). With ``addend`` (same
        shape as a time-varying current) the input is current + addend, rounded exactly as a
        separate add would be, but added inside the fused kernel (one pass over memory less)."""
        if addend is not None and (constant or self.record):
            current, addend = current + addend, None
        one = current if constant else current[0]
        v_th = self.threshold_like(one)
        self._start(one, v_th)
        if self.record:
            self.recorded.append(
                current.expand(steps, *one.shape).clone() if constant else current.clone()
            )
        b = self.bias(v_th)
        if (
            out is None
            or out.shape != (steps,) + one.shape
            or out.stride()[1:] != one.stride()
            or out.dtype != one.dtype
            or out.device != one.device
        ):
            out = _empty_steps(one, steps)
        v = self.v
        if cpu.usable(current, constant, addend, v, out, v_th) and cpu.scan_available(v.device):
            theta = self._thresholds(v_th, steps)  # the loop's thresholds, same rounding
            with torch.profiler.record_function("snnconv::if_scan (fused)"):
                cpu.if_scan(current, constant, addend, v, theta, v_th, out, self.spike_count)
            self.t += steps
            return out
        for k in range(steps):  # three in-place passes per step; out[k] holds 0/1 spikes first
            v.add_(
                current if constant else current[k] if addend is None else current[k] + addend[k]
            )
            torch.ge(v, v_th - (self.t + k + 1) * b, out=out[k])
            v.addcmul_(out[k], v_th, value=-1)
        self.t += steps
        self.spike_count.add_(out.sum(0))
        return out.mul_(v_th)

    def scan_conv(
        self,
        conv: nn.Conv2d,
        spikes: torch.Tensor,
        amp: torch.Tensor,
        steps: int,
        out: torch.Tensor | None = None,
        addend: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """``scan(conv(spikes) viewed [steps, B, ...], steps, out=out, addend=addend)`` with the
        lookup convolution (lookup_conv.py) and this layer's update in one pass: spikes
        [steps*B, C, H, W] are the previous IF layer's output (amplitudes ``amp``), channels_last.
        The same numbers, bit for bit, as the lookup convolution followed by ``scan``. Returns
        None, having changed nothing, where the fused kernel does not apply (recording,
        per-channel V_th, fewer samples than threads, layouts it does not take, not a spike map)."""
        n = spikes.shape[0] if spikes.dim() == 4 else 0
        if (
            self.record
            or self.v_th.dim()
            or n == 0
            or n % steps
            or n // steps < torch.get_num_threads()
            or not lookup_conv.applies(conv, spikes)
        ):
            return None
        shape = lookup_conv.output_shape(conv, spikes)
        one = (n // steps, *shape[1:])
        if self.v is None:
            like = torch.empty(one, memory_format=torch.channels_last)
            self._start(like, self.threshold_like(like))
        v, v_th = self.v, self.threshold_like(self.v)
        if out is None or out.shape != (steps, *one) or out.stride()[1:] != v.stride():
            out = torch.empty(shape, memory_format=torch.channels_last).view(steps, *one)
        if addend is not None:
            if addend.shape != shape:
                return None
            addend = addend.view(steps, *one)
        if not cpu.usable(out, False, addend, v, out, v_th):
            return None
        theta = self._thresholds(v_th, steps)
        fire = (v, self.spike_count, theta, v_th.item(), addend, steps)
        done = lookup_conv.conv2d(conv, spikes, amp, out=out.view(shape), fire=fire)
        if done is None:
            return None
        self.t += steps
        return done.view(steps, *one)


def _empty_steps(one: torch.Tensor, steps: int) -> torch.Tensor:
    """Uninitialised [steps, *one.shape], in ``one``'s memory format (channels_last stays so)."""
    if (
        one.dim() == 4
        and not one.is_contiguous()
        and one.is_contiguous(memory_format=torch.channels_last)
    ):
        flat = torch.empty(
            (steps * one.shape[0],) + tuple(one.shape[1:]),
            dtype=one.dtype,
            device=one.device,
            memory_format=torch.channels_last,
        )
        return flat.view(steps, *one.shape)
    return torch.empty((steps,) + tuple(one.shape), dtype=one.dtype, device=one.device)


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
