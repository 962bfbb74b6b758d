"""A fused CPU kernel for the IF scan (optional; compiled on first use, in about a second, with
the system's C++ compiler, and cached in ~/.cache/snnconv/kernels).

It computes exactly what ``IFNeurons.scan``'s PyTorch loop computes, with the same float
operations in the same order (tests/test_fused.py compares them bit for bit), but in one pass:
each thread takes a block of neurons and runs all steps of the chunk on it while its membranes
sit in cache, instead of sweeping the whole layer's memory three times per step. It is plain
C++ called through ctypes on the tensors' data pointers, so building it needs no torch headers.

Set SNNCONV_FUSED=0 to use the PyTorch loop only.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = r"""
#include <algorithm>
#include <cstdint>

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
static void scan(const T* cur, int constant, T* v, const T* theta, T vth, T* out, T* count,
                 int64_t steps, int64_t n, int threads) {
  const int64_t B = 4096;  // neurons whose membranes stay in L1/L2 across the chunk's steps
  const int64_t blocks = (n + B - 1) / B;
  // OpenMP shares PyTorch's thread team (the same libgomp), so no second pool competes with it
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * B, len = std::min(n, lo + B) - lo;
    for (int64_t k = 0; k < steps; ++k)
      block<T>(cur + (constant ? 0 : k * n) + lo, v + lo, out + k * n + lo, count + lo,
               theta[k], vth, len);
  }
}

extern "C" {
void if_scan_f32(const float* cur, int constant, float* v, const float* theta, float vth,
                 float* out, float* count, int64_t steps, int64_t n, int threads) {
  scan<float>(cur, constant, v, theta, vth, out, count, steps, n, threads);
}
void if_scan_f64(const double* cur, int constant, double* v, const double* theta, double vth,
                 double* out, double* count, int64_t steps, int64_t n, int threads) {
  scan<double>(cur, constant, v, theta, vth, out, count, steps, n, threads);
}
}
"""
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17",
         "-shared", "-fPIC", "-fopenmp"]

_lib = None
_failed = False


def _build() -> ctypes.CDLL:
    """Compile SOURCE into a shared library (cached by a hash of source, flags and compiler)."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    key = hashlib.sha256("\0".join([SOURCE, cxx, *FLAGS]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snnconv" / "kernels"
    lib = cache / f"if_scan_{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, so = Path(tmp) / "if_scan.cpp", Path(tmp) / "if_scan.so"
            src.write_text(SOURCE)
            done = subprocess.run([cxx, *FLAGS, str(src), "-o", str(so)], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[:300]}")
            os.replace(so, lib)  # atomic: a concurrent build never sees half a library
    dll = ctypes.CDLL(str(lib))
    for name, c in (("if_scan_f32", ctypes.c_float), ("if_scan_f64", ctypes.c_double)):
        getattr(dll, name).argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_void_p, c, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
        getattr(dll, name).restype = None
    return dll


def kernel():
    """The compiled library, or None (disabled, no compiler, or the build failed once)."""
    global _lib, _failed
    if _lib is not None or _failed or os.environ.get("SNNCONV_FUSED", "1") == "0":
        return _lib
    try:
        _lib = _build()
    except Exception as err:  # no compiler: the PyTorch loop does the same work
        _failed = True
        warnings.warn(f"snnconv: fused IF kernel unavailable ({type(err).__name__}: "
                      f"{str(err)[:300]}); using the PyTorch loop")
    return _lib


def if_scan(current: torch.Tensor, constant: bool, v: torch.Tensor, theta: torch.Tensor,
            v_th: float, out: torch.Tensor, count: torch.Tensor) -> None:
    """Run the kernel in place on v, out and count (see SOURCE for the arithmetic)."""
    lib = kernel()
    fn = lib.if_scan_f32 if v.dtype == torch.float32 else lib.if_scan_f64
    theta = theta.contiguous()
    fn(current.data_ptr(), int(constant), v.data_ptr(), theta.data_ptr(), v_th, out.data_ptr(),
       count.data_ptr(), theta.numel(), v.numel(), torch.get_num_threads())


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
            and v.dtype == out.dtype == v_th.dtype and (not constant or current.stride() == v.stride()))
