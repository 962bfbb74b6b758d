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
