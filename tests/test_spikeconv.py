"""The lookup-table convolution of spike maps equals F.conv2d up to float rounding, refuses what
is not a spike map, and the simulator uses it where it applies."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import snnconv
from snnconv.exceptions import SimulationError
from snnconv.kernels import cpu, lookup_conv
from snnconv.simulation.neuron import IFNeurons
from snnconv.zoo import models

# small batches: the fused kernels need as many samples per step as threads
pytestmark = pytest.mark.usefixtures("two_threads")

EPS = torch.finfo(torch.float32).eps


def spike_map(n, c, h, w, amp, rate=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    fired = (torch.rand(n, c, h, w, generator=g) < rate).float()
    return (fired * amp.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)


def masks_for(reader, shape, signed, only=False, fill=0):
    """Buffers for the masks of a spike map of ``shape`` [n, c, h, w] in the layout the conv
    ``reader`` reads, every byte ``fill`` to begin with."""
    n, c, h, w = shape
    gb, ph, pw = lookup_conv.mask_layout(reader)
    data = torch.full((n, cpu.mask_bytes(c, h, w, gb, ph, pw, signed)), fill, dtype=torch.uint8)
    return cpu.SpikeMasks(data, torch.zeros(1, dtype=torch.int64), gb, ph, pw, signed, only)


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,padding,size",
    [
        (16, 16, 3, 1, 1, 12),  # ResNet-20 stage 1 (8-bit groups)
        (32, 64, 3, 2, 1, 9),  # strided, odd size, 4-bit groups
        (3, 5, 3, 2, 0, 9),  # fewer channels than a group, Cout not a multiple of 8
        (20, 100, 1, 1, 0, 7),  # 1x1, several output blocks, partial last block
        (70, 64, (3, 1), 1, (1, 0), 8),  # non-square kernel, C not a multiple of 8
        (8, 13, 5, 1, 2, 11),  # 5x5, padding 2
        (128, 72, 3, 1, 1, 6),  # several input blocks (partial sums), a partial output block
        (64, 64, 3, 1, 1, 2),  # tiny images: several images share each table block
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_lookup_conv_equals_conv2d(c_in, c_out, kernel, stride, padding, size, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
    amp = torch.rand(c_in) + 0.5  # per-channel amplitudes (per-channel thresholds)
    x = spike_map(4, c_in, size, size, amp)
    out = lookup_conv.conv2d(conv, x, amp)
    assert out is not None and out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = conv(x)
        # Both sides sum the same n = KH*KW*C products (+ bias) in float32 in different orders;
        # the classic bound is |error| <= n * eps * sum |terms| for each side.
        n = conv.weight[0].numel() + 1
        bound = (
            2
            * n
            * EPS
            * F.conv2d(
                x.abs(), conv.weight.abs(), None if not bias else conv.bias.abs(), stride, padding
            )
        )
    assert out.shape == ref.shape
    assert ((out - ref).abs() <= bound).all()
    assert (out - ref).abs().max() < 1e-5  # and in practice much closer than the bound


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,padding,size",
    [
        (16, 16, 3, 1, 1, 12),  # 8-bit groups
        (32, 64, 3, 2, 1, 9),  # strided, 4-bit groups
        (70, 64, (3, 1), 1, (1, 0), 8),  # C not a multiple of 8 (scalar mask tail)
        (128, 72, 3, 1, 1, 6),  # several input blocks
    ],
)
def test_signed_spike_maps_equal_conv2d(c_in, c_out, kernel, stride, padding, size):
    """negative=True: maps of 0, amp[c] and -amp[c] (signed neurons); the -amp rows are
    subtracted. Same bound as above (the same sums in another order)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
    amp = torch.rand(c_in) + 0.5
    g = torch.Generator().manual_seed(1)
    sign = torch.randint(-1, 2, (4, c_in, size, size), generator=g).float()
    x = (sign * amp.view(1, -1, 1, 1)).contiguous(memory_format=torch.channels_last)
    assert lookup_conv.conv2d(conv, x, amp) is None  # -amp is not a 0/amp spike map
    out = lookup_conv.conv2d(conv, x, amp, negative=True)
    assert out is not None
    with torch.no_grad():
        ref = conv(x)
        n = conv.weight[0].numel() + 1
        bound = 2 * n * EPS * F.conv2d(x.abs(), conv.weight.abs(), conv.bias.abs(), stride, padding)
    assert ((out - ref).abs() <= bound).all()
    bad = x.clone()
    bad[0, 0, 0, 0] = 0.5 * amp[0]  # neither 0 nor +-amp: refused, nothing written
    assert lookup_conv.conv2d(conv, bad, amp, negative=True) is None


