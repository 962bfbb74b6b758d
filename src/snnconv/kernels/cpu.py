"""Compiled CPU kernels (optional; compiled on first use, in about 4 s, with the system's
C++ compiler, and cached in ~/.cache/snnconv/kernels): the fused IF scan, and the lookup-table
convolution of spike maps that spikeconv.py drives, alone or with the IF update of the layer
that reads it.

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

On CUDA the IF scan runs as a Triton kernel instead (triton_scan.py); ``if_scan`` dispatches on the
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
#if defined(__SSE2__)
#include <immintrin.h>
#endif

// current: [steps, n] or [n] (constant), addend: [steps, n] or null, v/count: [n], theta: [steps]
// firing thresholds, out: [steps, n]. Per step k, with I = current (+ addend, rounded first, as a
// separate add would): v += I; s = v >= theta[k]; v -= s * vth; out = s * vth; count += s.
// Tensors are dense with identical element order (any memory format).
// in and o may be the same buffer (the lookup convolution's epilogue overwrites its current).
template <typename T, bool ADD>
static void block(const T* in, const T* __restrict__ ad, T* __restrict__ v, T* o,
                  T* __restrict__ count, T th, T vth, int64_t len) {
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
typedef float v16 __attribute__((vector_size(64)));  // 16 lanes: one zmm, or two ymm on AVX2
static inline v16 ld16(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
static inline void st16(float* p, v16 r) { std::memcpy(p, &r, sizeof r); }
#ifdef __AVX512F__
static constexpr int ACC = 16;  // v16 accumulators that fit the 32 zmm registers with room
#else
static constexpr int ACC = 4;   // 8 of the 16 ymm registers
#endif

// Masks of one pixel's C channels in groups of GB (4 or 8) bits: bit b of m[g] is set iff
// x[g*GB + b] != 0. Returns nonzero if a nonzero value is not its channel's amplitude amp[c]
// (the input is not a spike map).
template <int GB>
static inline unsigned spike_masks(const float* x, const float* amp, int C, uint8_t* m) {
  int c = 0;
  unsigned bad = 0;
#ifdef __AVX512F__
  const __m512 zero16 = _mm512_setzero_ps();
  for (; c + 16 <= C; c += 16) {
    __m512 v = _mm512_loadu_ps(x + c);
    __mmask16 nz = _mm512_cmp_ps_mask(v, zero16, _CMP_NEQ_UQ);
    bad |= _mm512_mask_cmp_ps_mask(nz, v, _mm512_loadu_ps(amp + c), _CMP_NEQ_UQ);
    uint32_t k = nz;
    if (GB == 8) {
      uint16_t w = k;
      std::memcpy(m + c / 8, &w, 2);
    } else {  // four nibbles, one per byte
      uint32_t w = (k & 0xF) | (k & 0xF0) << 4 | (k & 0xF00) << 8 | (k & 0xF000) << 12;
      std::memcpy(m + c / 4, &w, 4);
    }
  }
#endif
#ifdef __AVX2__
  const __m256 zero = _mm256_setzero_ps();
  for (; c + 8 <= C; c += 8) {
    __m256 v = _mm256_loadu_ps(x + c);
    __m256 nz = _mm256_cmp_ps(v, zero, _CMP_NEQ_UQ);
    __m256 wrong = _mm256_and_ps(nz, _mm256_cmp_ps(v, _mm256_loadu_ps(amp + c), _CMP_NEQ_UQ));
    bad |= _mm256_movemask_ps(wrong);
    int k = _mm256_movemask_ps(nz);
    if (GB == 8) m[c / 8] = k; else { m[c / 4] = k & 15; m[c / 4 + 1] = k >> 4; }
  }
#endif
  for (; c < C; c += GB) {
    int k = 0;
    for (int b = 0; b < GB && c + b < C; ++b) {
      float v = x[c + b];
      k |= (v != 0.f) << b;
      bad |= !(v == 0.f || v == amp[c + b]);
    }
    m[c / GB] = k;
  }
  return bad;
}

// The masks of image x [H][W][C] into m [Hp][Wp][G] with a zero border of (ph, pw).
template <int GB>
static bool image_masks(const float* x, const float* amp, int C, int H, int W, int ph, int pw,
                        int Wp, int G, int64_t size, uint8_t* m) {
  std::memset(m, 0, size);
  unsigned bad = 0;
  for (int h = 0; h < H; ++h) {
    uint8_t* row = m + ((int64_t)(h + ph) * Wp + pw) * G;
    const float* xr = x + (int64_t)h * W * C;
    for (int w = 0; w < W; ++w) bad |= spike_masks<GB>(xr + (int64_t)w * C, amp, C, row + w * G);
  }
  return bad == 0;
}

// dst[0..n) = src[0..n), with non-temporal stores where the vector ISA has them.
static void copy_streaming(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#ifdef __AVX512F__
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 63); ++i) dst[i] = src[i];
  for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__AVX__)
  for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31); ++i) dst[i] = src[i];
  for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// One convolution's shape. Masks are stored per image as [Hp][Wp][G] bytes with a zero border
// of the padding's width, so every tap reads a mask (the all-zero pattern's table row is 0 and
// adds nothing): no bounds tests in the inner loops. tap_off[t] = (kh*Wp + kw)*G.
struct LutGeom {
  int G, GR, E, Hp, Wp, taps, sh, sw, Ho, Wo, Cout;
  const int64_t* tap_off;
};

// P output pixels of a row at once (consecutive wo), one block of L = 16*NV output channels and
// of input groups [g0, g0+gn), gn <= GR (mp points at the first pixel's window corner, group g0):
// sum = over taps t and groups g of table[t][g][mask][0..L), out = bias + sum for the first
// input block, else out += sum. The P*NV accumulators are independent, which keeps many table
// loads in flight.
template <int NV, int P>
static inline void lut_pixels(const float* table, const uint8_t* mp, const LutGeom& q, int gn,
                              const float* bias, int cw, bool accumulate, float* o) {
  constexpr int L = 16 * NV;
  v16 a[P][NV] = {};
  const int64_t step = (int64_t)q.sw * q.G, rows = (int64_t)q.E * L;
  for (int t = 0; t < q.taps; ++t) {
    const uint8_t* m = mp + q.tap_off[t];
    const float* tt = table + t * q.GR * rows;  // a block holds GR groups (zero-padded)
    for (int g = 0; g < gn; ++g, tt += rows)
      for (int p = 0; p < P; ++p) {
        const float* r = tt + (int64_t)m[p * step + g] * L;
        for (int j = 0; j < NV; ++j) a[p][j] += ld16(r + 16 * j);
      }
  }
  for (int p = 0; p < P; ++p) {
    float* op = o + (int64_t)p * q.Cout;
    if (cw == L) {
      for (int j = 0; j < NV; ++j)
        st16(op + 16 * j, accumulate ? ld16(op + 16 * j) + a[p][j] : a[p][j] + ld16(bias + 16 * j));
    } else {
      float tmp[L];
      for (int j = 0; j < NV; ++j) st16(tmp + 16 * j, a[p][j]);
      if (accumulate)
        for (int k = 0; k < cw; ++k) op[k] += tmp[k];
      else
        for (int k = 0; k < cw; ++k) op[k] = tmp[k] + bias[k];
    }
  }
}

// One image (masks m at group g0, output on at channel co).
template <int NV>
static void lut_image(const float* table, const uint8_t* m, const LutGeom& q, int gn,
                      const float* bias, int cw, bool accumulate, float* on) {
  constexpr int P = ACC / NV > 8 ? 8 : (ACC / NV < 1 ? 1 : ACC / NV);
  for (int ho = 0; ho < q.Ho; ++ho) {
    const uint8_t* mrow = m + (int64_t)ho * q.sh * q.Wp * q.G;
    float* orow = on + (int64_t)ho * q.Wo * q.Cout;
    int wo = 0;
    for (; wo + P <= q.Wo; wo += P)
      lut_pixels<NV, P>(table, mrow + (int64_t)wo * q.sw * q.G, q, gn, bias, cw, accumulate,
                        orow + (int64_t)wo * q.Cout);
    for (; wo < q.Wo; ++wo)
      lut_pixels<NV, 1>(table, mrow + (int64_t)wo * q.sw * q.G, q, gn, bias, cw, accumulate,
                        orow + (int64_t)wo * q.Cout);
  }
}

typedef void (*lut_fn)(const float*, const uint8_t*, const LutGeom&, int, const float*, int, bool,
                       float*);
static const lut_fn lut_images[5] = {nullptr, lut_image<1>, lut_image<2>, lut_image<3>,
                                     lut_image<4>};

// The IF layer fed by the convolution, updated in the same pass: images are n = k*batch + b
// (step k, sample b), v and count are [batch][Ho][Wo][Cout], theta [steps]. After image n's
// current is complete, out[n] = IF(current (+ addend[n])) exactly as the scan computes it.
struct Fire {
  const float* addend;
  float *v, *count;
  const float* theta;
  float vth;
  int64_t batch, steps;
};

// x [N,H,W,C] spike maps (channels_last), amp [C] spike amplitudes, bias [Cout],
// out [N,Ho,Wo,Cout], table [ceil(Cout/L)][ceil(G/GR)][KH*KW][GR][2^GB][L] with L = 16*NV and
// G = ceil(C/GB): output block b covers channels [b*L, min(Cout, (b+1)*L)), input block c the
// groups [c*GR, min(G, (c+1)*GR)). With fire, out then holds the IF layer's spikes (N = steps *
// batch). Returns 0, or 1 if x holds a value that is neither 0 nor its channel's amplitude
// (out, and fire's state, are then untouched).
static int spike_conv2d(const float* x, int64_t N, int C, int H, int W, const float* amp,
                        const float* table, int NV, int GB, int GR, int Cout, int KH, int KW,
                        int sh, int sw, int ph, int pw, const float* bias, float* out, int Ho,
                        int Wo, int threads, const Fire* fire, int64_t stream_bytes) {
  const int G = (C + GB - 1) / GB, L = 16 * NV, E = 1 << GB, cblocks = (G + GR - 1) / GR;
  const int Hp = H + 2 * ph, Wp = W + 2 * pw;
  std::vector<int64_t> tap_off;
  for (int kh = 0; kh < KH; ++kh)
    for (int kw = 0; kw < KW; ++kw) tap_off.push_back(((int64_t)kh * Wp + kw) * G);
  const LutGeom q{G, GR, E, Hp, Wp, KH * KW, sh, sw, Ho, Wo, Cout, tap_off.data()};
  const int64_t tblock = (int64_t)KH * KW * GR * E * L, mimg = (int64_t)Hp * Wp * G;
  const int64_t opix = (int64_t)Ho * Wo * Cout;
  const lut_fn fn = lut_images[NV];
  thread_local std::vector<uint8_t> masks;  // kept between calls: no fresh pages each time
  if ((int64_t)masks.size() < N * mimg) masks.resize(N * mimg);
  uint8_t* mk = masks.data();
  int bad = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(|| : bad)
  for (int64_t n = 0; n < N; ++n) {
    const float* xi = x + n * H * W * C;
    bad |= !(GB == 8 ? image_masks<8>(xi, amp, C, H, W, ph, pw, Wp, G, mimg, mk + n * mimg)
                     : image_masks<4>(xi, amp, C, H, W, ph, pw, Wp, G, mimg, mk + n * mimg));
  }
  if (bad) return 1;
  const int64_t batch = fire ? fire->batch : N, steps = fire ? fire->steps : 1;
  // tiles of samples whose images share each table block (a small image alone would reload the
  // whole table from memory for a handful of pixels); with fire, a tile runs its steps in order
  int64_t tile = std::max<int64_t>(1, 512 / ((int64_t)Ho * Wo));
  if (fire) tile = std::max<int64_t>(1, std::min(tile, batch / std::max(threads, 1)));
  const int64_t tiles = (batch + tile - 1) / tile;
  // With fire and an output of more than stream_bytes (larger than the caches), currents go to a
  // per-thread scratch that stays in L2 and the spikes are streamed out: the output's lines are
  // not read from memory before they are written.
  const bool stream = fire && N * opix * 4 > stream_bytes;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t s0 = t * tile, s1 = std::min(batch, s0 + tile);
    thread_local std::vector<float> scratch;
    if (stream && (int64_t)scratch.size() < tile * opix) scratch.resize(tile * opix);
    for (int64_t k = 0; k < steps; ++k) {
      for (int b = 0, co = 0; co < Cout; ++b, co += L)
        for (int c = 0; c < cblocks; ++c)
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t n = k * batch + s;
            float* o = stream ? scratch.data() + (s - s0) * opix : out + n * opix;
            fn(table + (int64_t)(b * cblocks + c) * tblock, mk + n * mimg + c * GR, q,
               std::min(GR, G - c * GR), bias + co, std::min(L, Cout - co), c > 0, o + co);
          }
      if (fire)
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t n = k * batch + s;
          float* o = stream ? scratch.data() + (s - s0) * opix : out + n * opix;
          if (fire->addend)
            block<float, true>(o, fire->addend + n * opix, fire->v + s * opix, o,
                               fire->count + s * opix, fire->theta[k], fire->vth, opix);
          else
            block<float, false>(o, nullptr, fire->v + s * opix, o, fire->count + s * opix,
                                fire->theta[k], fire->vth, opix);
          if (stream) copy_streaming(out + n * opix, o, opix);
        }
    }
  }
#if defined(__SSE2__)
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before we return
#endif
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
                     int threads, const float* addend, float* v, float* count,
                     const float* theta, float vth, int64_t batch, int64_t steps,
                     int64_t stream_bytes) {
  const Fire fire{addend, v, count, theta, vth, batch, steps};
  return spike_conv2d(x, N, C, H, W, amp, table, NV, GB, GR, Cout, KH, KW, sh, sw, ph, pw, bias,
                      out, Ho, Wo, threads, v ? &fire : nullptr, stream_bytes);
}
}
"""
FLAGS = [
    "-O3",
    "-march=native",
    "-fno-trapping-math",
    "-ffp-contract=off",
    "-std=c++17",
    "-shared",
    "-fPIC",
    "-fopenmp",
]

