"""Compiled CPU kernels (optional; compiled on first use, in about 4 s, with the system's
C++ compiler, and cached in ~/.cache/snnconv/kernels): the fused IF scan, and the lookup-table
convolution of spike maps that spikeconv.py drives.

The IF scan computes exactly what ``IFNeurons.scan``'s PyTorch loop computes, with the same
float operations in the same order (tests/test_fused.py compares them bit for bit), but in one
pass: each thread takes a block of neurons and runs all steps of the chunk on it while its
membranes sit in cache, instead of sweeping the whole layer's memory three times per step. A
residual sum a + b feeding the layer is added inside the scan (rounded as the separate add
would round it), which saves a pass over memory.

Both are plain C++ called through ctypes on the tensors' data pointers, so building needs no torch
headers. They parallelise with OpenMP, which resolves to the libgomp PyTorch has loaded: the
kernels run on PyTorch's own thread team instead of a second pool competing with its spinning
workers (measured: the scan took 0.55 s with std::thread, 0.33 s with OpenMP, in
benchmarks/sim_profile.py --T 16 --channels-last).

On CUDA the IF scan runs as a Triton kernel instead (gpuscan.py); ``if_scan`` dispatches on the
device. Set SNNCONV_FUSED=0 to use PyTorch only (the IF loop and dense convolutions).
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
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
#include <cstring>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

// current: [steps, n] or [n] (constant), addend: [steps, n] or null, v/count: [n], theta: [steps]
// firing thresholds, out: [steps, n]. Per step k, with I = current (+ addend, rounded first, as a
// separate add would): v += I; s = v >= theta[k]; v -= s * vth; out = s * vth; count += s.
// Tensors are dense with identical element order (any memory format).
template <typename T, bool ADD>
static void block(const T* __restrict__ in, const T* __restrict__ ad, T* __restrict__ v,
                  T* __restrict__ o, T* __restrict__ count, T th, T vth, int64_t len) {
  for (int64_t i = 0; i < len; ++i) {  // branch-free, so it vectorises
    T x = ADD ? v[i] + (in[i] + ad[i]) : v[i] + in[i];
    T s = static_cast<T>(x >= th);
    v[i] = x - s * vth;
    o[i] = s * vth;
    count[i] += s;
  }
}

template <typename T>
static void scan(const T* cur, int constant, const T* add, T* v, const T* theta, T vth, T* out,
                 T* count, int64_t steps, int64_t n, int threads) {
  const int64_t B = 4096;  // neurons whose membranes stay in L1/L2 across the chunk's steps
  const int64_t blocks = (n + B - 1) / B;
  // OpenMP shares PyTorch's thread team (the same libgomp), so no second pool competes with it
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * B, len = std::min(n, lo + B) - lo;
    for (int64_t k = 0; k < steps; ++k) {
      const T* in = cur + (constant ? 0 : k * n) + lo;
      if (add)
        block<T, true>(in, add + k * n + lo, v + lo, out + k * n + lo, count + lo, theta[k], vth, len);
      else
        block<T, false>(in, nullptr, v + lo, out + k * n + lo, count + lo, theta[k], vth, len);
    }
  }
}

// ---- Convolution of spike maps by table lookup (spikeconv.py builds the tables) ----
typedef float v8 __attribute__((vector_size(32)));
static inline v8 ld8(const float* p) { v8 r; std::memcpy(&r, p, sizeof r); return r; }
static inline void st8(float* p, v8 r) { std::memcpy(p, &r, sizeof r); }

// Masks of one pixel's C channels in groups of GB (4 or 8) bits: bit b of m[g] is set iff
// x[g*GB + b] != 0. False if a nonzero value is not its channel's amplitude amp[c] (the input
// is not a spike map).
static inline bool spike_masks(const float* x, const float* amp, int C, int GB, uint8_t* m) {
  int c = 0;
  bool ok = true;
#ifdef __AVX2__
  const __m256 zero = _mm256_setzero_ps();
  for (; c + 8 <= C; c += 8) {
    __m256 v = _mm256_loadu_ps(x + c);
    __m256 nz = _mm256_cmp_ps(v, zero, _CMP_NEQ_UQ);
    __m256 bad = _mm256_and_ps(nz, _mm256_cmp_ps(v, _mm256_loadu_ps(amp + c), _CMP_NEQ_UQ));
    ok &= _mm256_movemask_ps(bad) == 0;
    int k = _mm256_movemask_ps(nz);
    if (GB == 8) m[c / 8] = k; else { m[c / 4] = k & 15; m[c / 4 + 1] = k >> 4; }
  }
#endif
  for (; c < C; c += GB) {
    int k = 0;
    for (int b = 0; b < GB && c + b < C; ++b) {
      float v = x[c + b];
      k |= (v != 0.f) << b;
      ok &= v == 0.f || v == amp[c + b];
    }
    m[c / GB] = k;
  }
  return ok;
}

struct LutGeom {  // one convolution's shape; G = mask groups per pixel, E = 2^GB patterns
  int G, E, H, W, KH, KW, sh, sw, ph, pw, Ho, Wo, Cout;
};

// One block of L = 8*NV output channels [co, co+cw) and of input groups [g0, g0+gn), for one
// image: sum = over the taps (kh,kw) inside the image and groups g of
// table[kh*KW+kw][g-g0][mask(hi,wi,g)][0..L); out = bias + sum for the first group block, else
// out += sum. S independent partial sums (over groups) hide the add latency.
template <int NV, int S>
static void lut_block(const float* table, const uint8_t* m, const LutGeom& q, int g0, int gn,
                      const float* bias, int cw, bool accumulate, float* on) {
  constexpr int L = 8 * NV;
  for (int ho = 0; ho < q.Ho; ++ho)
    for (int wo = 0; wo < q.Wo; ++wo) {
      v8 a[S][NV] = {};
      const int hi0 = ho * q.sh - q.ph, wi0 = wo * q.sw - q.pw;
      for (int kh = std::max(0, -hi0); kh < std::min(q.KH, q.H - hi0); ++kh)
        for (int kw = std::max(0, -wi0); kw < std::min(q.KW, q.W - wi0); ++kw) {
          const uint8_t* mp = m + ((int64_t)(hi0 + kh) * q.W + wi0 + kw) * q.G + g0;
          const float* t = table + (int64_t)(kh * q.KW + kw) * gn * q.E * L;
          int g = 0;
          for (; g + S <= gn; g += S)
            for (int s = 0; s < S; ++s) {
              const float* r = t + ((int64_t)(g + s) * q.E + mp[g + s]) * L;
              for (int j = 0; j < NV; ++j) a[s][j] += ld8(r + 8 * j);
            }
          for (; g < gn; ++g) {
            const float* r = t + ((int64_t)g * q.E + mp[g]) * L;
            for (int j = 0; j < NV; ++j) a[0][j] += ld8(r + 8 * j);
          }
        }
      for (int s = 1; s < S; ++s)
        for (int j = 0; j < NV; ++j) a[0][j] += a[s][j];
      float* o = on + ((int64_t)ho * q.Wo + wo) * q.Cout;
      float tmp[L];
      for (int j = 0; j < NV; ++j) st8(tmp + 8 * j, a[0][j]);
      if (accumulate)
        for (int k = 0; k < cw; ++k) o[k] += tmp[k];
      else
        for (int k = 0; k < cw; ++k) o[k] = tmp[k] + bias[k];
    }
}

typedef void (*lut_fn)(const float*, const uint8_t*, const LutGeom&, int, int, const float*, int,
                       bool, float*);
#define LUT_ROW(NV) {lut_block<NV, 1>, lut_block<NV, 2>, lut_block<NV, 4>}
static const lut_fn lut_blocks[9][3] = {{}, LUT_ROW(1), LUT_ROW(2), LUT_ROW(3), LUT_ROW(4),
                                        LUT_ROW(5), LUT_ROW(6), LUT_ROW(7), LUT_ROW(8)};

// x [N,H,W,C] spike maps (channels_last), amp [C] spike amplitudes, bias [Cout],
// out [N,Ho,Wo,Cout], table [ceil(Cout/L)][ceil(G/GR)][KH*KW][GR][2^GB][L] with L = 8*NV and
// G = ceil(C/GB): output block b covers channels [b*L, min(Cout, (b+1)*L)), input block c the
// groups [c*GR, min(G, (c+1)*GR)). Returns 0, or 1 if x holds a value that is neither 0 nor its
// channel's amplitude (out is then incomplete).
static int spike_conv2d(const float* x, int64_t N, int C, int H, int W, const float* amp,
                        const float* table, int NV, int GB, int GR, int Cout, int KH, int KW,
                        int sh, int sw, int ph, int pw, const float* bias, float* out, int Ho,
                        int Wo, int threads) {
  const int G = (C + GB - 1) / GB, L = 8 * NV, E = 1 << GB, cblocks = (G + GR - 1) / GR;
  const LutGeom q{G, E, H, W, KH, KW, sh, sw, ph, pw, Ho, Wo, Cout};
  const int64_t tblock = (int64_t)KH * KW * GR * E * L;
  const int sets = (GR >= 4 && NV <= 3) ? 2 : (GR >= 2 && NV <= 6 ? 1 : 0);  // 16 registers
  const lut_fn fn = lut_blocks[NV][sets];
  const int64_t pix = (int64_t)H * W;
  std::vector<uint8_t> m((size_t)(N * pix * G));
  int bad = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(|| : bad)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t p = 0; p < pix; ++p)
      bad |= !spike_masks(x + (n * pix + p) * C, amp, C, GB, m.data() + (n * pix + p) * G);
  if (bad) return 1;
  // tiles of images whose outputs share each table block (a small image alone would reload the
  // whole table from memory for a handful of pixels)
  const int64_t tile = std::max<int64_t>(1, 512 / ((int64_t)Ho * Wo));
  const int64_t tiles = (N + tile - 1) / tile;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < tiles; ++t)
    for (int b = 0, co = 0; co < Cout; ++b, co += L)
      for (int c = 0; c < cblocks; ++c)
        for (int64_t n = t * tile; n < std::min(N, (t + 1) * tile); ++n)
          fn(table + (int64_t)(b * cblocks + c) * tblock, m.data() + n * pix * G, q, c * GR,
             std::min(GR, G - c * GR), bias + co, std::min(L, Cout - co), c > 0,
             out + n * (int64_t)Ho * Wo * Cout + co);
  return 0;
}

extern "C" {
void if_scan_f32(const float* cur, int constant, const float* add, float* v, const float* theta,
                 float vth, float* out, float* count, int64_t steps, int64_t n, int threads) {
  scan<float>(cur, constant, add, v, theta, vth, out, count, steps, n, threads);
}
void if_scan_f64(const double* cur, int constant, const double* add, double* v,
                 const double* theta, double vth, double* out, double* count, int64_t steps,
                 int64_t n, int threads) {
  scan<double>(cur, constant, add, v, theta, vth, out, count, steps, n, threads);
}
int spike_conv2d_f32(const float* x, int64_t N, int C, int H, int W, const float* amp,
                     const float* table, int NV, int GB, int GR, int Cout, int KH, int KW, int sh,
                     int sw, int ph, int pw, const float* bias, float* out, int Ho, int Wo,
                     int threads) {
  return spike_conv2d(x, N, C, H, W, amp, table, NV, GB, GR, Cout, KH, KW, sh, sw, ph, pw, bias,
                      out, Ho, Wo, threads);
}
}
"""
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-ffp-contract=off", "-std=c++17",
         "-shared", "-fPIC", "-fopenmp"]

