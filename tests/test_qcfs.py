"""QCFS activation (Bu et al. 2022): its formula, its gradient, and its exact IF equivalent."""

import math

import pytest
import torch

import snnconv
from snnconv import QCFS, IFNeurons
from snnconv.zoo import models


@pytest.mark.parametrize("levels,lam", [(1, 1.0), (4, 0.8), (8, 2.5)])
def test_forward_is_the_formula(levels, lam):
    x = torch.linspace(-1.0, 3.0, 4001)
    want = [
        lam * min(max(math.floor(v * levels / lam + 0.5) / levels, 0.0), 1.0) for v in x.tolist()
    ]
    got = QCFS(levels, lam)(x)
    # float32 vs Python float64: the two may differ by rounding of x * L / lam near a step edge;
    # away from edges they agree to a few ulps of lam
    edge = ((x * levels / lam + 0.5) - torch.round(x * levels / lam + 0.5)).abs() < 1e-4
    assert torch.allclose(got[~edge], torch.tensor(want)[~edge], atol=1e-6)


@pytest.mark.parametrize("levels,lam", [(1, 1.0), (4, 0.8), (8, 2.5)])
def test_no_grad_path_is_the_training_path_bit_for_bit(levels, lam):
    """Without a gradient QCFS takes plain floor, in place; the same bits as the straight-through
    form, over random values, negatives, step edges (ties) and +-0 alike."""
    g = torch.Generator().manual_seed(0)
    edges = (torch.arange(-4 * levels, 4 * levels + 1) - 0.5) * (lam / levels)
    x = torch.cat([torch.randn(100_000, generator=g) * 3 * lam, edges, torch.tensor([0.0, -0.0])])
    q = QCFS(levels, lam)
    with torch.no_grad():
        fast = q(x)
    slow = q(x.clone().requires_grad_(True)).detach()
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))  # bits, sign of 0 too
    assert not fast.requires_grad


def test_gradient_straight_through_and_threshold():
    q = QCFS(4, 1.0)
    x = torch.tensor([-0.5, 0.1, 0.3, 0.9, 1.5], requires_grad=True)
    y = q(x)
    y.sum().backward()
    assert x.grad.tolist() == [
        0.0,
        1.0,
        1.0,
        1.0,
        0.0,
    ]  # 1 inside [0, lam]: floor passed
    # dy/dlam, straight-through: floor(..)/L - x/lam inside [0, lam], 1 above, 0 below
    inside = torch.tensor([0.1, 0.3, 0.9])
    want = (torch.floor(inside * 4 + 0.5) / 4 - inside).sum() + 1.0
    assert q.threshold.grad.item() == pytest.approx(want.item(), abs=1e-6)


@pytest.mark.parametrize("levels", [2, 4, 8])
@pytest.mark.parametrize("lam", [1.0, 0.37])
def test_if_layer_equals_qcfs_for_constant_input_at_t_equal_levels(levels, lam):
    """IF neurons with V_th = lam, membrane starting at lam/2, after T = L steps, fire exactly
    QCFS(x) * L / lam spikes for a constant input x (ties included)."""
    x = torch.linspace(-0.5 * lam, 1.5 * lam, 2001).view(1, -1)
    layer = IFNeurons(lam, "membrane")
    layer.reset(levels)
    rate = layer.scan(x, levels, constant=True).sum(0) / levels
    assert torch.equal(rate, QCFS(levels, lam)(x).detach())


def test_convert_maps_qcfs_to_membrane_shift_without_data():
    model = models.build("cnn", act="qcfs", levels=4, in_channels=1, image_size=28).eval()
    for i, m in enumerate(m for m in model.modules() if isinstance(m, QCFS)):
        m.threshold.data.fill_(0.5 + 0.25 * i)
    snn = snnconv.convert(model)
    assert snn.shift == "membrane"
    assert list(snn.thresholds.values()) == [0.5, 0.75, 1.0]
    # the SNN approaches the quantised ANN; the readout at T = L*k is within the unevenness error
    x = torch.randn(32, 1, 28, 28)
    out = snn(x, 128)[-1]
    assert (out.argmax(1) == snn.ann(x).argmax(1)).float().mean() > 0.9


@pytest.mark.parametrize("levels", [0, -2, 1.5, True])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        QCFS(levels)
    with pytest.raises(ValueError, match="levels"):
        models.build("cnn", act="qcfs", levels=levels)


def test_levels_only_for_qcfs():
    with pytest.raises(ValueError, match="levels"):
        models.build("cnn", act="threshold", levels=4)
    assert isinstance(models.activation("qcfs", 1.0), QCFS)
