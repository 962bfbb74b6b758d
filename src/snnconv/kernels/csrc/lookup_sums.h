// The sums of the lookup convolution (spike_conv.cpp states the equation and the tables'
// layout): for consecutive output pixels and a block of L = 16*NV output channels, the sum over
// taps t and input groups g of table[t][g][mask][0..L), stored as bias + sum (the first input
// block) or added to the output. Two forms add the same rows in the same order, so they give the
// same bits: dense (every group's mask looked up, the all-zero pattern's row of zeros too) and
// sparse (per-pixel lists of the non-zero masks only).
#pragma once

#include <cstdint>
#include <vector>

namespace snnconv {

// Sums are held in the widest native vectors (VW floats: one zmm, ymm, or xmm/NEON register), a
// table row's 16-channel chunk being 16/VW of them. (GCC's generic 64-byte vectors without
// AVX-512 are kept on the stack: 2-4x slower on AVX2.) Each lane adds the same floats in the same
// order whatever VW is, so every build gives the same bits.
#if defined(__AVX512F__)
static constexpr int VW = 16, REGS = 16;  // accumulators: half the 32 zmm registers
#elif defined(__AVX__)
static constexpr int VW = 8, REGS = 12;  // of the 16 ymm registers
#elif defined(__aarch64__)
static constexpr int VW = 4, REGS = 24;  // of the 32 NEON registers
#else
static constexpr int VW = 4, REGS = 12;  // of the 16 xmm registers (SSE2), or plain C++
#endif
static constexpr int K = 16 / VW;  // native vectors per 16 channels

// One convolution's shape. Masks are stored per image as [Hp][Wp][MS] bytes (MS = G, or 2G
// for signed maps) with a zero border of the padding's width, so every tap reads a mask (the
// all-zero pattern's table row is 0 and adds nothing): no bounds tests in the inner loops.
// tap_off[t] = (kh*Wp + kw)*MS.
struct LutGeom {
  int G, MS, GR, E, Hp, Wp, taps, sh, sw, Ho, Wo, Cout;
  const int64_t* tap_off;
};

// The sparse form of the lookups: the same sums without the all-zero masks (whose rows add
// nothing: a sum that starts at +0 never becomes -0, so adding +-0 leaves it unchanged bit for
// bit). An image's lists hold, for each padded pixel and input block c, a segment of S = 1 + GR
// (1 + 2 GR with NEG) uint32: the count n, then n entries in the dense loop's order (group by group,
// with NEG a group's +amp mask before its -amp one): the offset of the mask's table row within
// its tap's block, ((g - c*GR)*E + mask)*L, plus 1 for a -amp mask (subtracted). Offsets are
// multiples of L >= 16, so the low bit is free.
struct Lists {
  int S;              // uint32 per segment
  int64_t pixel;      // uint32 per padded pixel: cblocks * S
  int64_t image;      // uint32 per image: Hp * Wp * pixel
  std::vector<int64_t> tap_off;  // (kh*Wp + kw) * pixel
};

// One image's sums (dense: its masks m at the input block's first group, gn groups of it;
// sparse: its lists li at the input block), the output on at the output block's first channel,
// cw <= L of whose channels are real: on = bias + sum, or with accumulate on += sum.
typedef void (*lut_fn)(const float* table, const uint8_t* m, const LutGeom& q, int gn,
                       const float* bias, int cw, bool accumulate, float* on);
typedef void (*sparse_fn)(const float* table, const uint32_t* li, const LutGeom& q,
                          const Lists& ls, const float* bias, int cw, bool accumulate, float* on);
// [negative][NV], NV in 1..4 (index 0 unused)
extern const lut_fn lut_images[2][5];
extern const sparse_fn lut_sparse_images[2][5];

}  // namespace snnconv