@pytest.mark.parametrize(
    "c_in,c_out,kernel,stride,padding,size,table_bytes",
    [
        (16, 16, 3, 1, 1, 12, None),  # 8-bit groups, NV 1
        (64, 64, 3, 2, 1, 9, None),  # 8-bit groups, NV 4, strided
        (128, 72, 3, 1, 1, 6, 9 * 16 * 64 * 5),  # 4-bit, input blocks of 5 groups (last partial)
        (70, 40, (3, 1), 1, (1, 0), 8, None),  # non-square kernel, C not a multiple of 8
        (64, 64, 3, 1, 1, 2, None),  # tiny images: most taps read the zero border
    ],
)
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("signed", [False, True])
def test_skipping_all_zero_groups_gives_the_same_bits(
    monkeypatch, c_in, c_out, kernel, stride, padding, size, table_bytes, rate, signed
):
    """The sparse form (lists of each pixel's non-zero groups; SPARSE_BELOW above 1: always)
    sums the same rows in the same order as the dense lookups (SPARSE_BELOW 0: never) minus the
    all-zero ones, which add exactly nothing: the same bits, alone and fused with the IF update,
    also for signed maps (their -amp rows subtracted in group order)."""
    if table_bytes:
        monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)
        monkeypatch.setattr(lookup_conv, "TABLE_BYTES", table_bytes)
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding)
    amp = torch.rand(c_in) + 0.5
    x = spike_map(2 * 3, c_in, size, size, amp, rate=rate)
    if signed:  # a third of the spikes negative
        g = torch.Generator().manual_seed(2)
        x = x * (1 - 2 * (torch.rand(x.shape, generator=g) < 0.3).float())
    results = []
    for sparse_below in (0.0, 2.0):
        monkeypatch.setattr(lookup_conv, "SPARSE_BELOW", sparse_below)
        layer = IFNeurons(0.7, "membrane", signed=signed)
        layer.reset(3)
        cur = lookup_conv.conv2d(conv, x, amp, negative=signed)
        fired = layer.scan_conv(conv, x, amp, 2, negative=signed)
        assert cur is not None and fired is not None
        results.append((cur, fired, layer.v, layer.spike_count))
    with torch.no_grad():
        torch.testing.assert_close(results[1][0], conv(x), rtol=0, atol=1e-5)
    for dense, sparse in zip(*results):
        assert torch.equal(dense, sparse)


def test_sparse_threshold_must_be_a_number_at_least_zero(monkeypatch):
    """The kernel's geometry check refuses a NaN or negative SPARSE_BELOW before the call."""

    conv, amp = nn.Conv2d(8, 8, 3, padding=1), torch.ones(8)
    x = spike_map(2, 8, 5, 5, amp)
    for bad in (float("nan"), -0.5):
        monkeypatch.setattr(lookup_conv, "SPARSE_BELOW", bad)
        with pytest.raises(SimulationError, match="impossible geometry .*sparse_below"):
            lookup_conv.conv2d(conv, x, amp)


def test_scalar_amplitude_and_cached_table_follows_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    amp = torch.tensor(0.75)
    x = spike_map(2, 16, 8, 8, amp.expand(16))
    first = lookup_conv.conv2d(conv, x, amp)
    with torch.no_grad():
        conv.weight.mul_(2)  # in-place change: the cached table must be rebuilt
        torch.testing.assert_close(lookup_conv.conv2d(conv, x, amp), conv(x), rtol=0, atol=1e-5)
    assert not torch.allclose(first, lookup_conv.conv2d(conv, x, amp))


