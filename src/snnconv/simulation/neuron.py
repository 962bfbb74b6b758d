"""Integrate-and-fire neurons with soft reset: the only state in a converted network.

Per step t = 1..T, with input current I[t] and threshold V_th (a scalar or one value per channel):

    v[t] = v[t-1] + I[t] + b          b = V_th/(2T) for shift="bias" (bias_fraction 1/2), else 0
    s[t] = 1 if v[t] >= V_th else 0   at most one spike per step
    v[t] = v[t] - s[t] * V_th         soft reset (reset by subtraction), no leak
    output V_th * s[t]                spikes carry amplitude V_th

Signed neurons (``signed=True``, ``convert(neuron="signed")``) may also take a spike back:

    s[t] = -1 if v[t] < 0 and n[t-1] > 0      n[t] = s[1] + ... + s[t], the net spike count

(the same soft reset then adds V_th back). The membrane stays in [0, V_th) whenever one spike per
step can keep up, so n[t] follows round((v[0] + I[1] + ... + I[t]) / V_th) clipped to [0, t] at
every t: an early excess of spikes, the "unevenness" error of an ordinary IF neuron, is undone
when the input turns out lower. Every spike, either sign, is one event (``spike_events``; the
synaptic operations count events), and the rate is V_th * n[T] / T as before.

and v[0] = V_th/2 for shift="membrane", else 0, plus ``v_init`` where calibration set one (a
per-channel or per-neuron offset of the initial membrane). For a constant current z this gives,
after T steps,

    rate = (V_th/T) * clip(floor(T*z/V_th + 1/2), 0, T)      (shift "bias" or "membrane")
    rate = (V_th/T) * clip(floor(T*z/V_th), 0, T)            (shift "none")

i.e. rounding with ties (T*z/V_th exactly k + 1/2) rounded up, because a neuron fires at v = V_th.
With "bias" that holds at the final step T only (b is set for T); with "membrane" it holds at every
t <= T, so the readout after any t steps is the round-quantised value for t steps.

The shift b is never added to the current (that would be one more pass over memory per step): the
state holds u[t] = v[t] - t*b and the neuron fires when u[t] >= V_th - t*b, the same condition.

Layout of this module (Norse's functional core + module wrapper): ``IFParameters`` and ``IFState``
are small typed records; ``if_step`` is the pure reference update, *the* definition every faster
path (``simulation.if_scan``: the PyTorch loop over a chunk, the C++ and Triton kernels, the
conv-fused kernel) is tested against, bit for bit; ``IFNeurons`` is the nn.Module that holds one
layer's parameters and state and hands them to those functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from snnconv.options import check_shift, check_steps

if TYPE_CHECKING:
    from snnconv.kernels.cpu import SpikeMasks

__all__ = ["IFNeurons", "IFParameters", "IFState", "check_finite", "if_step", "recording"]


@dataclass(frozen=True)
class IFParameters:
    """One layer's constants: ``v_th`` (0-dim, or 1-D per channel = dimension 1 of the current),
    the shift, b = ``bias_fraction`` * V_th / T for shift "bias", ``v_init``, an offset of the
    initial membrane that broadcasts against one sample's current ([C, 1, 1] per channel, [C, H,
    W] per neuron; None: no offset), and ``signed`` (negative spikes allowed)."""

    v_th: torch.Tensor
    shift: str = "bias"
    bias_fraction: float = 0.5
    v_init: torch.Tensor | None = None
    signed: bool = False

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

    def bias(self, v_th: torch.Tensor, steps: int) -> torch.Tensor | float:
        """b, the shift added every step (0 unless shift "bias")."""
        return v_th * (self.bias_fraction / steps) if self.shift == "bias" else 0.0

    def kernel_thresholds(
        self, dtype: torch.dtype, steps: int, done: int, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For the fused kernels: the firing thresholds V_th - t*b of steps done+1 .. done+n as
        [n, P] and the amplitudes V_th as [P] (P = 1 for one V_th per layer, else one per
        channel), computed with the same float operations as ``if_step``."""
        v_th = self.v_th.to(dtype).reshape(-1).contiguous()
        t = torch.arange(done + 1, done + n + 1, dtype=dtype, device=v_th.device).unsqueeze(1)
        return (v_th - t * self.bias(v_th, steps)).contiguous(), v_th


@dataclass
class IFState:
    """A layer's state during a simulation of ``steps`` steps: ``v`` = membrane minus t*b and
    ``count`` = net spikes so far, both [batch, ...]; ``t`` = steps done; ``events`` = spikes of
    either sign so far (signed neurons only, else None: ``count`` is that). ``unset``: before
    the first step, ``count`` and ``events`` are not written yet and stand for zeros (the
    compiled kernels write them at the first step instead of adding to them, one pass over
    memory less than zeroing them first; ``settle`` zeroes them for everything else)."""

    v: torch.Tensor
    count: torch.Tensor
    t: int = 0
    events: torch.Tensor | None = None
    unset: bool = False


