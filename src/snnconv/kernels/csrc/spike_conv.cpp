// The convolution of spike maps by table lookup (kernels/lookup_conv.py builds the tables and
// states the equation), alone or with the IF update of the layer that reads it (fire).
//
// x [N,H,W,C] spike maps (channels_last), amp [C] spike amplitudes, bias [Cout],
// out [N,Ho,Wo,Cout], table [ceil(Cout/L)][ceil(G/GR)][KH*KW][GR][2^GB][L] with L = 16*NV and
// G = ceil(C/GB): output block b covers channels [b*L, min(Cout, (b+1)*L)), input block c the
// groups [c*GR, min(G, (c+1)*GR)). With fire, out then holds the IF layer's spikes (N = steps *
// batch). With negative (signed neurons' maps, values 0, amp[c] or -amp[c]) each pixel has a
// second set of G masks for the -amp[c] values, whose table rows are subtracted:
// out = bias + sum table[mask+] - sum table[mask-] (the conv is linear in its input).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "if_update.h"
#include "lookup_sums.h"
#include "snnconv_kernels.h"

namespace snnconv {

// Store the mask bits k of 16 (GB 8) or 8 (GB 4, AVX2) consecutive channels starting at c.
template <int GB>
static inline void put16(uint8_t* m, int c, uint32_t k) {
  if (GB == 8) {
    uint16_t w = k;
    std::memcpy(m + c / 8, &w, 2);
  } else {  // four nibbles, one per byte
    uint32_t w = (k & 0xF) | (k & 0xF0) << 4 | (k & 0xF00) << 8 | (k & 0xF000) << 12;
    std::memcpy(m + c / 4, &w, 4);
  }
}

// Masks of a signed pixel: bit b of m[g] is set iff x[g*GB + b] == amp, of m[G + g] iff it is
// -amp. Returns nonzero if a value is none of 0, amp[c], -amp[c].
template <int GB>
static inline unsigned signed_masks(const float* x, const float* amp, int C, int G, uint8_t* m) {
  int c = 0;
  unsigned bad = 0;
#ifdef __AVX512F__
  const __m512 zero16 = _mm512_setzero_ps(), sign16 = _mm512_set1_ps(-0.f);
  for (; c + 16 <= C; c += 16) {
    __m512 v = _mm512_loadu_ps(x + c), a = _mm512_loadu_ps(amp + c);
    __mmask16 nz = _mm512_cmp_ps_mask(v, zero16, _CMP_NEQ_UQ);
    __mmask16 pos = _mm512_cmp_ps_mask(v, a, _CMP_EQ_OQ);
    __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_xor_ps(a, sign16), _CMP_EQ_OQ);
    bad |= nz & ~(pos | neg);
    put16<GB>(m, c, pos);
    put16<GB>(m + G, c, neg);
  }
#endif
#ifdef __AVX2__
  const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.f);
  for (; c + 8 <= C; c += 8) {
    __m256 v = _mm256_loadu_ps(x + c), a = _mm256_loadu_ps(amp + c);
    int nz = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ));
    int pos = _mm256_movemask_ps(_mm256_cmp_ps(v, a, _CMP_EQ_OQ));
    int neg = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_xor_ps(a, sign), _CMP_EQ_OQ));
    bad |= nz & ~(pos | neg);
    if (GB == 8) {
      m[c / 8] = pos;
      m[G + c / 8] = neg;
    } else {
      m[c / 4] = pos & 15;
      m[c / 4 + 1] = pos >> 4;
      m[G + c / 4] = neg & 15;
      m[G + c / 4 + 1] = neg >> 4;
    }
  }
#endif
  for (; c < C; c += GB) {
    int kp = 0, kn = 0;
    for (int b = 0; b < GB && c + b < C; ++b) {
      float v = x[c + b], a = amp[c + b];
      kp |= (v == a) << b;
      kn |= (v == -a) << b;
      bad |= !(v == 0.f || v == a || v == -a);
    }
    m[c / GB] = kp;
    m[G + c / GB] = kn;
  }
  return bad;
}

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
    put16<GB>(m, c, nz);
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

