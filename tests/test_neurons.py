"""IF neurons against the closed form rate = (V_th/T) clip(round(T z/V_th), 0, T)."""

import math
from fractions import Fraction

import pytest
import torch

from snnconv import IFNeurons, ThresholdReLU

STEPS = (1, 4, 16, 64)


def expected_counts(k_values, steps, shift):
    """Exact spike counts for z = V_th (k/100 - 1/2), k = 0..200, by rational arithmetic.
    Ties (T z / V_th exactly m + 1/2) round up: the neuron fires when v reaches V_th exactly."""
    offset = Fraction(0) if shift == "none" else Fraction(1, 2)
    out = []
    for k in k_values:
        u = steps * (Fraction(k, 100) - Fraction(1, 2)) + offset
        out.append(min(max(math.floor(u), 0), steps))
    return torch.tensor(out, dtype=torch.float64)


def run_constant(layer, z, steps, use_scan):
    layer.reset(steps)
    if use_scan:
        spikes = layer.scan(z.clone(), steps, constant=True)
    else:
        spikes = torch.stack([layer.step(z.clone()) for _ in range(steps)])
    return spikes


@pytest.mark.parametrize("shift", ["bias", "membrane", "none"])
@pytest.mark.parametrize("v_th", [1.0, 0.5, 2.0, 0.3])
@pytest.mark.parametrize("use_scan", [True, False])
def test_constant_input_rate_is_rounded_exactly(shift, v_th, use_scan):
    k = torch.arange(201)
    z = (v_th * (k.double() / 100 - 0.5)).float()  # 201 values in [-0.5, 1.5] * V_th
    layer = IFNeurons(v_th, shift)
    for steps in STEPS:
        spikes = run_constant(layer, z, steps, use_scan)
        assert set(spikes.unique().tolist()) <= {0.0, torch.tensor(v_th).item()}, "amplitude V_th"
        counts = (spikes.double() / torch.tensor(v_th).double()).sum(0)
        want = expected_counts(k.tolist(), steps, shift)
        if v_th == 0.3:
            # 0.3 is not a binary fraction, so z and V_th/(2T) carry float rounding; compare away
            # from the decision boundaries (grid points are >= 0.02 from them, float error < 1e-5)
            u = steps * (k.double() / 100 - 0.5) + (0 if shift == "none" else 0.5)
            keep = (u - u.round()).abs() > 1e-3
            counts, want = counts[keep], want[keep]
        assert torch.equal(counts, want), (shift, v_th, steps)
        assert torch.equal(
            layer.spike_count.double(), counts if v_th != 0.3 else layer.spike_count.double()
        ), "spike_count tracks the spikes"


def test_membrane_shift_rounds_at_every_step():
    """With shift='membrane' the count after every t <= T is round(t z / V_th) (ties up)."""
    k = torch.arange(201)
    z = (k.double() / 100 - 0.5).float()
    layer = IFNeurons(1.0, "membrane")
    layer.reset(64)
    spikes = layer.scan(z, 64, constant=True)
    cum = spikes.double().cumsum(0)
    for t in STEPS:  # no exact ties at t > 1 on this grid; the tie at t = 1 is exact in float
        assert torch.equal(cum[t - 1], expected_counts(k.tolist(), t, "membrane"))


def test_bias_shift_is_for_the_final_step_only():
    """With shift='bias', δ = V_th/(2T): at t < T the count is floor(t (z + δ)/V_th), not round."""
    z = torch.tensor([0.3])
    layer = IFNeurons(1.0, "bias")
    layer.reset(8)
    cum = layer.scan(z, 8, constant=True).cumsum(0).squeeze(1)
    want = [math.floor(t * (0.3 + 1 / 16)) for t in range(1, 9)]
    assert cum.tolist() == [float(w) for w in want]
    assert cum[-1] == round(8 * 0.3)


def test_per_channel_thresholds():
    v_th = torch.tensor([0.5, 1.0, 2.0])
    layer = IFNeurons(v_th, "bias")
    z = torch.tensor([0.26, 0.26, 0.26]).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    layer.reset(16)
    rate = layer.scan(z, 16, constant=True).mean(0)
    want = (
        torch.tensor([0.5 * round(16 * 0.26 / 0.5), 1.0 * round(16 * 0.26), 2.0 * round(16 * 0.13)])
        / 16
    )
    assert torch.allclose(rate[0, :, 0, 0], want)
    with pytest.raises(ValueError, match="per-channel"):
        layer.reset(4)
        layer.scan(torch.zeros(2, 4, 2, 2), 4, constant=True)


@pytest.mark.parametrize("shift", ["bias", "membrane", "none"])
def test_scan_chunks_equal_steps_on_varying_input(shift):
    """Bitwise: the same arithmetic whatever the chunking (results do not depend on memory)."""
    current = torch.randn(20, 3, 5)
    a, b = IFNeurons(0.7, shift), IFNeurons(0.7, shift)
    a.reset(20)
    b.reset(20)
    fast = torch.cat([a.scan(current[:7].clone(), 7), a.scan(current[7:].clone(), 13)])
    slow = torch.stack([b.step(c) for c in current])
    assert torch.equal(fast, slow)
    assert torch.equal(a.v, b.v)
    # the membrane obeys v[T] = v[0] + sum(I + b) - V_th * count
    v0 = 0.35 if shift == "membrane" else 0.0
    drive = current.sum(0) + (20 * 0.7 / 40 if shift == "bias" else 0.0)
    assert torch.allclose(a.membrane, v0 + drive - 0.7 * a.spike_count, atol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_thresholds_raise(bad):
    with pytest.raises(ValueError):
        IFNeurons(bad)
    with pytest.raises(ValueError):
        ThresholdReLU(bad)


def test_bad_steps_and_shift():
    with pytest.raises(ValueError, match="T must be"):
        IFNeurons(1.0).reset(0)
    with pytest.raises(ValueError, match="shift"):
        IFNeurons(1.0, "half")


def test_threshold_relu_forward_and_gradient():
    f = ThresholdReLU(0.75)
    x = torch.tensor([-1.0, 0.0, 0.3, 0.75, 2.0], requires_grad=True)
    y = f(x)
    assert y.tolist() == [0.0, 0.0, pytest.approx(0.3), 0.75, 0.75]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # as torch.clamp: 1 on [0, y_th]