def test_writes_into_a_given_buffer_only_when_it_fits():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3, padding=1)
    amp = torch.ones(16)
    x = spike_map(3, 16, 8, 8, amp)
    want = lookup_conv.conv2d(conv, x, amp)
    buf = torch.full((5, 24, 8, 8), float("nan")).contiguous(memory_format=torch.channels_last)
    got = lookup_conv.conv2d(conv, x, amp, out=buf)
    assert got.data_ptr() == buf.data_ptr() and torch.equal(got, want)  # first 3 rows of buf
    for wrong in (
        buf[:2],
        torch.empty(5, 24, 8, 8),  # too few rows; not channels_last
        torch.empty(5, 24, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
        torch.empty(5, 24, 7, 8).contiguous(memory_format=torch.channels_last),
    ):
        got = lookup_conv.conv2d(conv, x, amp, out=wrong)
        assert got.data_ptr() != wrong.data_ptr() and torch.equal(got, want)


def test_refuses_what_it_cannot_do():
    torch.manual_seed(0)
    amp = torch.ones(8)
    x = spike_map(2, 8, 6, 6, amp)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    not_spikes = x.clone()
    not_spikes[0, 3, 2, 2] = 0.5  # neither 0 nor the amplitude
    assert lookup_conv.conv2d(conv, not_spikes, amp) is None
    assert lookup_conv.conv2d(conv, x.contiguous(), amp) is None  # needs channels_last
    assert lookup_conv.conv2d(conv.double(), x.double(), amp) is None  # float32 only
    assert lookup_conv.conv2d(nn.Conv2d(8, 8, 3, groups=2), x, amp) is None
    assert lookup_conv.conv2d(nn.Conv2d(8, 8, 3, dilation=2), x, amp) is None
    assert lookup_conv.conv2d(nn.Conv2d(8, 8, 3, padding="same"), x, amp) is None
    assert (
        lookup_conv.conv2d(nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), x, amp) is None
    )


def test_simulation_uses_lookup_where_it_applies(monkeypatch):
    """ResNet-20 in channels_last: all 18 convs that read spikes take the lookup path. The
    result is the dense-conv simulation up to rounding: a current that lands within rounding of
    a threshold can flip a spike, so readouts are compared with a tolerance of a few spikes'
    worth (one spike changes a logit's running mean by at most |w|·V_th/t) and by prediction."""
    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval()).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    calls = []
    real = lookup_conv.conv2d
    monkeypatch.setattr(
        lookup_conv, "conv2d", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1]
    )
    fast = snn(x, 16)
    assert sum(c is not None for c in calls) >= 18  # every spike-fed conv, every chunk
    del calls[:]
    snn.stepwise(x, 3)
    assert not calls  # the oracle runs PyTorch's convolutions only
    monkeypatch.setattr(lookup_conv, "applies", lambda conv, x: False)
    dense = snn(x, 16)
    assert (fast - dense).abs().max() < 0.05 * dense.abs().max()
    assert (fast[-1].argmax(1) == dense[-1].argmax(1)).float().mean() >= 0.875