_lib = None
_failed = False


def _compile(cxx: str, flags: list[str], cache: Path) -> Path:
    """The library built from SOURCE with ``flags`` (cached by a hash of source, flags and
    compiler); raises RuntimeError with the compiler's message if it fails."""
    key = hashlib.sha256("\0".join([SOURCE, cxx, *flags]).encode()).hexdigest()[:16]
    lib = cache / f"kernels_{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, so = Path(tmp) / "kernels.cpp", Path(tmp) / "kernels.so"
            src.write_text(SOURCE)
            done = subprocess.run([cxx, *flags, str(src), "-o", str(so)], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[:300]}")
            os.replace(so, lib)  # atomic: a concurrent build never sees half a library
    return lib


def _build() -> ctypes.CDLL:
    """Compile (or find cached) and load the kernels; without OpenMP support in the compiler
    they are built serial."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snnconv" / "kernels"
    try:
        lib = _compile(cxx, FLAGS, cache)
    except RuntimeError:
        lib = _compile(cxx, [f for f in FLAGS if f != "-fopenmp"], cache)
    dll = ctypes.CDLL(str(lib))
    for name, c in (("if_scan_f32", ctypes.c_float), ("if_scan_f64", ctypes.c_double)):
        getattr(dll, name).argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_void_p, c, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                       ctypes.c_int]
        getattr(dll, name).restype = None
    i, p = ctypes.c_int, ctypes.c_void_p
    dll.spike_conv2d_f32.argtypes = [p, ctypes.c_int64, i, i, i, p, p, i, i, i, i, i, i, i, i, i,
                                     i, p, p, i, i, i]
    dll.spike_conv2d_f32.restype = ctypes.c_int
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
        warnings.warn(f"snnconv: compiled kernels unavailable ({type(err).__name__}: "
                      f"{str(err)[:300]}); using PyTorch only")
    return _lib


def scan_available(device: torch.device) -> bool:
    """A fused IF scan exists for this device: the C++ kernel on the CPU, gpuscan's Triton
    kernel on CUDA (SNNCONV_FUSED=0 turns both off)."""
    if device.type == "cpu":
        return kernel() is not None
    return (device.type == "cuda" and os.environ.get("SNNCONV_FUSED", "1") != "0"
            and importlib.util.find_spec("triton") is not None)


def if_scan(current: torch.Tensor, constant: bool, addend: torch.Tensor | None, v: torch.Tensor,
            theta: torch.Tensor, v_th: torch.Tensor, out: torch.Tensor, count: torch.Tensor) -> None:
    """Run the device's kernel in place on v, out and count (see SOURCE for the arithmetic);
    ``theta`` holds each step's firing threshold, ``v_th`` (0-dim) the spike amplitude."""
    if v.device.type == "cuda":
        from . import gpuscan  # imports triton
        return gpuscan.if_scan(current, constant, addend, v, theta, v_th, out, count)
    lib = kernel()
    fn = lib.if_scan_f32 if v.dtype == torch.float32 else lib.if_scan_f64
    theta = theta.contiguous()
    fn(current.data_ptr(), int(constant), None if addend is None else addend.data_ptr(),
       v.data_ptr(), theta.data_ptr(), v_th.item(), out.data_ptr(), count.data_ptr(), theta.numel(),
       v.numel(), torch.get_num_threads())


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def usable(current: torch.Tensor, constant: bool, addend: torch.Tensor | None, v: torch.Tensor,
           out: torch.Tensor, v_th: torch.Tensor) -> bool:
    """A fused scan applies (where scan_available): float tensors, one scalar V_th, dense tensors
    in which flat index i is the same neuron in the current (each step), the addend, the membrane
    and the output."""
    if v.dtype not in (torch.float32, torch.float64) or v_th.dim():
        return False
    if addend is not None and (constant or addend.dtype != v.dtype or addend.shape != current.shape
                               or addend.stride() != current.stride()):
        return False
    n = v.numel()
    steps_ok = all(t.stride(0) == n and t.stride()[1:] == v.stride()
                   for t in ([out] if constant else [out, current]))
    return (current.dtype == v.dtype and _dense(v) and steps_ok
            and v.dtype == out.dtype == v_th.dtype and (not constant or current.stride() == v.stride()))