def settle(state: IFState) -> IFState:
    """``state`` with ``count`` and ``events`` holding their values (zeros where ``unset``)."""
    if state.unset:
        state.count.zero_()
        if state.events is not None:
            state.events.zero_()
        state.unset = False
    return state


def initial_state(
    p: IFParameters, like: torch.Tensor, spare: torch.Tensor | None = None
) -> IFState:
    """v[0] (V_th/2 for shift "membrane", else 0, plus ``v_init``) and zero counts (``unset``:
    not written yet) shaped like ``like`` (one step's current). ``spare``, a membrane tensor of
    the same shape, layout and dtype, is reused: its memory is already mapped (fresh memory
    costs page faults)."""
    v_th = p.threshold_like(like)
    start = v_th / 2 if p.shift == "membrane" else torch.zeros((), dtype=like.dtype)
    if (
        spare is None
        or spare.shape != like.shape
        or spare.stride() != like.stride()
        or spare.dtype != like.dtype
        or spare.device != like.device
    ):
        spare = torch.empty_like(like)
    start = start.to(like.dtype).expand_as(like)
    if p.v_init is None:
        v = spare.copy_(start)
    else:  # one pass; start + v_init is (0 + start) + v_init exactly (0 + start is start)
        v = torch.add(start, p.v_init.to(like.dtype).expand_as(like), out=spare)
    events = torch.empty_like(like) if p.signed else None
    return IFState(v, torch.empty_like(like), events=events, unset=True)


def if_step(
    p: IFParameters, state: IFState, current: torch.Tensor, steps: int
) -> tuple[torch.Tensor, IFState]:
    """The reference update, one step of a simulation of ``steps`` steps: returns the spikes
    (amplitude V_th) and the next state; ``state`` is not modified."""
    v_th = p.threshold_like(current)
    if state.unset:
        zero = torch.zeros_like(state.v)
        state = IFState(state.v, zero, state.t, None if state.events is None else zero)
    t = state.t + 1
    v = state.v + current
    theta = v_th - t * p.bias(v_th, steps)
    fired = (v >= theta).to(current.dtype)
    if not p.signed:
        v = torch.addcmul(v, fired, v_th, value=-1)
        return fired * v_th, IFState(v, state.count + fired, t)
    # v < theta - V_th is v[t] < 0 for the membrane itself (the state is v[t] - t*b)
    fired = fired - ((v < theta - v_th) & (state.count > 0)).to(current.dtype)
    v = torch.addcmul(v, fired, v_th, value=-1)
    return fired * v_th, IFState(v, state.count + fired, t, state.events + fired.abs())


