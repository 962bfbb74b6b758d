"""The fused CPU kernel computes exactly what the PyTorch loop in IFNeurons.scan computes."""
import pytest
import torch

import snnconv
from snnconv import IFNeurons, fused, models


def scan_both(monkeypatch, shift, current, steps, constant, chunks, v_th=0.7):
    results = []
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(fused, "kernel", lambda: None)
        layer = IFNeurons(v_th, shift)
        layer.reset(steps)
        outs, i = [], 0
        for c in chunks:
            outs.append(layer.scan(current if constant else current[i:i + c], c, constant))
            i += c
        results.append((torch.cat(outs), layer.v, layer.spike_count))
    monkeypatch.undo()
    return results


def test_kernel_builds():
    assert fused.kernel() is not None, "needs a C++ compiler (c++, g++ or $CXX)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("shift", ["bias", "membrane", "none"])
def test_fused_equals_pytorch_loop_bitwise(monkeypatch, shift, constant, dtype):
    shape = (5, 6, 7, 3)
    current = torch.randn(shape if constant else (20, *shape), dtype=dtype)
    calls = []
    real = fused.kernel
    monkeypatch.setattr(fused, "kernel", lambda: calls.append(1) or real())
    fast, slow = scan_both(monkeypatch, shift, current, 20, constant, [1, 7, 12])
    assert calls, "the kernel path was taken"
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


def test_channels_last_and_per_channel_fall_back_correctly(monkeypatch):
    current = torch.randn(12, 4, 6, 5, 5).contiguous()
    cl = torch.randn(48, 6, 5, 5).contiguous(memory_format=torch.channels_last).view(12, 4, 6, 5, 5)
    for cur in (current, cl):
        fast, slow = scan_both(monkeypatch, "bias", cur, 12, False, [12])
        assert all(torch.equal(a, b) for a, b in zip(fast, slow))
    v_th = torch.linspace(0.5, 1.5, 6)
    assert not fused.usable(current, False, torch.zeros(4, 6, 5, 5), torch.empty(12, 4, 6, 5, 5),
                            v_th)  # per-channel thresholds use the PyTorch loop


def test_whole_network_same_with_and_without_kernel(monkeypatch):
    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval())
    x = torch.randn(4, 3, 32, 32)
    fast = snn(x, 12)
    monkeypatch.setattr(fused, "kernel", lambda: None)
    assert torch.equal(fast, snn(x, 12))