def test_per_channel_thresholds_give_per_channel_amplitudes():
    """An IF layer with one V_th per channel emits spikes of amplitude V_th[c]; the lookup conv
    after it must use those amplitudes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    layer = IFNeurons(torch.linspace(0.5, 1.5, 16), "membrane")
    layer.reset(4)
    current = torch.randn(4 * 2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    spikes = layer.scan(current.view(4, 2, 16, 6, 6), 4).reshape(8, 16, 6, 6)
    spikes = spikes.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(
            lookup_conv.conv2d(conv, spikes, layer.v_th), conv(spikes), rtol=0, atol=1e-5
        )


def test_partial_last_input_block(monkeypatch):
    """Input blocks of GR groups, the last one shorter (the table pads it with zero groups)."""
    monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)  # 4-bit groups
    monkeypatch.setattr(lookup_conv, "TABLE_BYTES", 9 * 16 * 64 * 5)  # 5 groups per block
    conv = nn.Conv2d(70, 16, 3, padding=1)  # 18 groups = 5 + 5 + 5 + 3
    assert lookup_conv.plan(70, 16, 9) == (4, 1, 5)
    amp = torch.ones(70)
    x = spike_map(3, 70, 7, 7, amp)
    with torch.no_grad():
        torch.testing.assert_close(lookup_conv.conv2d(conv, x, amp), conv(x), rtol=0, atol=1e-5)


def chunks_of_spikes(steps, batch, c_in, size, amp, seed):
    return [spike_map(c * batch, c_in, size, size, amp, seed=seed + i) for i, c in enumerate(steps)]


@pytest.mark.parametrize(
    "c_in,c_out,size,stride,table_bytes",
    [
        (16, 24, 6, 1, None),  # 8-bit groups, a partial output block
        (32, 64, 8, 2, None),  # strided, several samples per tile
        (70, 16, 5, 1, 9 * 16 * 64 * 5),  # 4-bit groups in input blocks of partial sums
    ],
)
@pytest.mark.parametrize("shift,stream", [("bias", False), ("membrane", False), ("membrane", True)])
@pytest.mark.parametrize("with_addend", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_and_if_in_one_pass_equal_the_two_apart(
    monkeypatch, c_in, c_out, size, stride, table_bytes, shift, stream, with_addend, per_channel
):
    """IFNeurons.scan_conv (lookup conv + IF update in one kernel) gives bit for bit the spikes,
    membranes and counts of the lookup conv followed by the IF scan, chunk after chunk, whether
    the spikes go out by streaming stores (the default) or in place of the currents, with one
    V_th per layer or one per channel."""
    monkeypatch.setattr(lookup_conv, "STREAM_BYTES", 0 if stream else 1 << 40)
    if table_bytes:
        monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)
        monkeypatch.setattr(lookup_conv, "TABLE_BYTES", table_bytes)
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, stride, 1)
    with torch.no_grad():
        conv.weight.mul_(3)  # currents of a few V_th: many spikes
    amp, batch, steps = torch.full((c_in,), 0.8), 6, [1, 3, 4]
    v_th = torch.linspace(0.4, 1.3, c_out) if per_channel else 0.7
    fused_layer, apart = IFNeurons(v_th, shift), IFNeurons(v_th, shift)
    fused_layer.reset(sum(steps))
    apart.reset(sum(steps))
    for c, x in zip(steps, chunks_of_spikes(steps, batch, c_in, size, amp, seed=1)):
        shape = lookup_conv.output_shape(conv, x)
        add = (
            torch.randn(shape).contiguous(memory_format=torch.channels_last)
            if with_addend
            else None
        )
        got = fused_layer.scan_conv(conv, x, amp, c, addend=add)
        assert got is not None, "the fused kernel applies"
        cur = lookup_conv.conv2d(conv, x, amp).view(c, batch, *shape[1:])
        want = apart.scan(cur, c, addend=None if add is None else add.view(cur.shape))
        assert torch.equal(got, want)
    assert 0 < fused_layer.spike_count.sum() < sum(steps) * fused_layer.spike_count.numel()
    assert torch.equal(fused_layer.v, apart.v)
    assert torch.equal(fused_layer.spike_count, apart.spike_count)
    assert fused_layer.t == apart.t == sum(steps)


@pytest.mark.parametrize(
    "c_mid,stride,padding,table_bytes",
    [
        (16, 1, 1, None),  # ResNet-20 stage 1: 8-bit groups, whole vectors
        (12, 2, 0, None),  # channels not a multiple of 8 (the plain loop), strided, no border
        (70, 1, 1, 9 * 16 * 64 * 5),  # 4-bit groups in several input blocks
    ],
)
@pytest.mark.parametrize("signed", [False, True])
def test_handed_off_masks_give_the_reader_the_same_bits(
    monkeypatch, c_mid, stride, padding, table_bytes, signed
):
    """An IF layer whose fused update also makes the masks of its spikes for the next lookup
    convolution (masks_out) hands it what its own pass over the spikes would make: the reader's
    spikes, membranes and counts are bit for bit those without the masks. Given masks are what
    the reader reads: with them, the spike map's values are not looked at."""
    if table_bytes:
        monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)
        monkeypatch.setattr(lookup_conv, "TABLE_BYTES", table_bytes)
    torch.manual_seed(0)
    first = nn.Conv2d(16, c_mid, 3, 1, 1)
    second = nn.Conv2d(c_mid, 24, 3, stride, padding)
    with torch.no_grad():
        first.weight.mul_(3)  # currents of a few V_th: many spikes of either sign
        second.weight.mul_(3)
    amp, batch, steps, v_th = torch.full((16,), 0.8), 4, 3, 0.7
    x = spike_map(steps * batch, 16, 9, 9, amp, seed=2)
    layers = [IFNeurons(v_th, "membrane", signed=signed) for _ in range(4)]
    for layer in layers:
        layer.reset(steps)
    # garbage where not written
    masks = masks_for(second, (steps * batch, c_mid, 9, 9), signed, fill=255)
    handed = layers[0].scan_conv(first, x, amp, steps, masks_out=masks).clone()
    plain = layers[1].scan_conv(first, x, amp, steps)
    plain = plain.view(steps * batch, *plain.shape[2:])  # [steps, B, ...] back to [steps*B, ...]
    assert torch.equal(handed.view(plain.shape), plain)
    assert 0 < masks.nonzero.item() < masks.data.numel()
    made = masks.spikes_into(torch.full_like(plain, float("nan")), v_th)
    assert torch.equal(made.view(torch.int32), plain.view(torch.int32))  # the map, +0s included
    if signed:
        assert (plain < 0).any(), "negative spikes, so the -amp masks are exercised"
    amp_mid = torch.full((c_mid,), v_th)
    with_masks = layers[2].scan_conv(
        second, torch.zeros_like(plain), amp_mid, steps, negative=signed, masks=masks
    )
    without = layers[3].scan_conv(second, plain, amp_mid, steps, negative=signed)
    assert with_masks is not None and without is not None
    assert torch.equal(with_masks, without)
    assert torch.equal(layers[2].v, layers[3].v)
    assert torch.equal(layers[2].spike_count, layers[3].spike_count)
    assert 0 < layers[3].spike_count.abs().sum()
    # made for 8-bit groups where 4 are read, or back
    other = dataclasses.replace(masks, gb=12 - masks.gb)
    assert lookup_conv.conv2d(second, plain, amp_mid, negative=signed, masks=other) is not None
    with pytest.raises(SimulationError, match="kept only as masks made for another layout"):
        only = dataclasses.replace(other, only=True)  # and x was never written: no way to read it
        lookup_conv.conv2d(second, plain, amp_mid, negative=signed, masks=only)


