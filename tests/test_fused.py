"""The fused IF scan computes exactly what the PyTorch loop in IFNeurons.scan computes: the C++
kernel on the CPU, the Triton kernel with SNNCONV_TEST_DEVICE=cuda."""

import pytest
import torch

import snnconv
from conftest import DEVICE
from snnconv import IFNeurons, options
from snnconv.kernels import backend, cpu, lookup_conv
from snnconv.zoo import models

# small batches: the fused kernels need as many samples per step as threads
pytestmark = pytest.mark.usefixtures("two_threads")


def no_kernels(monkeypatch):
    """Every compiled path off: the PyTorch loop and module convolutions run."""
    monkeypatch.setenv("SNNCONV_FUSED", "0")


def scan_both(monkeypatch, shift, current, steps, constant, chunks, v_th=0.7, signed=False):
    results = []
    for use_kernel in (True, False):
        if not use_kernel:
            no_kernels(monkeypatch)
        layer = IFNeurons(v_th, shift, signed=signed).to(current.device)
        layer.reset(steps)
        outs, i = [], 0
        for c in chunks:
            outs.append(layer.scan(current if constant else current[i : i + c], c, constant))
            i += c
        results.append((torch.cat(outs), layer.v, layer.spike_count, layer.spike_events))
    monkeypatch.undo()
    return results


def test_kernel_builds():
    assert cpu.kernel() is not None, "needs a C++ compiler (c++, g++ or $CXX)"
    assert cpu.scan_available(DEVICE), f"no fused IF scan for {DEVICE} (CUDA needs triton)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("shift", ["bias", "membrane", "none"])
def test_fused_equals_pytorch_loop_bitwise(monkeypatch, shift, constant, dtype):
    shape = (5, 6, 7, 3)
    current = torch.randn(shape if constant else (20, *shape), dtype=dtype, device=DEVICE)
    calls = []
    real = cpu.scan_available
    monkeypatch.setattr(cpu, "scan_available", lambda d: calls.append(1) or real(d))
    fast, slow = scan_both(monkeypatch, shift, current, 20, constant, [1, 7, 12])
    assert calls, "the kernel path was taken"
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shift", ["bias", "membrane"])
def test_per_channel_thresholds_equal_the_pytorch_loop(monkeypatch, shift, signed):
    """One V_th per channel: the kernel where the channels are innermost (channels_last maps,
    [batch, C] vectors), the PyTorch loop elsewhere (NCHW); the same bits as the loop either way,
    for both layouts, shifts and kinds of neuron."""
    calls = []
    real_kernel = cpu.Kernels.if_scan
    v_th = torch.linspace(0.5, 1.5, 6, device=DEVICE)
    nchw = 2 * torch.randn(12, 4, 6, 5, 5, device=DEVICE)
    cl = nchw.view(48, 6, 5, 5).contiguous(memory_format=torch.channels_last).view(12, 4, 6, 5, 5)
    flat = 2 * torch.randn(12, 4, 6, device=DEVICE)
    for cur, kernel in ((cl, True), (flat, True), (nchw, False)):
        calls.clear()
        monkeypatch.setattr(  # scan_both undoes it
            cpu.Kernels,
            "if_scan",
            lambda self, *a, **k: calls.append(1) or real_kernel(self, *a, **k),
        )
        fast, slow = scan_both(monkeypatch, shift, cur, 12, False, [5, 7], v_th, signed)
        assert bool(calls) == (kernel and DEVICE.type == "cpu")
        for a, b in zip(fast, slow):
            assert (a is None and b is None) or torch.equal(a, b)
        assert 0 < fast[2].abs().sum() < fast[2].numel() * 12  # neither silent nor saturated