_lib = None
_failed = False


def _cpu_flags() -> str:
    """The CPU's feature flags (``-march=native`` code must not run on a CPU without them, e.g.
    from a home folder shared between machines); empty where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _compile(cxx: str, flags: list[str], cache: Path) -> Path:
    """The library built from SOURCE with ``flags`` (cached by a hash of source, flags, compiler
    and CPU features); raises RuntimeError with the compiler's message if it fails."""
    key = hashlib.sha256("\0".join([SOURCE, cxx, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
    lib = cache / f"kernels_{key}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, so = Path(tmp) / "kernels.cpp", Path(tmp) / "kernels.so"
            src.write_text(SOURCE)
            done = subprocess.run(
                [cxx, *flags, str(src), "-o", str(so)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[:300]}")
            os.replace(so, lib)  # atomic: a concurrent build never sees half a library
    return lib


def _build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (or find cached) and load the kernels; without OpenMP support in the compiler
    they are built serial. ``extra_flags`` (e.g. ``-mno-avx512f``, for the tests) follow FLAGS."""
    cxx = (
        os.environ.get("CXX")
        or shutil.which("c++")
        or shutil.which("g++")
        or shutil.which("clang++")
    )
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "snnconv" / "kernels"
    flags = FLAGS + list(extra_flags)
    try:
        lib = _compile(cxx, flags, cache)
    except RuntimeError:
        lib = _compile(cxx, [f for f in flags if f != "-fopenmp"], cache)
    dll = ctypes.CDLL(str(lib))
    for name, c in (("if_scan_f32", ctypes.c_float), ("if_scan_f64", ctypes.c_double)):
        getattr(dll, name).argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            c,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_int,
        ]
        getattr(dll, name).restype = None
    i, p = ctypes.c_int, ctypes.c_void_p
    dll.spike_conv2d_f32.argtypes = [
        p,
        ctypes.c_int64,
        i,
        i,
        i,
        p,
        p,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
        i,
        p,
        p,
        i,
        i,
        i,
        p,
        p,
        p,
        p,
        ctypes.c_float,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
    ]
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
        warnings.warn(
            f"snnconv: compiled kernels unavailable ({type(err).__name__}: "
            f"{str(err)[:300]}); using PyTorch only"
        )
    return _lib


def scan_available(device: torch.device) -> bool:
    """A fused IF scan exists for this device: the C++ kernel on the CPU, gpuscan's Triton
    kernel on CUDA (SNNCONV_FUSED=0 turns both off)."""
    if device.type == "cpu":
        return kernel() is not None
    return (
        device.type == "cuda"
        and os.environ.get("SNNCONV_FUSED", "1") != "0"
        and importlib.util.find_spec("triton") is not None
    )


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
    """Run the device's kernel in place on v, out and count (see SOURCE for the arithmetic);
    ``theta`` holds each step's firing threshold, ``v_th`` (0-dim) the spike amplitude."""
    if v.device.type == "cuda":
        from snnconv.kernels import triton_scan  # imports triton

        return triton_scan.if_scan(current, constant, addend, v, theta, v_th, out, count)
    lib = kernel()
    fn = lib.if_scan_f32 if v.dtype == torch.float32 else lib.if_scan_f64
    theta = theta.contiguous()
    fn(
        current.data_ptr(),
        int(constant),
        None if addend is None else addend.data_ptr(),
        v.data_ptr(),
        theta.data_ptr(),
        v_th.item(),
        out.data_ptr(),
        count.data_ptr(),
        theta.numel(),
        v.numel(),
        torch.get_num_threads(),
    )


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (
        t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    )


def usable(
    current: torch.Tensor,
    constant: bool,
    addend: torch.Tensor | None,
    v: torch.Tensor,
    out: torch.Tensor,
    v_th: torch.Tensor,
) -> bool:
    """A fused scan applies (where scan_available): float tensors, one scalar V_th, dense tensors
    in which flat index i is the same neuron in the current (each step), the addend, the membrane
    and the output."""
    if v.dtype not in (torch.float32, torch.float64) or v_th.dim():
        return False
    if addend is not None and (
        constant
        or addend.dtype != v.dtype
        or addend.shape != current.shape
        or addend.stride() != current.stride()
    ):
        return False
    n = v.numel()
    steps_ok = all(
        t.stride(0) == n and t.stride()[1:] == v.stride()
        for t in ([out] if constant else [out, current])
    )
    return (
        current.dtype == v.dtype
        and _dense(v)
        and steps_ok
        and v.dtype == out.dtype == v_th.dtype
        and (not constant or current.stride() == v.stride())
    )
