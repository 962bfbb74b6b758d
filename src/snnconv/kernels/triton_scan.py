"""The IF scan on CUDA as one Triton kernel per chunk. cpu.if_scan imports this module only when
backend.scan_backend chose "triton" (CUDA tensors, triton installed: PyTorch's CUDA builds ship
it; importing it costs ~0.3 s).

It computes what ``IFNeurons.scan``'s PyTorch loop computes, with the same float operations in
the same order (tests/test_fused.py compares them bit for bit with SNNCONV_TEST_DEVICE=cuda):
per step k, v += I[k]; s = v >= theta[k]; v -= s * V_th; out[k] = s * V_th; count += s. Each
program keeps BLOCK neurons' membranes and counts in registers across the chunk's steps, so per
step it reads the current (and the addend) and writes the spikes once, where the loop makes 8
passes over the layer in 3 launches. V_th and the thresholds are read on the device: no host sync.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _if_scan(
    cur,
    add,
    v,
    theta,
    vth_ptr,
    out,
    count,
    steps,
    n,
    CONSTANT: tl.constexpr,
    ADD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    vth = tl.load(vth_ptr)
    vm = tl.load(v + offs, mask=mask, other=0.0)
    cnt = tl.load(count + offs, mask=mask, other=0.0)
    x = tl.load(cur + offs, mask=mask, other=0.0)  # the constant current, or step 0's
    at = offs  # index of this step's neurons in [steps, n] tensors
    for k in range(steps):
        if not CONSTANT:
            x = tl.load(cur + at, mask=mask, other=0.0)
        if ADD:
            vm = vm + (x + tl.load(add + at, mask=mask, other=0.0))
        else:
            vm = vm + x
        s = (vm >= tl.load(theta + k)).to(vm.dtype)
        vm = vm - s * vth
        tl.store(out + at, s * vth, mask=mask)
        cnt = cnt + s
        at += n
    tl.store(v + offs, vm, mask=mask)
    tl.store(count + offs, cnt, mask=mask)


def if_scan(
    current: torch.Tensor,
    constant: bool,
    addend: torch.Tensor | None,
    v: torch.Tensor,
    theta: torch.Tensor,
    v_th: torch.Tensor,
    out: torch.Tensor,
    count: torch.Tensor,
) -> None:
    """In place on v, out and count; tensors laid out as cpu.usable requires."""
    n = v.numel()
    _if_scan[(triton.cdiv(n, BLOCK),)](
        current,
        current if addend is None else addend,
        v,
        theta.contiguous(),
        v_th,
        out,
        count,
        theta.numel(),
        n,
        CONSTANT=constant,
        ADD=addend is not None,
        BLOCK=BLOCK,
    )
