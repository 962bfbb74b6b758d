// The lookup sums of lookup_sums.h, dense and sparse, per NV and sign, in the native vectors of
// the instruction set the library is built for. A translation unit of its own: it holds most of
// the kernels' template instances, and build.py compiles the sources side by side.
#include "lookup_sums.h"

#include <cstring>

namespace snnconv {

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(float))));
static inline vf ldv(const float* p) { vf r; std::memcpy(&r, p, sizeof r); return r; }
static inline void stv(float* p, vf r) { std::memcpy(p, &r, sizeof r); }

// R = NV*K sums of a block of L = 16*NV output channels into op[0..cw): op = bias + sum (the first
// input block), or op += sum.
template <int NV>
static inline void store_sums(const vf* a, const float* bias, int cw, bool accumulate, float* op) {
  constexpr int L = 16 * NV, R = NV * K;
  if (cw == L) {
    for (int j = 0; j < R; ++j)
      stv(op + VW * j, accumulate ? ldv(op + VW * j) + a[j] : a[j] + ldv(bias + VW * j));
  } else {
    float tmp[L];
    for (int j = 0; j < R; ++j) stv(tmp + VW * j, a[j]);
    if (accumulate)
      for (int k = 0; k < cw; ++k) op[k] += tmp[k];
    else
      for (int k = 0; k < cw; ++k) op[k] = tmp[k] + bias[k];
  }
}

// P output pixels of a row at once (consecutive wo), one block of L = 16*NV output channels and
// of input groups [g0, g0+gn), gn <= GR (mp points at the first pixel's window corner, group g0):
// sum = over taps t and groups g of table[t][g][mask][0..L), out = bias + sum for the first
// input block, else out += sum. The P*NV accumulators are independent, which keeps many table
// loads in flight. With NEG the rows of the -amp masks are subtracted, the all-zero one too (its
// row is +0): no branch, which those masks' data would mispredict (docs/design.md, "Signed
// neurons", has the measurements).
template <int NV, int P, bool NEG>
static inline void lut_pixels(const float* table, const uint8_t* mp, const LutGeom& q, int gn,
                              const float* bias, int cw, bool accumulate, float* o) {
  constexpr int L = 16 * NV, R = NV * K;  // R native vectors per table row
  vf a[P][R] = {};
  const int64_t step = (int64_t)q.sw * q.MS, rows = (int64_t)q.E * L;
  for (int t = 0; t < q.taps; ++t) {
    const uint8_t* m = mp + q.tap_off[t];
    const float* tt = table + t * q.GR * rows;  // a block holds GR groups (zero-padded)
    for (int g = 0; g < gn; ++g, tt += rows)
      for (int p = 0; p < P; ++p) {
        const float* r = tt + (int64_t)m[p * step + g] * L;
        for (int j = 0; j < R; ++j) a[p][j] += ldv(r + VW * j);
        if (NEG) {  // branch-free: row 0 is +0, and a - (+0) == a bit for bit
          const float* rn = tt + (int64_t)m[p * step + q.G + g] * L;
          for (int j = 0; j < R; ++j) a[p][j] -= ldv(rn + VW * j);
        }
      }
  }
  for (int p = 0; p < P; ++p) store_sums<NV>(a[p], bias, cw, accumulate, o + (int64_t)p * q.Cout);
}

// One image (masks m at group g0, output on at channel co).
template <int NV, bool NEG>
static void lut_image(const float* table, const uint8_t* m, const LutGeom& q, int gn,
                      const float* bias, int cw, bool accumulate, float* on) {
  constexpr int P = REGS / (NV * K) > 8 ? 8 : (REGS / (NV * K) < 1 ? 1 : REGS / (NV * K));
  for (int ho = 0; ho < q.Ho; ++ho) {
    const uint8_t* mrow = m + (int64_t)ho * q.sh * q.Wp * q.MS;
    float* orow = on + (int64_t)ho * q.Wo * q.Cout;
    int wo = 0;
    for (; wo + P <= q.Wo; wo += P)
      lut_pixels<NV, P, NEG>(table, mrow + (int64_t)wo * q.sw * q.MS, q, gn, bias, cw,
                             accumulate, orow + (int64_t)wo * q.Cout);
    for (; wo < q.Wo; ++wo)
      lut_pixels<NV, 1, NEG>(table, mrow + (int64_t)wo * q.sw * q.MS, q, gn, bias, cw,
                             accumulate, orow + (int64_t)wo * q.Cout);
  }
}

const lut_fn lut_images[2][5] = {
    {nullptr, lut_image<1, false>, lut_image<2, false>, lut_image<3, false>, lut_image<4, false>},
    {nullptr, lut_image<1, true>, lut_image<2, true>, lut_image<3, true>, lut_image<4, true>}};

// lut_image on an image's lists (li at input block c): one output pixel at a time, its R
// accumulators over the non-zero masks of each tap.
template <int NV, bool NEG>
static void lut_sparse_image(const float* table, const uint32_t* li, const LutGeom& q,
                             const Lists& ls, const float* bias, int cw, bool accumulate,
                             float* on) {
  constexpr int L = 16 * NV, R = NV * K;
  const int64_t block = (int64_t)q.GR * q.E * L;  // floats per tap in a table block
  for (int ho = 0; ho < q.Ho; ++ho)
    for (int wo = 0; wo < q.Wo; ++wo) {
      const uint32_t* lp = li + ((int64_t)ho * q.sh * q.Wp + (int64_t)wo * q.sw) * ls.pixel;
      vf a[R] = {};
      const float* tt = table;
      for (int t = 0; t < q.taps; ++t, tt += block) {
        const uint32_t* seg = lp + ls.tap_off[t];
        const uint32_t n = seg[0];
        for (uint32_t i = 1; i <= n; ++i) {
          const uint32_t e = seg[i];
          const float* r = tt + (e & ~1u);
          if (NEG) {  // branch-free: a + (row with its sign bits flipped) == a - row, bit for bit
            const vi flip = vi{} + (int32_t)((e & 1u) << 31);
            for (int j = 0; j < R; ++j) a[j] += (vf)((vi)ldv(r + VW * j) ^ flip);
          } else {
            for (int j = 0; j < R; ++j) a[j] += ldv(r + VW * j);
          }
        }
      }
      store_sums<NV>(a, bias, cw, accumulate, on + ((int64_t)ho * q.Wo + wo) * q.Cout);
    }
}

const sparse_fn lut_sparse_images[2][5] = {
    {nullptr, lut_sparse_image<1, false>, lut_sparse_image<2, false>, lut_sparse_image<3, false>,
     lut_sparse_image<4, false>},
    {nullptr, lut_sparse_image<1, true>, lut_sparse_image<2, true>, lut_sparse_image<3, true>,
     lut_sparse_image<4, true>}};

}  // namespace snnconv
