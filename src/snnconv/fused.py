"""A fused CPU kernel for the IF scan (optional; compiled on first use with the system's C++
compiler and ninja, cached by torch in ~/.cache/torch_extensions).

It computes exactly what ``IFNeurons.scan``'s PyTorch loop computes, with the same float
operations in the same order (tests/test_fused.py compares them bit for bit), but in one pass:
each thread takes a block of neurons and runs all steps of the chunk on it while its membranes
sit in cache, instead of sweeping the whole layer's memory three times per step.

Set SNNCONV_FUSED=0 to use the PyTorch loop only.
"""
from __future__ import annotations

import os
import warnings

import torch

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

// current: [steps, n] or [n] (constant), v/count: [n], theta: [steps] firing thresholds,
// out: [steps, n]. Per step k: v += I; s = v >= theta[k]; v -= s * vth; out = s * vth;
// count += s. Tensors are dense with identical element order (any memory format).
template <typename T>
static void block(const T* __restrict__ in, T* __restrict__ v, T* __restrict__ o,
                  T* __restrict__ count, T th, T vth, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {  // branch-free, so it vectorises
    T x = v[i] + in[i];
    T s = static_cast<T>(x >= th);
    v[i] = x - s * vth;
    o[i] = s * vth;
    count[i] += s;
  }
}

template <typename T>
void scan_impl(const T* cur, bool constant, T* v, const T* theta, T vth, T* out, T* count,
               int64_t steps, int64_t n) {
  const int64_t B = 4096;  // neurons whose membranes stay in L1/L2 across the chunk's steps
  at::parallel_for(0, (n + B - 1) / B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * B, len = std::min(n, lo + B) - lo;
      for (int64_t k = 0; k < steps; ++k)
        block<T>(cur + (constant ? 0 : k * n) + lo, v + lo, out + k * n + lo, count + lo,
                 theta[k], vth, len);
    }
  });
}

void if_scan(torch::Tensor current, bool constant, torch::Tensor v, torch::Tensor theta,
             double vth, torch::Tensor out, torch::Tensor count) {
  int64_t n = v.numel(), steps = theta.numel();
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "if_scan", [&] {
    scan_impl<scalar_t>(current.data_ptr<scalar_t>(), constant, v.data_ptr<scalar_t>(),
                        theta.data_ptr<scalar_t>(), static_cast<scalar_t>(vth),
                        out.data_ptr<scalar_t>(), count.data_ptr<scalar_t>(), steps, n);
  });
}
"""

_kernel = None
_failed = False


def kernel():
    """The compiled module, or None (disabled, no compiler, or the build failed once)."""
    global _kernel, _failed
    if _kernel is not None or _failed or os.environ.get("SNNCONV_FUSED", "1") == "0":
        return _kernel
    try:
        from torch.utils.cpp_extension import load_inline
        _kernel = load_inline("snnconv_if_scan", cpp_sources=SOURCE, functions=["if_scan"],
                              extra_cflags=["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=off"], verbose=False)
    except Exception as err:  # no compiler / ninja: the PyTorch loop does the same work
        _failed = True
        warnings.warn(f"snnconv: fused IF kernel unavailable ({type(err).__name__}: "
                      f"{str(err)[:200]}); using the PyTorch loop")
    return _kernel


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def usable(current: torch.Tensor, constant: bool, v: torch.Tensor, out: torch.Tensor,
           v_th: torch.Tensor) -> bool:
    """The kernel applies: CPU float tensors, one scalar V_th, dense tensors in which flat index
    i is the same neuron in the current (each step), the membrane and the output."""
    if v.device.type != "cpu" or v.dtype not in (torch.float32, torch.float64) or v_th.dim():
        return False
    n = v.numel()
    steps_ok = all(t.stride(0) == n and t.stride()[1:] == v.stride()
                   for t in ([out] if constant else [out, current]))
    return (current.dtype == v.dtype and _dense(v) and steps_ok
            and (not constant or current.stride() == v.stride()))
