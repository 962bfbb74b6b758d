"""Bad calibration data and inputs without a batch dimension get errors that name the problem
(issue 16, defect 8), instead of torch.fx's or PyTorch's raw messages."""

import pytest
import torch

import snnconv
from snnconv.zoo import models


@pytest.fixture(scope="module")
def relu_cnn():
    torch.manual_seed(0)
    return models.build("cnn", in_channels=1, image_size=28, act="relu").eval()


@pytest.mark.parametrize(
    "calibration,message",
    [
        (torch.full((4, 1, 28, 28), float("nan")), "calibration batch 0 .* NaN"),
        (torch.rand(4, 1, 28, 28, dtype=torch.float64), "parameters are torch.float32"),
        (torch.rand(4, 3, 28, 28), r"calibration batch 0 \(shape \(4, 3, 28, 28\).*fails on it"),
        ([torch.rand(2, 1, 28, 28), torch.rand(1, 28, 28)], "calibration batch 1 "),
    ],
)
def test_bad_calibration_batches_are_named(relu_cnn, calibration, message):
    with pytest.raises(snnconv.ConversionError, match=message):
        snnconv.convert(relu_cnn, calibration=calibration, threshold="percentile")


def test_unbatched_input_is_refused_with_the_fix():
    snn = snnconv.convert(models.build("cnn", in_channels=1, image_size=28).eval())
    with pytest.raises(ValueError, match=r"4-D .*got shape \(1, 28, 28\); add one with"):
        snn(torch.rand(1, 28, 28), 4)
    assert snn(torch.rand(1, 1, 28, 28), 4).shape == (4, 1, 10)  # a batch of one is fine


def test_a_T_whose_readout_cannot_fit_in_memory_is_refused_before_it_runs(relu_cnn):
    """T = 10^12 steps of a [2, 10] readout: 80 TB of float32, more than any machine here; the
    error comes after the first step, not from the allocator or the OS killing the process."""
    snn = snnconv.convert(relu_cnn, calibration=[torch.rand(4, 1, 28, 28)], threshold="max")
    with pytest.raises(snnconv.SimulationError, match=r"T=1000000000000 needs .* GiB .*smaller T"):
        snn(torch.rand(2, 1, 28, 28), 10**12)
    assert snn(torch.rand(2, 1, 28, 28), 3).shape == (3, 2, 10)  # the network still works


def test_readout_check_counts_steps_batch_classes_and_dtype():
    from snnconv.simulation.executor import check_readout_fits

    one = torch.zeros(250, 10)  # one step: 10,000 bytes
    check_readout_fits(100, one, 1_000_000)  # exactly fits
    with pytest.raises(snnconv.SimulationError, match=r"\[T, 250, 10\] torch.float32"):
        check_readout_fits(101, one, 1_000_000)
    check_readout_fits(10**9, one, None)  # memory unknown: no check