// The masks of image x [H][W][C] into m [Hp][Wp][MS] with a zero border of (ph, pw); MS = G
// mask bytes per pixel, or 2G with NEG (the -amp masks after the +amp ones).
// Adds the number of non-zero masks to *nonzero.
template <int GB, bool NEG>
static bool image_masks(const float* x, const float* amp, int C, int H, int W, int ph, int pw,
                        int Wp, int G, int64_t size, uint8_t* m, int64_t* nonzero) {
  std::memset(m, 0, size);
  unsigned bad = 0;
  const int MS = NEG ? 2 * G : G;
  for (int h = 0; h < H; ++h) {
    uint8_t* row = m + ((int64_t)(h + ph) * Wp + pw) * MS;
    const float* xr = x + (int64_t)h * W * C;
    for (int w = 0; w < W; ++w)
      bad |= NEG ? signed_masks<GB>(xr + (int64_t)w * C, amp, C, G, row + w * MS)
                 : spike_masks<GB>(xr + (int64_t)w * C, amp, C, row + w * MS);
  }
  int64_t n = 0;
  for (int64_t i = 0; i < size; ++i) n += m[i] != 0;
  *nonzero += n;
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

// With fire (snnconv_fire), after image n = k*batch + s's current is complete, out[n] =
// IF(current (+ addend[n])) exactly as the scan computes it (block, or signed_block with
// fire->events, if_update.h).

// One call's sizes, derived once from the geometry (the names of the comments above and of
// lookup_sums.h).
struct Conv {
  explicit Conv(const snnconv_conv_geometry& g)
      : N(g.n), C(g.c), H(g.h), W(g.w), Cout(g.cout), ph(g.ph), pw(g.pw), GB(g.gb), GR(g.gr),
        G((C + GB - 1) / GB), MS(g.negative ? 2 * G : G), L(16 * g.nv),
        cblocks((G + GR - 1) / GR), Hp(H + 2 * ph), Wp(W + 2 * pw), Ho(g.ho), Wo(g.wo),
        negative(g.negative != 0), fn(lut_images[negative][g.nv]),
        sparse(lut_sparse_images[negative][g.nv]) {
    const int E = 1 << GB;
    ls.S = 1 + (negative ? 2 * GR : GR);
    ls.pixel = (int64_t)cblocks * ls.S;
    ls.image = (int64_t)Hp * Wp * ls.pixel;
    for (int kh = 0; kh < g.kh; ++kh)
      for (int kw = 0; kw < g.kw; ++kw) {
        tap_off.push_back(((int64_t)kh * Wp + kw) * MS);
        ls.tap_off.push_back(((int64_t)kh * Wp + kw) * ls.pixel);
      }
    q = LutGeom{G, MS, GR, E, Hp, Wp, g.kh * g.kw, g.sh, g.sw, Ho, Wo, Cout, tap_off.data()};
    tblock = (int64_t)g.kh * g.kw * GR * E * L;
    mimg = (int64_t)Hp * Wp * MS;
    opix = (int64_t)Ho * Wo * Cout;
  }
  Conv(const Conv&) = delete;  // q points into tap_off

  const int64_t N;
  const int C, H, W, Cout, ph, pw, GB, GR, G, MS, L, cblocks, Hp, Wp, Ho, Wo;
  const bool negative;
  const lut_fn fn;
  const sparse_fn sparse;
  std::vector<int64_t> tap_off;
  LutGeom q;
  Lists ls;
  int64_t tblock, mimg, opix;
};

// The lists (Lists' comment) of the masks m of one image, into li.
template <bool NEG>
static void image_lists(const Conv& p, const uint8_t* m, uint32_t* li) {
  const int G = p.G, GR = p.GR, E = p.q.E, L = p.L;
  for (int64_t px = 0; px < (int64_t)p.Hp * p.Wp; ++px, m += p.MS)
    for (int c = 0; c < p.cblocks; ++c) {
      uint32_t* seg = li + px * p.ls.pixel + (int64_t)c * p.ls.S;
      uint32_t n = 0;
      const int g1 = std::min(G, (c + 1) * GR);
      for (int g = c * GR; g < g1; ++g) {
        const uint32_t row = (uint32_t)(g - c * GR) * E;
        if (m[g]) seg[1 + n++] = (row + m[g]) * L;
        if (NEG && m[G + g]) seg[1 + n++] = (row + m[G + g]) * L + 1;
      }
      seg[0] = n;
    }
}

// Whether skipping the all-zero masks can pay for this shape (else only sparse_below > 1 asks
// for it): each entry brings R = NV*K >= 4 vectors of independent adds (fewer, and the
// accumulators' add chains set the pace: one pixel at a time instead of P), and an input block
// has GR >= 8 groups (fewer, and the per-tap count loop's mispredicted exits cost more than the
// skipped rows save). Measured with benchmarks/spikeconv_speed.py --rates on AVX-512 and AVX2.
static bool sparse_pays(const Conv& p) { return p.L / 16 * K >= 4 && p.GR >= 8; }

// The masks of all N images into mk [N][Hp][Wp][MS]; false if an image is not a spike map.
// *nonzero: how many of the masks are not 0.
static bool all_masks(const Conv& p, const float* x, const float* amp, int threads, uint8_t* mk,
                      int64_t* nonzero) {
  int bad = 0;
  int64_t nz = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(|| : bad) reduction(+ : nz)
  for (int64_t n = 0; n < p.N; ++n) {
    const float* xi = x + n * p.H * p.W * p.C;
    uint8_t* mi = mk + n * p.mimg;
    const auto masks = p.negative ? (p.GB == 8 ? image_masks<8, true> : image_masks<4, true>)
                                  : (p.GB == 8 ? image_masks<8, false> : image_masks<4, false>);
    bad |= !masks(xi, amp, p.C, p.H, p.W, p.ph, p.pw, p.Wp, p.G, p.mimg, mi, &nz);
  }
  *nonzero = nz;
  return !bad;
}

// The layout of masks over this convolution's output (one image: [Ho + 2ph][Wo + 2pw][MS]
// bytes, MS = G, or 2G when signed): those fire makes of its spikes for the next convolution
// (snnconv_fire.masks), or those it reads its addend from (addend_masks).
struct MaskLayout {
  MaskLayout(const Conv& p, int gb, int ph, int pw, bool negative)
      : gb(gb), ph(ph), pw(pw), G((p.Cout + gb - 1) / gb), MS(negative ? 2 * G : G),
        Wo(p.Wo), Wp(p.Wo + 2 * pw), size((int64_t)(p.Ho + 2 * ph) * Wp * MS) {}
  const int gb, ph, pw, G, MS, Wo, Wp;
  const int64_t size;  // bytes per image
  // f(q, n, offset) for each run of output pixels [px, px + np) along a row: q the first one's
  // index from px, n their count, offset that of the first one's masks
  template <class F>
  void runs(int64_t px, int64_t np, F f) const {
    int64_t ho = px / Wo, wo = px % Wo;
    for (int64_t q = 0; q < np;) {
      const int64_t n = std::min<int64_t>(np - q, Wo - wo);
      f(q, n, ((ho + ph) * Wp + wo + pw) * MS);
      q += n, wo = 0, ++ho;
    }
  }
};

// The masks of n consecutive pixels' C spikes o each (values 0 or the channel's amplitude a[c] >
// 0; signed: also -a[c]) into m, MS bytes per pixel, made by this layer's update: exactly what
// spike_masks / signed_masks with amp = a would make of them, without their check (the values
// are the update's own, so their sign tells them apart).
template <int GB, bool NEG>
static inline void own_masks(const float* o, int64_t n, int C, int G, uint8_t* m) {
  const int MS = NEG ? 2 * G : G;
#ifdef __AVX2__
  if (C % 8 == 0) {  // whole vectors: one compare and one movemask per 8 spikes
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t q = 0; q < n; ++q, o += C, m += MS)
      for (int c = 0; c < C; c += 8) {
        const __m256 v = _mm256_loadu_ps(o + c);
        const int k = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, NEG ? _CMP_GT_OQ : _CMP_NEQ_UQ));
        if (GB == 8) m[c / 8] = k; else { m[c / 4] = k & 15; m[c / 4 + 1] = k >> 4; }
        if (NEG) {
          const int kn = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_LT_OQ));
          if (GB == 8) {
            m[G + c / 8] = kn;
          } else {
            m[G + c / 4] = kn & 15;
            m[G + c / 4 + 1] = kn >> 4;
          }
        }
      }
    return;
  }