@pytest.mark.parametrize(
    "c,table_bytes",
    [(16, None), (12, None), (70, 9 * 16 * 64 * 5)],  # 8-bit groups; the plain loop; 4-bit
)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_addend_read_from_handed_off_masks_gives_the_same_bits(
    monkeypatch, c, table_bytes, signed, per_channel
):
    """A residual addend that is another IF layer's spike map can be read from the masks that
    layer handed on (addend_masks): the same spikes, membranes and counts as from its values,
    with one V_th per layer or one per channel (the amplitudes the masks stand for)."""
    if table_bytes:
        monkeypatch.setattr(lookup_conv, "TABLE8_BYTES", 0)
        monkeypatch.setattr(lookup_conv, "TABLE_BYTES", table_bytes)
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, 3, 1, 1)
    with torch.no_grad():
        conv.weight.mul_(3)
    amp, batch, steps = torch.full((c,), 0.8), 4, 3
    first_v_th = torch.linspace(0.5, 1.1, c) if per_channel else 0.8
    layers = [IFNeurons(v, "membrane", signed=signed) for v in (first_v_th, 0.6, 0.6)]
    for layer in layers:
        layer.reset(steps)
    masks = masks_for(conv, (steps * batch, c, 7, 7), signed, only=True)  # as conv reads them
    first = layers[0].scan_conv(conv, spike_map(steps * batch, c, 7, 7, amp, seed=3), amp, steps)
    layers[0].reset(steps)
    x = spike_map(steps * batch, c, 7, 7, amp, seed=3)
    unwritten = layers[0].scan_conv(
        conv, x, amp, steps, out=torch.full_like(first, float("nan")), masks_out=masks
    )
    assert torch.isnan(unwritten).all(), "only the masks were written"
    addend = first.reshape(steps * batch, *first.shape[2:])
    y = spike_map(steps * batch, c, 7, 7, amp, seed=4)
    from_values = layers[1].scan_conv(conv, y, amp, steps, addend=addend)
    from_masks = layers[2].scan_conv(
        conv, y, amp, steps, addend=torch.full_like(addend, float("nan")),
        addend_masks=(masks, layers[0].v_th),
    )  # fmt: skip
    assert from_values is not None and from_masks is not None
    assert torch.equal(from_values, from_masks)
    assert torch.equal(layers[1].v, layers[2].v)
    assert torch.equal(layers[1].spike_count, layers[2].spike_count)
    assert 0 < layers[1].spike_count.abs().sum()


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("fused_conv", [False, True])
def test_first_step_writes_the_counts_whatever_they_held(fused_conv, signed):
    """A simulation's state starts ``unset``: the compiled kernels write the counts (and events)
    at its first step instead of adding to them. Unset counts full of NaN give the bits that
    zeroed ones give through the kernels' ordinary add, here and in the chunk after."""
    from snnconv.simulation import neuron

    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(3)  # currents of a few V_th, both signs: spikes of both signs
    amp, batch, chunks = torch.full((16,), 0.8), 4, [3, 2]
    layers = [IFNeurons(0.7, "membrane", signed=signed) for _ in range(2)]
    got = []
    for layer, garbage in zip(layers, (True, False)):
        layer.reset(sum(chunks))
        outs = []
        for i, c in enumerate(chunks):
            x = spike_map(c * batch, 16, 6, 6, amp, seed=i)
            if layer.state is None:
                cur = lookup_conv.conv2d(conv, x, amp).view(c, batch, 16, 6, 6)
                state = layer.start(cur[0])
                assert state.unset
                if garbage:
                    state.count.fill_(float("nan"))
                    if signed:
                        state.events.fill_(float("nan"))
                else:
                    neuron.settle(state)  # zeros, read and added to by the kernel
            if fused_conv:
                out = layer.scan_conv(conv, x, amp, c)
                assert out is not None, "the fused kernel applies"
            else:
                out = layer.scan(lookup_conv.conv2d(conv, x, amp).view(c, batch, 16, 6, 6), c)
            outs.append(out.clone())
        assert not layer.state.unset
        got.append((torch.cat(outs), layer.v, layer.spike_count, layer.spike_events))
    for a, b in zip(*got):
        assert torch.equal(a, b)
    if signed:
        assert (got[0][0] < 0).any() and (got[0][0] > 0).any()
    assert got[0][2].isfinite().all() and got[0][2].abs().sum() > 0


