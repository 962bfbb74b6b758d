"""The shift sweep and the recording it uses leave a network exactly as they found it."""

import pytest
import torch
from torch import nn

import snnconv
from snnconv.exceptions import OptionError
from snnconv.measures import shift_sweep
from snnconv.simulation.neuron import recording


def small_snn(shift="membrane"):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 12),
        snnconv.ThresholdReLU(1.0),
        nn.Linear(12, 8),
        snnconv.ThresholdReLU(0.7),
        nn.Linear(8, 3),
    )
    return snnconv.convert(model, shift=shift)


def state_of(snn):
    return snn.shift, {n: (m.shift, m.bias_fraction, m.recorder) for n, m in snn.layers.items()}


def test_sweep_leaves_the_network_as_it_found_it():
    snn = small_snn("membrane")
    snn.layers["_1"].bias_fraction = 0.3
    before = state_of(snn)
    batches = [(torch.randn(16, 6), torch.randint(0, 3, (16,)))]
    result = shift_sweep.sweep(snn, batches, 8, fractions=(0.0, 0.25, 0.5, 1.0))
    assert state_of(snn) == before
    assert set(result["accuracy"]) == {"no shift", "V_th/2T", "per-layer best"}
    assert [r["name"] for r in result["layers"]] == list(snn.layers)


def test_sweep_restores_the_network_after_an_error():
    snn = small_snn("none")
    before = state_of(snn)
    bad = [(torch.randn(16, 5), torch.zeros(16, dtype=torch.long))]  # wrong input width
    with pytest.raises(RuntimeError):  # from the ANN pass: torch names the shapes
        shift_sweep.sweep(snn, bad, 8)
    assert state_of(snn) == before


@pytest.mark.parametrize("fractions", [(0.25, 0.5), (0.0, 1.0), (0.0, 0.5, float("nan")), ()])
def test_sweep_fractions_must_hold_0_and_half(fractions):
    with pytest.raises(OptionError, match="fractions"):
        shift_sweep.sweep(small_snn(), [], 8, fractions=fractions)


def test_recording_restores_recorders_also_on_error():
    snn = small_snn()
    layers = list(snn.layers.values())
    x = torch.randn(4, 6)
    with recording(layers) as currents:
        snn(x, 5)
    assert all(torch.cat(currents[m]).shape[0] == 5 for m in layers)  # 5 steps recorded
    assert all(m.recorder is None for m in layers)
    with pytest.raises(RuntimeError), recording(layers):
        raise RuntimeError("boom")
    assert all(m.recorder is None for m in layers)
