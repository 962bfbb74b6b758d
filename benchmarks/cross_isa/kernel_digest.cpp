// Runs snnconv's C++ kernels (src/snnconv/kernels/csrc) on fixed pseudo-random inputs and prints
// one FNV-1a digest of the outputs per case. Built for two instruction sets (or two CPUs: x86 and
// aarch64 under qemu-user), equal digests mean the builds compute the same bits
// (benchmarks/cross_isa/check.sh). The tables are random floats but for the all-zero pattern's
// rows (0, as lookup_conv.lookup_table makes them): the kernel only sums rows, so such a table
// tests the summation order. The dense and the sparse lookups (sparse_below 0 and 2)
// of a case read the same inputs: their digests must be equal too.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "snnconv_kernels.h"

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint32_t next() {  // xorshift64*
  state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
  return (uint32_t)((state * 0x2545F4914F6CDD1Dull) >> 32);
}
static float uniform() { return (next() >> 8) * (1.0f / 16777216.0f); }  // [0, 1)

static uint64_t digest_bytes(const std::vector<uint8_t>& v, uint64_t h) {
  for (uint8_t b : v) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

static uint64_t digest(const std::vector<float>& v, uint64_t h = 0xcbf29ce484222325ull) {
  for (float f : v) {
    uint32_t b;
    __builtin_memcpy(&b, &f, 4);
    for (int i = 0; i < 4; ++i) h = (h ^ ((b >> (8 * i)) & 255)) * 0x100000001b3ull;
  }
  return h;
}

// One lookup convolution (with the fused IF update when steps > 0, a simulation's first steps:
// fresh, the counts NaN and not read, which also hands on the masks of its spikes for a next 3x3
// convolution with groups of gb channels, then once more with those spikes as the addend, read
// from the masks) of random spike maps.
static void conv_case(int c, int cout, int size, int gb, int nv, int gr, int negative,
                      float sparse_below, int steps) {
  state = 0x9E3779B97F4A7C15ull ^ ((uint64_t)c << 40 | (uint64_t)cout << 24 | size << 12 | steps);
  const int batch = 3, n = steps > 0 ? steps * batch : batch, k = 3, ho = size, wo = size;
  const int g = (c + gb - 1) / gb, lanes = 16 * nv;
  const int64_t table_n = (int64_t)((cout + lanes - 1) / lanes) * ((g + gr - 1) / gr) * k * k *
                          gr * (1 << gb) * lanes;
  std::vector<float> amp(c), x((int64_t)n * size * size * c), table(table_n), bias(cout);
  for (float& a : amp) a = 0.5f + uniform();
  for (int64_t i = 0; i < (int64_t)x.size(); ++i) {
    const float u = uniform(), a = amp[i % c];
    x[i] = u < 0.15f ? a : (negative && u > 0.95f ? -a : 0.0f);
  }
  for (int64_t i = 0; i < table_n; ++i)  // the all-zero pattern's rows are 0, as in real tables
    table[i] = (i / lanes) % (1 << gb) == 0 ? 0.0f : uniform() - 0.5f;
  for (float& b : bias) b = uniform() - 0.5f;
  std::vector<float> out((int64_t)n * ho * wo * cout);
  snnconv_conv_geometry geo{n, c, size, size, cout, k, k, 1, 1, 1, 1, ho, wo, gb, nv, gr,
                            negative, sparse_below};
  const int64_t per = (int64_t)batch * ho * wo * cout;
  std::vector<float> v(per, 0.25f), count(per, __builtin_nanf("")), events(per, __builtin_nanf(""));
  std::vector<float> vth(cout), theta((int64_t)steps * cout);  // one V_th per channel
  for (float& a : vth) a = 0.4f + 0.4f * uniform();
  for (int64_t i = 0; i < (int64_t)theta.size(); ++i) theta[i] = vth[i % cout] * (1 - 0.05f * (i / cout));
  const int gout = (cout + gb - 1) / gb;
  std::vector<uint8_t> masks((int64_t)n * (ho + 2) * (wo + 2) * (negative ? 2 * gout : gout));
  int64_t nonzero = -1;
  snnconv_fire fire{nullptr, v.data(), count.data(), theta.data(), vth.data(), batch, steps,
                    negative ? events.data() : nullptr, masks.data(), gb, 1, 1, &nonzero, 0,
                    nullptr, 0, 0, 0, 0, nullptr, 1};
  const int rc = snnconv_spike_conv2d_f32(x.data(), amp.data(), table.data(), bias.data(),
                                          out.data(), &geo, steps > 0 ? &fire : nullptr, 2, 0,
                                          nullptr, 0);
  uint64_t h = digest_bytes(masks, digest(v, digest(count, digest(out))));
  if (steps > 0) {  // again, with those spikes as the addend, read from their masks
    snnconv_fire again{nullptr, v.data(), count.data(), theta.data(), vth.data(), batch, steps,
                       negative ? events.data() : nullptr, nullptr, 0, 0, 0, nullptr, 0,
                       masks.data(), gb, 1, 1, negative, vth.data()};
    snnconv_spike_conv2d_f32(x.data(), amp.data(), table.data(), bias.data(), out.data(), &geo,
                             &again, 2, 0, nullptr, 0);
    h = digest(v, digest(count, digest(out, h)));
  }
  std::printf("conv c=%d cout=%d size=%d gb=%d nv=%d gr=%d neg=%d sparse=%.1f steps=%d: rc=%d "
              "nonzero=%lld %016llx\n",
              c, cout, size, gb, nv, gr, negative, sparse_below, steps, rc, (long long)nonzero,
              (unsigned long long)h);
}

// The IF scan with one V_th for all (P = 1) or one per channel (P channels innermost); fresh:
// the simulation's first steps, the counts NaN and not read (else zeros, read).
static void scan_case(int signed_neurons, int64_t P, int fresh) {
  state = 0x9E3779B97F4A7C15ull ^ ((uint64_t)signed_neurons << 32 | (uint64_t)P);
  const int64_t steps = 7, n = 1003;  // 17 x 59
  const float c0 = fresh ? __builtin_nanf("") : 0.0f;
  std::vector<float> cur(steps * n), add(steps * n), v(n, 0.3f), out(steps * n), count(n, c0),
      events(n, signed_neurons ? c0 : 0.0f), vth(P), theta(steps * P);
  for (float& c : cur) c = 2.0f * uniform() - 0.6f;
  for (float& a : add) a = uniform() - 0.5f;
  for (float& a : vth) a = 0.3f + 0.4f * uniform();
  for (int64_t i = 0; i < steps * P; ++i) theta[i] = vth[i % P] * (1 - 0.05f * (i / P));
  snnconv_if_scan_f32(cur.data(), 0, add.data(), v.data(), theta.data(), vth.data(), P,
                      out.data(), count.data(), signed_neurons ? events.data() : nullptr, steps,
                      n, fresh, 2);
  std::printf("scan signed=%d P=%lld fresh=%d: %016llx\n", signed_neurons, (long long)P, fresh,
              (unsigned long long)digest(events, digest(count, digest(v, digest(out)))));
}

int main() {
  for (int neg = 0; neg <= 1; ++neg) {
    for (int fresh = 0; fresh <= 1; ++fresh) {  // the same inputs, the same digests: 0 + s is s
      scan_case(neg, 1, fresh);
      scan_case(neg, 17, fresh);
    }
    for (float sparse : {0.0f, 2.0f})
      for (int steps : {0, 2}) {
        conv_case(16, 40, 7, 8, 3, 2, neg, sparse, steps);   // 8-bit groups, NV 3
        conv_case(24, 20, 6, 4, 2, 4, neg, sparse, steps);   // 4-bit, two input blocks
        conv_case(12, 64, 5, 4, 4, 3, neg, sparse, steps);   // NV 4
        conv_case(8, 16, 9, 4, 1, 2, neg, sparse, steps);    // NV 1
        conv_case(70, 33, 4, 4, 3, 8, neg, sparse, steps);   // C, Cout not multiples
      }
  }
  return 0;
}