#endif
  for (int64_t q = 0; q < n; ++q, o += C, m += MS)
    for (int c = 0; c < C; c += GB) {
      int kp = 0, kn = 0;
      for (int b = 0; b < GB && c + b < C; ++b) {
        const float v = o[c + b];
        kp |= (NEG ? v > 0.f : v != 0.f) << b;
        kn |= (v < 0.f) << b;
      }
      m[c / GB] = kp;
      if (NEG) m[G + c / GB] = kn;
    }
}

// own_masks of output pixels [px, px + np) of one image (spikes o, masks m of the image).
template <int GB, bool NEG>
static void piece_masks(const float* o, int64_t px, int64_t np, int C, const MaskLayout& h,
                        uint8_t* m) {
  h.runs(px, np, [&](int64_t q, int64_t n, int64_t at) {
    own_masks<GB, NEG>(o + (px + q) * C, n, C, h.G, m + at);
  });
}

typedef void (*piece_masks_fn)(const float*, int64_t, int64_t, int, const MaskLayout&, uint8_t*);

// The spikes of n consecutive pixels of C channels each (vth[c] where a bit of the first G mask
// bytes of a pixel is set, -vth[c] with NEG where one of the next G is, else +0: the values the
// update that made the masks computed, s * vth[c]) into o, from their masks m (MS bytes/pixel).
template <int GB, bool NEG>
static inline void spikes_of_masks(const uint8_t* m, int64_t n, const float* vth, int C, int G,
                                   float* o) {
  const int MS = NEG ? 2 * G : G;
#ifdef __AVX2__
  if (C % 8 == 0) {  // 8 channels at a time: their bits broadcast, tested, selecting vth
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int64_t q = 0; q < n; ++q, o += C, m += MS)
      for (int c = 0; c < C; c += 8) {
        const __m256 a8 = _mm256_loadu_ps(vth + c);
        const int k = GB == 8 ? m[c / 8] : m[c / 4] | m[c / 4 + 1] << 4;
        const __m256 pos = _mm256_castsi256_ps(
            _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(k), bit), bit));
        __m256 v = _mm256_and_ps(pos, a8);
        if (NEG) {
          const int kn = GB == 8 ? m[G + c / 8] : m[G + c / 4] | m[G + c / 4 + 1] << 4;
          const __m256 neg = _mm256_castsi256_ps(
              _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(kn), bit), bit));
          v = _mm256_or_ps(v, _mm256_and_ps(neg, _mm256_xor_ps(a8, sign)));
        }
        _mm256_storeu_ps(o + c, v);
      }
    return;
  }
