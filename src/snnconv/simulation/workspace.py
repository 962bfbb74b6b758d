"""Output buffers kept from one simulation to the next, and the one rule for reusing them.

Fresh tensors of tens of MiB come from new ``mmap``s whose first touch costs page faults (measured:
a third of a CPU simulation's time at 2 GiB chunks). So what the simulator writes for every chunk
(IF layers' spikes, lookup convs' outputs, zero pads) goes into buffers kept per node name in a
workspace (a dict the network keeps, ``SpikingNetwork.workspace``).

The rule (``take``): a request for a tensor of shape [n, *rest] gets the first n rows of the kept
buffer when that has at least n rows and the same trailing shape, dtype, device and memory
format; otherwise a new buffer is made and kept in its place. Results are views of kept buffers,
valid until the next simulation with the same workspace.
"""

from __future__ import annotations

import ctypes

import torch

Workspace = dict  # node name -> kept buffer


def _layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format a tensor is in: channels_last for 4-D tensors in it (and not also
    contiguous, as size-1 dims allow), else contiguous."""
    if (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def take(
    ws: Workspace,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """An uninitialised [shape] tensor from buffer ``name`` of ``ws`` (see the module docstring)."""
    kept = ws.get(name)
    if (
        kept is not None
        and kept.shape[0] >= shape[0]
        and tuple(kept.shape[1:]) == tuple(shape[1:])
        and kept.dtype == dtype
        and kept.device == device
        and (len(shape) != 4 or kept.is_contiguous(memory_format=memory_format))
    ):
        return kept[: shape[0]]
    fmt = memory_format if len(shape) == 4 else torch.contiguous_format
    new = torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)
    ws[name] = new
    return new


def take_like(ws: Workspace, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``take`` with the dtype, device and memory format of ``like``."""
    return take(ws, name, shape, like.dtype, like.device, _layout(like))


def pad_layout(x: torch.Tensor) -> torch.memory_format:
    """The layout F.pad gives its output: channels_last when x's strides are ordered as in
    channels_last (x may be a strided view, e.g. ``y[:, :, ::2, ::2]``) and x is not contiguous."""
    st = x.stride()
    if x.dim() == 4 and st[1] <= st[3] <= st[2] <= st[0] and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def pad_shape(x: torch.Tensor, pad) -> list[int]:
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        shape[-1 - i] += pad[2 * i] + pad[2 * i + 1]
    return shape


def pad_into(x: torch.Tensor, pad, out: torch.Tensor | None) -> torch.Tensor:
    """F.pad(x, pad) with zeros, as PyTorch computes it (fill, then copy x inside), written into
    ``out`` when it has the padded shape and x's dtype, device and memory format (on ResNet-20's
    option-A shortcuts a kept buffer saves 15 ms of page faults per chunk)."""
    shape = pad_shape(x, pad)
    fmt = pad_layout(x)
    if (
        out is None
        or list(out.shape) != shape
        or out.dtype != x.dtype
        or out.device != x.device
        or not out.is_contiguous(memory_format=fmt)
    ):
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    inside = out
    for i in range(len(pad) // 2):
        inside = inside.narrow(x.dim() - 1 - i, pad[2 * i], x.shape[-1 - i])
    out.zero_()
    inside.copy_(x)
    return out


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept before it goes back to the system


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of returning it to
    the system (the same page-fault cost as above, for the tensors outside the workspace: the
    ANN's activations, the neurons' fresh state): blocks of up to MMAP_THRESHOLD come from the
    heap, and up to TRIM_THRESHOLD of free memory stays mapped at its top. Process-wide, so the
    command line calls it, not the library. Returns False (and changes nothing) where the C
    library has no ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
