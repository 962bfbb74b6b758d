"""Convolution of spike maps by table lookup (CPU, float32, channels_last).

An IF layer's output is a spike map: every value is 0 or the channel's amplitude a[c] (its V_th).
Split the C input channels into G groups of GB bits (GB = 4 or 8). The contribution of one
input pixel to one tap (kh, kw) depends only on which channels of each group fired, one of 2^GB
patterns, so it can be read from a table instead of computed:

    table[tap][g][m][o] = sum over bits b set in m of  a[c] * W[o, c, kh, kw],   c = g*GB + b
    out[n, o, ho, wo]   = bias[o] + sum over taps, over g, of table[tap][g][mask(n, hi, wi, g)][o]

That is KH*KW*G vector adds per output pixel and block of 16 output channels instead of KH*KW*C
multiply-adds: GB times fewer operations whatever the firing rate. The all-zero pattern's row adds
nothing, so where most groups are silent (and the layer is wide enough for it to pay) the kernel
reads per-pixel lists of the non-zero groups instead (SPARSE_BELOW): the same sums in the same
order, the same bits, fewer adds. The masks of an image are
stored with a zero border as wide as the padding, so taps outside the image read the all-zero
pattern, whose row is 0 (no bounds tests); several output pixels are summed at once so that many
table loads are in flight. 8-bit groups are used where the whole table is at most TABLE8_BYTES
(measured faster even when it lives in L3), else 4-bit groups in input blocks that fit
TABLE_BYTES of L2, whose partial sums are added into the output. Tables depend only on the
weights and amplitudes: built once per layer (summed in float64, rounded once) and kept while
those do not change. They take 2^GB/GB times the layer's weight memory (4x with 4-bit groups,
32x with 8-bit ones).

With ``fire`` the IF layer that reads the convolution is updated in the same pass, image after
image, while its current is still in cache (IFNeurons.scan_conv): the current is never written
to memory and read back.

The result equals F.conv2d up to float rounding (the sums are grouped differently). The kernel
checks that the input really is a spike map and reports otherwise, before it writes anything;
the caller then uses the module itself. benchmarks/spikeconv_speed.py measures it per layer
shape against oneDNN's convolution.

This module plans and builds the tables; the kernel is csrc/spike_conv.cpp, called through
``cpu.Kernels.spike_conv2d`` with the shapes as one struct (``geometry``). It runs where
``backend.conv_backend`` says "lookup" (the C++ kernels are loaded and SNNCONV_FUSED is not 0).
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from snnconv.exceptions import SimulationError
from snnconv.kernels import backend, cpu

MAX_TABLE_BYTES = 64 << 20  # larger tables (very wide layers): use F.conv2d


def _l2_bytes() -> int:
    """Per-core L2 cache size from sysfs; 512 KiB where it cannot be read."""
    try:
        for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return 512 << 10


# One table block stays in L2 while the masks and outputs stream past it: 60 % of L2 leaves room
# for them (and, in the fused IF update, for the membranes of the samples in work).
TABLE_BYTES = int(0.6 * _l2_bytes())
# Fused outputs of more than this many bytes bypass the caches: the currents go to a scratch in L2,
# the spikes to memory with streaming stores (no read of the output's lines before they are
# written). 0: always (benchmarks/ab_speed.py, ResNet-20 and VGG-16, batch 8-250, against 32 MiB:
# new/old 0.93-1.00 with AVX-512; AVX2 emulated 0.97, 0.98 and 1.05, the spread of the machine).
STREAM_BYTES = 0
TABLE8_BYTES = 8 << 20  # an 8-bit-group table up to this size is read from L3 (a share of it)
# The kernel skips the all-zero groups (per-pixel lists of the others, the same bits) when fewer
# than this fraction of an input's groups are non-zero and the layer's shape lets it pay
# (spike_conv.cpp's sparse_pays); 0: never, above 1: always. Measured with
# benchmarks/spikeconv_speed.py --rates: wide layers gain 1.1-1.6x at 76 % non-zero groups.
SPARSE_BELOW = 0.85

_tables: weakref.WeakKeyDictionary[nn.Conv2d, tuple] = weakref.WeakKeyDictionary()


def plan(c_in: int, c_out: int, taps: int) -> tuple[int, int, int]:
    """(GB, NV, GR): bits per channel group, 16-channel vectors per output block (at most 4),
    groups per input block. 8-bit groups, all input in one block, where the whole table is at
    most TABLE8_BYTES: half the lookups of 4-bit groups, and measured faster even from L3 (64->64
    channels at 8x8: 3.9 ms vs 4.8 ms per 512 maps). Else 4-bit groups in input blocks of
    at most TABLE_BYTES (taps * GR * 16 * 16NV floats each)."""
    widest = min(4, -(-c_out // 16))
    groups = -(-c_in // 8)
    if -(-c_out // (16 * widest)) * taps * groups * 256 * 64 * widest <= TABLE8_BYTES:
        return 8, widest, groups
    groups = -(-c_in // 4)
    for nv in range(widest, 0, -1):
        gr = TABLE_BYTES // (taps * 16 * 64 * nv)
        if gr >= 1:
            return 4, nv, min(gr, groups)
    return 4, 1, 1


def lookup_table(
    weight: torch.Tensor, amp: torch.Tensor, gb: int, nv: int, gr: int
) -> torch.Tensor:
    """[ceil(Cout/L)][ceil(G/GR)][KH*KW][GR][2^GB][L] float32 (L = 16*nv, G = ceil(C/GB)) from
    weight [Cout, C, KH, KW] and spike amplitudes amp [C]; padded channels and groups are zero."""
    c_out, c_in, kh, kw = weight.shape
    g, lanes = -(-c_in // gb), 16 * nv
    cblocks, blocks = -(-g // gr), -(-c_out // lanes)
    patterns = torch.arange(1 << gb)
    bits = ((patterns.view(-1, 1) >> torch.arange(gb)) & 1).to(torch.float64)  # [2^GB, GB]
    w = (weight.double() * amp.double().view(1, -1, 1, 1)).permute(2, 3, 1, 0)
    w = F.pad(
        w.reshape(kh * kw, c_in, c_out), (0, blocks * lanes - c_out, 0, cblocks * gr * gb - c_in)
    )
    w = w.view(kh * kw, cblocks * gr, gb, blocks * lanes)
    table = torch.einsum("mb,tgbo->tgmo", bits, w)  # summed in float64, rounded once
    table = table.view(kh * kw, cblocks, gr, 1 << gb, blocks, lanes)
    return table.permute(4, 1, 0, 2, 3, 5).contiguous().float()


def _table_for(conv: nn.Conv2d, amp: torch.Tensor):
    """(table, GB, NV, GR, bias) for ``conv`` fed spikes of amplitudes ``amp``, cached per module
    while its weight, bias and the amplitudes are unchanged."""
    bias = conv.bias
    key = (
        conv.weight._version,
        conv.weight.data_ptr(),
        None if bias is None else bias._version,
        amp.tolist(),
    )
    hit = _tables.get(conv)
    if hit is not None and hit[0] == key:
        return hit[1]
    c_out, c_in, kh, kw = conv.weight.shape
    gb, nv, gr = plan(c_in, c_out, kh * kw)
    table = lookup_table(conv.weight.detach(), amp, gb, nv, gr)
    b = (
        bias.detach().float().contiguous()
        if bias is not None
        else torch.zeros(c_out, dtype=torch.float32)
    )
    value = (table, gb, nv, gr, b)
    _tables[conv] = (key, value)
    return value


def _takes(conv: nn.Module) -> bool:
    """The conv side of ``applies``: a plain zero-padded Conv2d (groups 1, dilation 1, float32,
    CPU) with a table of at most MAX_TABLE_BYTES, and the lookup backend on the CPU."""
    if not (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    ):
        return False
    c_out, c_in, kh, kw = conv.weight.shape
    gb, nv, gr = plan(c_in, c_out, kh * kw)
    groups = -(-c_in // gb)
    size = -(-c_out // (16 * nv)) * -(-groups // gr) * kh * kw * gr * (1 << gb) * 64 * nv
    return size <= MAX_TABLE_BYTES and backend.conv_backend(torch.device("cpu")) == "lookup"


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """The kernel handles this call: ``_takes(conv)``, on a non-empty 4-D channels_last float32
    CPU input."""
    return (
        x.dim() == 4
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[0] > 0
        and _takes(conv)
    )


def mask_layout(conv: nn.Module) -> tuple[int, int, int] | None:
    """(GB, ph, pw): the layout of the masks ``conv`` reads (cpu.SpikeMasks), so that the IF layer
    writing its input can make them; None where the kernel does not take ``conv``."""
    if not _takes(conv):
        return None
    c_out, c_in, kh, kw = conv.weight.shape
    return plan(c_in, c_out, kh * kw)[0], conv.padding[0], conv.padding[1]


def output_shape(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int]:
    """conv(x).shape for a zero-padded Conv2d with dilation 1 (what ``applies`` admits)."""
    n, _, h, w = x.shape
    c_out, _, kh, kw = conv.weight.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    return n, c_out, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def geometry(
    conv: nn.Conv2d, x: torch.Tensor, plan: tuple[int, int, int], negative: bool = False
) -> cpu.ConvGeometry:
    """The kernel's geometry of ``conv`` applied to ``x`` with the table's ``plan`` (GB, NV, GR);
    ``negative``: x may hold -amp[c] too (a signed layer's spikes)."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = conv.weight.shape
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    ho, wo = output_shape(conv, x)[2:]
    gb, nv, gr = plan
    return cpu.ConvGeometry(
        n=n,
        c=c_in,
        h=h,
        w=w,
        cout=c_out,
        kh=kh,
        kw=kw,
        sh=sh,
        sw=sw,
        ph=ph,
        pw=pw,
        ho=ho,
        wo=wo,
        gb=gb,
        nv=nv,
        gr=gr,
        negative=int(negative),
        sparse_below=SPARSE_BELOW,
    )


def _reusable(out: torch.Tensor | None, shape: tuple[int, int, int, int]) -> bool:
    """``out`` can hold a result of ``shape``: at least as many rows, the same shape otherwise,
    float32 channels_last on the CPU."""
    return (
        out is not None
        and out.shape[0] >= shape[0]
        and out.shape[1:] == shape[1:]
        and out.dtype == torch.float32
        and out.device.type == "cpu"
        and out.is_contiguous(memory_format=torch.channels_last)
    )


def conv2d(
    conv: nn.Conv2d,
    x: torch.Tensor,
    amp: torch.Tensor,
    out: torch.Tensor | None = None,
    fire: cpu.FusedIF | tuple | None = None,
    negative: bool = False,
    masks: cpu.SpikeMasks | None = None,
) -> torch.Tensor | None:
    """conv(x) for a spike map x (values 0 or amp[c], or also -amp[c] with ``negative``: a signed
    layer's spikes, whose table rows are subtracted) in channels_last, or None when the kernel
    does not apply or x turns out not to be a spike map (then use conv(x); nothing was written).
    Written into ``out`` when it has at least as many rows and the same shape otherwise (a reused
    buffer saves the page faults of fresh memory); the result is then a view of it.

    ``fire`` (a cpu.FusedIF, or the tuple ``(v, count, theta, v_th, addend, steps)`` of its
    fields) runs the IF layer that reads the result in the same pass (IFNeurons.scan_conv sets it
    up): rows are n = k*B + b (step k < steps, sample b), v and count [B, ...] are updated in
    place, and the result holds the spikes (and, with ``fire.masks``, their masks for the next
    convolution). ``masks``: x's masks, made that way for this convolution (``mask_layout``),
    read instead of x's values; ignored if their layout is not this call's (an error if they are
    x's only copy, ``masks.only``)."""
    if not applies(conv, x):
        return None
    amp = amp.to(torch.float32).expand(x.shape[1]).contiguous()
    table, gb, nv, gr, bias = _table_for(conv, amp)
    shape = output_shape(conv, x)
    if shape[2] < 1 or shape[3] < 1:
        return None
    out = out[: shape[0]] if _reusable(out, shape) else None
    if out is None:
        out = torch.empty(shape, memory_format=torch.channels_last)
    if isinstance(fire, tuple):
        fire = cpu.FusedIF(*fire)
    with torch.profiler.record_function(
        "snnconv::spike_conv2d (lookup)"
        if fire is None
        else "snnconv::spike_conv2d + IF (lookup, fused)"
    ):
        done = backend.cpp().spike_conv2d(
            x,
            amp,
            table,
            bias,
            out,
            geometry(conv, x, (gb, nv, gr), negative),
            fire,
            STREAM_BYTES,
            masks=_readable(masks, conv, gb, negative),
        )
    return out if done else None


def _readable(masks: cpu.SpikeMasks | None, conv: nn.Conv2d, gb: int, negative: bool):
    """``masks`` if they are in the layout ``conv`` reads (groups of ``gb``, its padding, signed
    or not), else None (x is read instead); an error if x was never written (``masks.only``)."""
    if masks is None or (masks.gb, masks.ph, masks.pw, masks.negative) == (
        gb,
        *conv.padding,
        negative,
    ):
        return masks
    if masks.only:  # x holds nothing: the masks were its only copy
        raise SimulationError(
            f"{conv}: its input's spike map was kept only as masks made for another layout (a "
            "different plan between writer and reader)"
        )
    return None