#endif
  for (int64_t q = 0; q < n; ++q, o += C, m += MS)
    for (int c = 0; c < C; ++c) {
      const int b = c % GB;
      const float pos = (m[c / GB] >> b) & 1, neg = NEG ? (m[G + c / GB] >> b) & 1 : 0;
      const float s = pos - neg;
      o[c] = s * vth[c];
    }
}

// spikes_of_masks of output pixels [px, px + np) of one image (masks m of the image) into o.
template <int GB, bool NEG>
static void piece_spikes(const uint8_t* m, int64_t px, int64_t np, int C, const float* vth,
                         const MaskLayout& a, float* o) {
  a.runs(px, np, [&](int64_t q, int64_t n, int64_t at) {
    spikes_of_masks<GB, NEG>(m + at, n, vth, C, a.G, o + q * C);
  });
}

typedef void (*piece_spikes_fn)(const uint8_t*, int64_t, int64_t, int, const float*,
                                const MaskLayout&, float*);

// Output pixels per piece of fire_image: about 4 KiB of spikes, still in L1 (32 KiB or more,
// beside the pieces of v, count, addend and events) when their masks are made and they are
// streamed out.
static inline int64_t fire_piece(int cout) { return std::max(1, 1024 / std::max(cout, 1)); }

// The IF update of image n (sample s of the tile's samples [s0, ...), step k) in o, a piece of
// pixels at a time: then (with a hand-off) the piece's masks, then its spikes streamed to out
// when o is the scratch.
static void fire_image(const Conv& p, const snnconv_fire* fire, const MaskLayout* h,
                       const MaskLayout* am, float* o, float* out, int64_t n, int64_t s,
                       int64_t k, bool scratch, int64_t* nonzero) {
  const int64_t pixels = (int64_t)p.Ho * p.Wo, piece = fire_piece(p.Cout);
  uint8_t* m = h ? fire->masks + n * h->size : nullptr;
  piece_masks_fn masks = nullptr;
  if (h) {
    std::memset(m, 0, h->size);  // the border
    masks = fire->events ? (h->gb == 8 ? piece_masks<8, true> : piece_masks<4, true>)
                         : (h->gb == 8 ? piece_masks<8, false> : piece_masks<4, false>);
  }
  thread_local std::vector<float> expanded;  // a piece of the addend, made from its masks
  piece_spikes_fn spikes = nullptr;
  if (am) {
    if ((int64_t)expanded.size() < piece * p.Cout) expanded.resize(piece * p.Cout);
    const bool neg = fire->addend_negative;
    spikes = neg ? (am->gb == 8 ? piece_spikes<8, true> : piece_spikes<4, true>)
                 : (am->gb == 8 ? piece_spikes<8, false> : piece_spikes<4, false>);
  }
  // One threshold and amplitude for every channel (a layer's one V_th): the flat loop (P = 1)
  const float* th = fire->theta + k * p.Cout;
  int64_t P = 1;
  for (int c = 1; c < p.Cout && P == 1; ++c)
    if (th[c] != th[0] || fire->vth[c] != fire->vth[0]) P = p.Cout;
  for (int64_t px = 0; px < pixels; px += piece) {
    const int64_t np = std::min(piece, pixels - px), i = px * p.Cout, len = np * p.Cout;
    const int64_t at = s * p.opix + i;
    float* oi = o + i;
    float* ev = fire->events ? fire->events + at : nullptr;
    const float* ad = fire->addend ? fire->addend + n * p.opix + i : nullptr;
    if (am) {
      spikes(fire->addend_masks + n * am->size, px, np, p.Cout, fire->addend_vth, *am,
             expanded.data());
      ad = expanded.data();
    }
    block_any<float>(oi, ad, fire->v + at, oi, fire->count + at, ev, th, fire->vth, P, len,
                     fire->fresh && k == 0);
    if (h) masks(o, px, np, p.Cout, *h, m);
    if (scratch && !(h && fire->masks_only)) copy_streaming(out + n * p.opix + i, oi, len);
  }
  if (h) {
    int64_t nz = 0;
    for (int64_t i = 0; i < h->size; ++i) nz += m[i] != 0;
    *nonzero += nz;
  }
}