def test_scan_conv_declines_without_touching_state(monkeypatch):
    conv = nn.Conv2d(16, 16, 3, padding=1)
    amp = torch.ones(16)
    x = spike_map(2 * 4, 16, 6, 6, amp)
    recording = IFNeurons(1.0)
    recording.reset(4)
    recording.recorder = []  # recording its input currents
    assert recording.scan_conv(conv, x, amp, 2) is None  # the currents must be kept
    layer = IFNeurons(1.0, "membrane")
    layer.reset(4)
    layer.scan_conv(conv, x, amp, 2)
    before = layer.v.clone(), layer.spike_count.clone(), layer.t
    not_spikes = x.clone()
    not_spikes[5, 3, 2, 2] = 0.5
    assert layer.scan_conv(conv, not_spikes, amp, 2) is None
    assert layer.scan_conv(conv, x.contiguous(), amp, 2) is None  # not channels_last
    signed_masks = masks_for(conv, (8, 16, 6, 6), True, only=True)
    assert layer.scan_conv(conv, x, amp, 2, masks_out=signed_masks) is None  # another neuron's
    assert torch.equal(layer.v, before[0]) and torch.equal(layer.spike_count, before[1])
    assert layer.t == before[2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert layer.scan_conv(conv, x, amp, 2) is None  # 4 samples cannot keep 8 threads busy


@pytest.mark.parametrize("neuron", ["if", "signed"])
def test_simulation_fuses_convs_into_their_if_layers(monkeypatch, neuron):
    """ResNet-20: every conv read only by an IF layer (directly or through the residual add)
    runs fused with it, each IF layer read by one hands it the masks of its spikes, and the
    simulation equals the one with the two apart, bit for bit."""
    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval(), shift="membrane", neuron=neuron)
    snn = snn.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    calls, handed = [], []
    real = IFNeurons.scan_conv

    def counted(self, *a, **k):
        handed.append(
            (k.get("masks") is not None, k.get("masks_out") is not None, k.get("addend_masks"))
        )
        calls.append(real(self, *a, **k))
        return calls[-1]

    monkeypatch.setattr(IFNeurons, "scan_conv", counted)
    fused_run = snn(x, 12, max_chunk_bytes=20_000_000)
    chunks = len(calls) // 18
    assert chunks >= 2 and len(calls) == 18 * chunks and all(c is not None for c in calls)
    # per chunk, all 18 but the first conv read masks (the stem's IF layer is a plain scan, which
    # makes none), all 18 but the last IF layer (read by the pooling) hand theirs on, and 6 of
    # the 7 identity shortcuts' addends (all but the stem's) are read from masks
    counts = [sum(h[i] is not None and h[i] is not False for h in handed) for i in (0, 1, 2)]
    assert counts == [17 * chunks, 17 * chunks, 6 * chunks]
    monkeypatch.setattr(IFNeurons, "scan_conv", lambda self, *a, **k: None)
    assert torch.equal(fused_run, snn(x, 12, max_chunk_bytes=20_000_000))