class IFNeurons(nn.Module):
    """A layer of IF neurons: holds its parameters (``v_th`` buffer, ``shift``, ``bias_fraction``,
    ``signed``) and, during a simulation, its ``state``. Call ``reset(T)`` before each simulation
    of T steps.

    >>> layer = IFNeurons(1.0, "membrane")
    >>> layer.reset(4)
    >>> layer.scan(torch.tensor([[0.3]]), 4, constant=True).sum(0) / 4  # round(4 * 0.3) / 4
    tensor([[0.2500]])
    >>> signed = IFNeurons(1.0, "membrane", signed=True)
    >>> signed.reset(4)
    >>> signed.scan(torch.tensor([[1.0], [-0.6], [0.0], [0.0]]), 4).flatten()  # takes it back
    tensor([ 1., -1.,  0.,  0.])
    """

    def __init__(
        self,
        v_th: float | torch.Tensor,
        shift: str = "bias",
        bias_fraction: float = 0.5,
        signed: bool = False,
    ):
        super().__init__()
        v_th = torch.as_tensor(v_th, dtype=torch.float32).detach().clone()
        if v_th.dim() > 1 or v_th.numel() == 0:
            raise ValueError(
                f"v_th must be a scalar or a 1-D per-channel tensor, got shape {tuple(v_th.shape)}"
            )
        if not torch.isfinite(v_th).all() or (v_th <= 0).any():
            raise ValueError(f"v_th must be finite and > 0, got {v_th.tolist()}")
        self.register_buffer("v_th", v_th)
        self.register_buffer("v_init", None)  # set by calibration (conversion.calibrate)
        self.shift = check_shift(shift)
        self.bias_fraction = float(bias_fraction)
        if not isinstance(signed, bool):
            raise TypeError(f"signed must be a bool, got {signed!r}")
        self.signed = signed
        self.steps: int | None = None  # T of the current simulation
        self.state: IFState | None = None
        self.recorder: list[torch.Tensor] | None = None  # input currents, while recording
        self._spare: torch.Tensor | None = None  # the last membrane tensor, for the next run

    @property
    def params(self) -> IFParameters:
        return IFParameters(self.v_th, self.shift, self.bias_fraction, self.v_init, self.signed)

    def extra_repr(self) -> str:
        v = f"{self.v_th.item():g}" if self.v_th.dim() == 0 else f"per-channel[{self.v_th.numel()}]"
        return f"v_th={v}, shift={self.shift}" + (", signed" if self.signed else "")

    def reset(self, steps: int) -> None:
        """Start a simulation of ``steps`` steps (state made on the first input)."""
        check_steps(steps)
        if self.state is not None:
            self._spare = self.state.v
        self.steps, self.state = steps, None

    def start(self, like: torch.Tensor) -> IFState:
        """The state, made from ``like`` (one step's current) if the simulation has not begun."""
        if self.steps is None:
            raise RuntimeError("IFNeurons.reset(T) must be called before simulating")
        if self.state is None:
            self.state = initial_state(self.params, like, self._spare)
            self._spare = None
        return self.state

    # Read-only views of the state, for measures and tests.
    @property
    def v(self) -> torch.Tensor | None:
        """Membrane minus t*b (what the kernels update)."""
        return None if self.state is None else self.state.v

    @property
    def spike_count(self) -> torch.Tensor | None:
        """Net spikes per neuron since ``reset`` (positive minus negative), [batch, ...]."""
        return None if self.state is None else settle(self.state).count

    @property
    def spike_events(self) -> torch.Tensor | None:
        """Spikes of either sign per neuron since ``reset`` (``spike_count`` unless signed)."""
        if self.state is None:
            return None
        state = settle(self.state)
        return state.count if state.events is None else state.events

    @property
    def t(self) -> int:
        return 0 if self.state is None else self.state.t

    @property
    def membrane(self) -> torch.Tensor | None:
        """The membrane potential v[t] (the state plus t*b)."""
        if self.state is None:
            return None
        v_th = self.threshold_like(self.state.v)
        return self.state.v + self.state.t * self.params.bias(v_th, self.steps)

    def threshold_like(self, current: torch.Tensor) -> torch.Tensor:
        return self.params.threshold_like(current)

    def step(self, current: torch.Tensor) -> torch.Tensor:
        """One time step by the reference update: current [batch, ...] -> spikes, same shape."""
        state = self.start(current)
        if self.recorder is not None:
            self.recorder.append(current.unsqueeze(0).clone())
        spikes, self.state = if_step(self.params, state, current, self.steps)
        return spikes

    def scan(
        self,
        current: torch.Tensor,
        steps: int,
        constant: bool = False,
        out: torch.Tensor | None = None,
        addend: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``steps`` steps at once (``simulation.if_scan.scan``): current [steps, batch, ...], or
        [batch, ...] held for every step when ``constant``, plus ``addend`` if given -> spikes
        [steps, batch, ...], written into ``out`` when it fits."""
        from snnconv.simulation import if_scan

        return if_scan.scan(self, current, steps, constant, out, addend)

    def scan_conv(
        self,
        conv: nn.Conv2d,
        spikes: torch.Tensor,
        amp: torch.Tensor,
        steps: int,
        out: torch.Tensor | None = None,
        addend: torch.Tensor | None = None,
        negative: bool = False,
        masks: SpikeMasks | None = None,
        masks_out: SpikeMasks | None = None,
        addend_masks: tuple[SpikeMasks, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """``scan(conv(spikes))`` in one compiled pass (``simulation.if_scan.scan_conv``), or None
        where that kernel does not apply (nothing changed then); ``negative``: ``spikes`` come
        from a signed layer; ``masks``: theirs, handed off by that layer; ``masks_out``: where
        the masks of this layer's spikes go for the next convolution; ``addend_masks``: the
        addend's, (masks, amplitude), handed on by the layer that made it."""
        from snnconv.simulation import if_scan

        return if_scan.scan_conv(
            self, conv, spikes, amp, steps, out, addend, negative, masks, masks_out, addend_masks
        )


@contextmanager
def recording(layers: Iterable[IFNeurons]) -> Iterator[dict[IFNeurons, list[torch.Tensor]]]:
    """Record the input currents of ``layers`` while the block runs: yields {layer: [currents]},
    each [steps, batch, ...] per call. On exit every layer's recorder is what it was before."""
    layers = list(layers)
    saved = [m.recorder for m in layers]
    store: dict[IFNeurons, list[torch.Tensor]] = {m: [] for m in layers}
    try:
        for m in layers:
            m.recorder = store[m]
        yield store
    finally:
        for m, r in zip(layers, saved):
            m.recorder = r


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise ValueError(f"{name} contains {bad} NaN/inf value(s)")