// Samples [s0, s1) for all steps in order: each image's current, then (with fire) its IF update.
// o is the current's buffer: out, or with stream a scratch of (s1 - s0) images that stays in L2,
// from which the spikes are streamed to out. With lists (the sparse form), each step first
// builds the lists of its (s1 - s0) images there.
static void tile_steps(const Conv& p, const float* table, const uint8_t* mk, const float* bias,
                       float* out, const snnconv_fire* fire, const MaskLayout* h,
                       const MaskLayout* am, int64_t s0,
                       int64_t s1, int64_t batch, int64_t steps, float* scratch, uint32_t* lists,
                       int64_t* nonzero) {
  for (int64_t k = 0; k < steps; ++k) {
    if (lists)
      for (int64_t s = s0; s < s1; ++s) {
        const uint8_t* mi = mk + (k * batch + s) * p.mimg;
        uint32_t* li = lists + (s - s0) * p.ls.image;
        (p.negative ? image_lists<true> : image_lists<false>)(p, mi, li);
      }
    for (int b = 0, co = 0; co < p.Cout; ++b, co += p.L)
      for (int c = 0; c < p.cblocks; ++c) {
        const float* tb = table + (int64_t)(b * p.cblocks + c) * p.tblock;
        const int cw = std::min(p.L, p.Cout - co);
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t n = k * batch + s;
          float* o = (scratch ? scratch + (s - s0) * p.opix : out + n * p.opix) + co;
          if (lists)
            p.sparse(tb, lists + (s - s0) * p.ls.image + (int64_t)c * p.ls.S, p.q, p.ls,
                        bias + co, cw, c > 0, o);
          else
            p.fn(tb, mk + n * p.mimg + c * p.GR, p.q, std::min(p.GR, p.G - c * p.GR), bias + co,
                 cw, c > 0, o);
        }
      }
    if (fire)
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t n = k * batch + s;
        fire_image(p, fire, h, am, scratch ? scratch + (s - s0) * p.opix : out + n * p.opix, out, n,
                   s, k, scratch != nullptr, nonzero);
      }
  }
}