@pytest.mark.parametrize("neuron", ["if", "signed"])
@pytest.mark.parametrize("declining", ["convs", "sums"])
def test_layers_read_only_through_masks_skip_their_spike_maps(monkeypatch, neuron, declining):
    """ResNet-20: the inner IF layer of each of the 9 blocks is read only by the block's second
    conv, and 7 others only by the next block's first conv and its identity shortcut (a residual
    sum taken into an IF layer's update), so these 16 write only the masks of their spikes.
    Where a reader cannot take them after all, the spike map is made from the masks and read:
    "convs": the IF layers reading those convs and the lookup decline (the module runs on the
    map); "sums": the IF layers given a shortcut's masks as their addend decline (their scan
    reads it). The simulation equals the one without any hand-off, bit for bit."""
    from snnconv.simulation import plan as plans

    torch.manual_seed(0)
    snn = snnconv.convert(models.build("resnet20").eval(), shift="membrane", neuron=neuron)
    snn = snn.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    plan = plans.plan_for(snn.graph)
    modules = dict(snn.graph.named_modules())
    readers = {modules[plan.handoff[n].target] for n in plan.masks_only}
    assert len(plan.masks_only) == len(readers) == 16
    real_scan, real_conv = IFNeurons.scan_conv, lookup_conv.conv2d
    if declining == "convs":
        declines = lambda conv, k: conv in readers
        monkeypatch.setattr(
            lookup_conv,
            "conv2d",
            lambda conv, *a, **k: None if conv in readers else real_conv(conv, *a, **k),
        )
    else:
        declines = lambda conv, k: k.get("addend_masks") is not None
    monkeypatch.setattr(
        IFNeurons,
        "scan_conv",
        lambda self, conv, *a, **k: None if declines(conv, k) else real_scan(self, conv, *a, **k),
    )
    made = []
    real_made = cpu.SpikeMasks.spikes_into
    monkeypatch.setattr(
        cpu.SpikeMasks, "spikes_into", lambda self, *a: made.append(1) or real_made(self, *a)
    )
    handed = snn(x, 12, max_chunk_bytes=20_000_000)
    # maps made in each of 2+ chunks: "convs", of the masks-only layers still fused (those not
    # reading a declining conv themselves); "sums", of the 6 shortcuts after the stem's block
    assert len(made) >= 2 * 6
    monkeypatch.setattr(IFNeurons, "scan_conv", lambda self, *a, **k: None)  # no hand-off
    assert torch.equal(handed, snn(x, 12, max_chunk_bytes=20_000_000))