def test_snnconv_fused_0_turns_every_kernel_off(monkeypatch):
    """SNNCONV_FUSED=0: backend chooses PyTorch for the scan and the convolution (read at each
    decision, so it also applies after the kernels were loaded), and the simulation still runs."""
    from torch import nn

    assert cpu.kernel() is not None  # loaded before: the switch must still win
    monkeypatch.setenv("SNNCONV_FUSED", "0")
    assert cpu.kernel() is None and not cpu.scan_available(torch.device("cpu"))
    assert backend.describe("cpu")["scan"] == backend.describe("cpu")["conv"] == "torch"
    x = torch.ones(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    assert not lookup_conv.applies(nn.Conv2d(8, 8, 3), x)
    monkeypatch.setattr(cpu, "if_scan", lambda *args: pytest.fail("the kernel ran"))
    layer = IFNeurons(0.5, "none")
    layer.reset(3)
    spikes = layer.scan(torch.full((3, 4), 0.3), 3)
    assert torch.equal(spikes, torch.tensor([[0.0] * 4, [0.5] * 4, [0.0] * 4]))  # 0.3, 0.6, 0.4


def test_whole_network_same_with_and_without_kernel(monkeypatch):
    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval()).to(DEVICE)
    x = torch.randn(4, 3, 32, 32, device=DEVICE)
    fast = snn(x, 12)
    no_kernels(monkeypatch)
    assert torch.equal(fast, snn(x, 12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shift", ["bias", "membrane"])
def test_addend_is_added_exactly_like_a_separate_add(monkeypatch, shift, dtype):
    """scan(a, addend=b) in the kernel and in the PyTorch loop equals scan(a + b), bit for bit:
    the kernel rounds a + b first, as the separate add would."""
    torch.manual_seed(1)
    a, b = torch.randn(2, 12, 4, 6, 5, 5, dtype=dtype, device=DEVICE).unbind(0)
    results = []
    for use_kernel, with_addend in [(True, True), (False, True), (True, False)]:
        if not use_kernel:
            no_kernels(monkeypatch)
        layer = IFNeurons(0.7, shift).to(DEVICE)
        layer.reset(12)
        spikes = torch.cat(
            [layer.scan(a[:5], 5, addend=b[:5]) if with_addend else layer.scan(a[:5] + b[:5], 5)]
            + [layer.scan(a[5:], 7, addend=b[5:]) if with_addend else layer.scan(a[5:] + b[5:], 7)]
        )
        results.append((spikes, layer.v, layer.spike_count))
        monkeypatch.undo()
    assert results[0][1].abs().sum() > 0 and results[0][0].sum() > 0
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(results[0], other))


def test_residual_add_goes_into_the_scan_and_matches_the_oracle():
    """ResNet blocks end in IF(conv(...) + shortcut): the simulator hands the two terms to the
    IF scan; the result still equals the per-step oracle (float64, so the comparison is tight)."""
    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval().double()).to(DEVICE)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, device=DEVICE)
    calls = []
    real = IFNeurons.scan

    def spy(self, current, steps, constant=False, out=None, addend=None):
        calls.append(addend is not None)
        return real(self, current, steps, constant, out, addend)

    IFNeurons.scan = spy
    try:
        fast = snn(x, 10)
    finally:
        IFNeurons.scan = real
    assert sum(calls) >= 9 * 1, "the 9 residual adds went into the scan"
    torch.testing.assert_close(fast, snn.stepwise(x, 10), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("isa", [i for i in options.KERNEL_ISAS if i != "native"])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(
    "c_in, c_out, four_bit",
    [
        (16, 40, False),  # 8-bit groups, NV 3: 3 output blocks, the last one partial
        (24, 20, True),  # 4-bit groups, NV 2, two input blocks (the last one partial)
        (12, 64, True),  # NV 4: the widest rows, one pixel at a time below AVX-512
        (8, 16, True),  # NV 1: the most pixels at once
    ],
)
@pytest.mark.parametrize("sparse_below", [0.0, 2.0])  # dense lookups, then the sparse form
def test_kernels_built_without_avx512_agree(
    monkeypatch, isa, signed, c_in, c_out, four_bit, sparse_below
):
    """The code paths for older vector units (8- or 4-lane registers, fewer pixels at once,
    scalar mask extraction) give the same lookup convolution and fused IF update, the same
    masks of its spikes for a next convolution, and the same update with an addend read from
    such masks, as the native build, bit for bit, for each output
    block width (NV) and both group sizes; also for signed spike maps read by signed neurons.
    (CPU only: the C++ kernels; on an AVX2-only CPU the "avx2" build is the native one, still
    compared.)"""
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, 2, 1)
    if four_bit:  # 8-bit tables refused; input blocks of at most 4 groups
        monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)
        nv = lookup_conv.plan(c_in, c_out, 9)[1]
        monkeypatch.setattr(lookup_conv, "TABLE_BYTES", 4 * 9 * 16 * 64 * nv)
    amp = torch.full((c_in,), 0.9)
    fired = (torch.rand(4 * 6, c_in, 9, 9) < 0.3).float()
    if signed:  # a third of the spikes negative
        fired = fired * (1 - 2 * (torch.rand(fired.shape) < 0.3).float())
    x = (fired * 0.9).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(lookup_conv, "STREAM_BYTES", 0)  # the streaming stores' path (default)
    monkeypatch.setattr(lookup_conv, "SPARSE_BELOW", sparse_below)
    results = []
    for lib in (cpu.kernel(), cpu.load(isa)):
        monkeypatch.setattr(backend, "_cpp", backend.CppState(kernels=lib))
        layer = IFNeurons(torch.linspace(0.3, 0.7, c_out), "membrane", signed=signed)
        layer.reset(8)
        cur = lookup_conv.conv2d(conv, x, amp, negative=signed)
        gb = 4 if four_bit else 8  # the masks of the spikes for a next conv, padding 1
        size = cpu.mask_bytes(c_out, 5, 5, gb, 1, 1, signed)
        masks = cpu.SpikeMasks(
            torch.full((4 * 6, size), 255, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
            gb, 1, 1, signed,
        )  # fmt: skip
        fused = layer.scan_conv(conv, x, amp, 4, negative=signed, masks_out=masks)
        second = IFNeurons(0.5, "membrane", signed=signed)  # those spikes as its addend
        second.reset(8)
        addend = torch.empty_like(fused).view(cur.shape)
        again = second.scan_conv(
            conv, x, amp, 4, negative=signed, addend=addend, addend_masks=(masks, layer.v_th)
        )
        results.append(
            (cur, fused, layer.v, layer.spike_count, layer.spike_events, masks.data, masks.nonzero)
            + (again, second.v, second.spike_count)
        )
    assert all(r[1] is not None and r[7] is not None for r in results), "fused on both builds"
    with torch.no_grad():
        torch.testing.assert_close(results[1][0], conv(x), rtol=0, atol=1e-5)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_scan_wrapper_refuses_tensors_that_do_not_fit():
    """The typed wrapper checks each tensor before passing its pointer: a wrong size, dtype or
    layout is an error, never a read or write past the tensor."""
    from snnconv.exceptions import SimulationError

    kernels = cpu.kernel()
    v, count, out = torch.zeros(10), torch.zeros(10), torch.empty(3, 10)
    theta, v_th = torch.full((3, 1), 0.5), torch.full((1,), 0.5)  # one V_th for the layer
    kernels.if_scan(torch.full((3, 10), 0.3), False, None, v, theta, v_th, out, count)
    assert torch.equal(count, torch.ones(10))  # v = 0.3, 0.6 (fires), 0.4: one spike each
    for bad in (
        torch.ones(2, 10),  # fewer steps than theta
        torch.ones(3, 10, dtype=torch.float64),
        torch.ones(1, 10).expand(3, 10),  # right shape, 10 floats of memory
        torch.ones(3, 20)[:, ::2],  # right shape, gaps
    ):
        with pytest.raises(SimulationError, match="kernel argument current"):
            kernels.if_scan(bad, False, None, v, theta, v_th, out, count)
    with pytest.raises(SimulationError, match="kernel argument out"):
        kernels.if_scan(torch.ones(3, 10), False, None, v, theta, v_th, out[:2], count)
    with pytest.raises(SimulationError, match="float32 or float64"):
        kernels.if_scan(torch.ones(3, 10), False, None, v.half(), theta, v_th, out, count)
    # per channel: P values that must divide the neurons, thresholds [steps, P]
    with pytest.raises(SimulationError, match="do not fit 10 neurons"):
        kernels.if_scan(
            torch.ones(3, 10), False, None, v, theta.expand(3, 3), v_th.expand(3), out, count
        )
    with pytest.raises(SimulationError, match="do not fit"):
        kernels.if_scan(torch.ones(3, 10), False, None, v, theta, v_th.expand(2), out, count)
    with pytest.raises(SimulationError, match="kernel argument v_th"):
        kernels.if_scan(torch.ones(3, 10), False, None, v, theta, v_th.double(), out, count)