// Returns 0, or 1 if x holds a value that is neither 0 nor its channel's amplitude (out, and
// fire's state, are then untouched).
static int spike_conv2d(const float* x, const float* amp, const float* table, const float* bias,
                        float* out, const snnconv_conv_geometry& g, const snnconv_fire* fire,
                        int threads, int64_t stream_bytes, const uint8_t* given,
                        int64_t given_nonzero) {
  const Conv p(g);
  const uint8_t* mk = given;
  int64_t nonzero = given_nonzero;
  if (!given) {
    thread_local std::vector<uint8_t> masks;  // kept between calls: no fresh pages each time
    if ((int64_t)masks.size() < p.N * p.mimg) masks.resize(p.N * p.mimg);
    if (!all_masks(p, x, amp, threads, masks.data(), &nonzero)) return 1;
    mk = masks.data();
  }
  std::unique_ptr<MaskLayout> h, am;
  if (fire && fire->masks)
    h.reset(new MaskLayout(p, fire->masks_gb, fire->masks_ph, fire->masks_pw,
                           fire->events != nullptr));
  if (fire && fire->addend_masks)
    am.reset(new MaskLayout(p, fire->addend_gb, fire->addend_ph, fire->addend_pw,
                            fire->addend_negative));
  int64_t handed = 0;  // non-zero masks handed off
  const bool sparse = g.sparse_below > 1 || (nonzero < (double)g.sparse_below * p.N * p.H * p.W * p.G &&
                                              sparse_pays(p));
  const int64_t batch = fire ? fire->batch : p.N, steps = fire ? fire->steps : 1;
  // tiles of samples whose images share each table block (a small image alone would reload the
  // whole table from memory for a handful of pixels); with fire, a tile runs its steps in order
  int64_t tile = std::max<int64_t>(1, 512 / ((int64_t)p.Ho * p.Wo));
  if (fire) tile = std::max<int64_t>(1, std::min(tile, batch / std::max(threads, 1)));
  const int64_t tiles = (batch + tile - 1) / tile;
  // With fire and an output of more than stream_bytes (larger than the caches), currents go to a
  // per-thread scratch that stays in L2 and the spikes are streamed out: the output's lines are
  // not read from memory before they are written. With masks only, the spikes stay there.
  const bool stream = fire && (p.N * p.opix * 4 > stream_bytes || (h && fire->masks_only));
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : handed)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t s0 = t * tile, s1 = std::min(batch, s0 + tile);
    thread_local std::vector<float> scratch;
    thread_local std::vector<uint32_t> lists;
    if (stream && (int64_t)scratch.size() < tile * p.opix) scratch.resize(tile * p.opix);
    if (sparse && (int64_t)lists.size() < tile * p.ls.image) lists.resize(tile * p.ls.image);
    tile_steps(p, table, mk, bias, out, fire, h.get(), am.get(), s0, s1, batch, steps,
               stream ? scratch.data() : nullptr, sparse ? lists.data() : nullptr, &handed);
  }
  if (h) *fire->masks_nonzero = handed;
#if defined(__SSE2__)
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: done before we return
#endif
  return 0;
}

}  // namespace snnconv

extern "C" int32_t snnconv_spike_conv2d_f32(const float* x, const float* amp, const float* table,
                                            const float* bias, float* out,
                                            const snnconv_conv_geometry* geometry,
                                            const snnconv_fire* fire, int32_t threads,
                                            int64_t stream_bytes, const uint8_t* masks,
                                            int64_t masks_nonzero) {
  const snnconv_conv_geometry& g = *geometry;
  if ((g.gb != 4 && g.gb != 8) || g.nv < 1 || g.nv > 4 || g.gr < 1 ||
      (g.negative != 0 && g.negative != 1) || !(g.sparse_below >= 0))
    return 2;
  if (fire && fire->masks &&
      ((fire->masks_gb != 4 && fire->masks_gb != 8) || fire->masks_ph < 0 ||
       fire->masks_pw < 0 || !fire->masks_nonzero ||
       (fire->masks_only != 0 && fire->masks_only != 1)))
    return 2;
  if (fire && fire->addend_masks &&
      ((fire->addend_gb != 4 && fire->addend_gb != 8) || fire->addend_ph < 0 ||
       fire->addend_pw < 0 || (fire->addend_negative != 0 && fire->addend_negative != 1) ||
       fire->addend))
    return 2;
  return snnconv::spike_conv2d(x, amp, table, bias, out, g, fire, threads, stream_bytes, masks,
                               masks_nonzero);
}