def test_conv_wrapper_refuses_what_does_not_fit_its_geometry():
    """The typed wrapper checks the geometry (output size, plan) and every tensor against it
    before the kernel runs: a mistake is an error, never an access out of bounds."""
    from snnconv.kernels import backend

    conv, amp = nn.Conv2d(8, 16, 3, padding=1), torch.ones(8)
    x = spike_map(2, 8, 6, 6, amp)
    table, gb, nv, gr, bias = lookup_conv._table_for(conv, amp)
    geometry = lookup_conv.geometry(conv, x, (gb, nv, gr))
    out = torch.empty(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    kernels = backend.cpp()
    assert kernels.spike_conv2d(x, amp, table, bias, out, geometry)

    def changed(**fields):
        g = cpu.ConvGeometry.from_buffer_copy(geometry)
        for name, value in fields.items():
            setattr(g, name, value)
        return g

    for g in (changed(ho=7), changed(nv=5), changed(gb=6), changed(sh=0), changed(n=0)):
        with pytest.raises(SimulationError, match="impossible geometry"):
            kernels.spike_conv2d(x, amp, table, bias, out, g)
    for args, name in [
        ((x[:1], amp, table, bias, out), "x"),
        ((x, amp[:4], table, bias, out), "amp"),
        ((x, amp, table.flatten()[1:], bias, out), "table"),
        ((x, amp, table, bias, out.contiguous()), "out"),  # not channels_last
    ]:
        with pytest.raises(SimulationError, match=f"kernel argument {name}"):
            kernels.spike_conv2d(*args, geometry)
    v = torch.zeros(1, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    theta, v_th = torch.ones(2, 16), torch.ones(16)  # per step and channel; per channel
    fire = cpu.FusedIF(v, v.clone(), theta, v_th, None, 2)  # 2 images = 2 steps x 1
    assert kernels.spike_conv2d(x, amp, table, bias, out, geometry, fire)
    for bad, message in [
        (cpu.FusedIF(v, v.clone(), torch.ones(3, 16), v_th, None, 3), "not steps=3"),
        (cpu.FusedIF(v[:, :8], v.clone(), theta, v_th, None, 2), "kernel argument v"),
        (cpu.FusedIF(v, v.clone(), theta, v_th, v, 2), "kernel argument addend"),
        (cpu.FusedIF(v, v.clone(), theta[:, :8], v_th, None, 2), "kernel argument theta"),
        (cpu.FusedIF(v, v.clone(), theta, v_th[:1], None, 2), "kernel argument v_th"),
    ]:
        with pytest.raises(SimulationError, match=message):
            kernels.spike_conv2d(x, amp, table, bias, out, geometry, bad)
    # masks: of this call's layout and size (in: 2 images of 8x8 padded pixels, one group each)
    nonzero = torch.zeros(1, dtype=torch.int64)
    masks_in = cpu.SpikeMasks(torch.zeros(2, 64, dtype=torch.uint8), nonzero, gb, 1, 1, False)
    assert kernels.spike_conv2d(x, amp, table, bias, out, geometry, masks=masks_in)
    bad_in = [
        (dataclasses.replace(masks_in, gb=4), "masks made for gb=4"),
        (dataclasses.replace(masks_in, negative=True), "signed, not this convolution's"),
        (dataclasses.replace(masks_in, data=masks_in.data[:, :63]), "kernel argument masks"),
    ]
    for bad, message in bad_in:
        with pytest.raises(SimulationError, match=message):
            kernels.spike_conv2d(x, amp, table, bias, out, geometry, masks=bad)
    masks_out = cpu.SpikeMasks(torch.zeros(2, 128, dtype=torch.uint8), nonzero, 8, 1, 1, False)
    for bad, message in [
        (dataclasses.replace(masks_out, negative=True), "signed masks for ordinary neurons"),
        (dataclasses.replace(masks_out, gb=6), "impossible mask layout"),
        (dataclasses.replace(masks_out, data=masks_out.data[:1]), "kernel argument masks"),
    ]:
        with pytest.raises(SimulationError, match=message):
            kernels.spike_conv2d(
                x, amp, table, bias, out, geometry, dataclasses.replace(fire, masks=bad)
            )
