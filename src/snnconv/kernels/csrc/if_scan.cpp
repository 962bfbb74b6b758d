// The fused IF scan: per step k, v += I[k]; s = v >= theta[k]; v -= s * vth; out[k] = s * vth;
// count += s, with the same float operations in the same order as IFNeurons.scan's PyTorch loop
// (tests/test_fused.py compares them bit for bit). With events (not null) the neurons are signed
// (if_update.h) and events counts spikes of either sign. fresh: step 0 is the simulation's first,
// count and events are written there, not read (their contents do not matter).
//
// current: [steps, n] or [n] (constant), addend: [steps, n] or null, v/count/events: [n], theta:
// [steps][P] firing thresholds and vth [P] spike amplitudes: P = 1, one per layer, or one per
// channel with the channels innermost (neuron i is channel i % P; n a multiple of P); out:
// [steps, n]. Tensors are dense with identical element order (any memory format when P = 1).
#include <algorithm>
#include <cstdint>

#include "if_update.h"
#include "snnconv_kernels.h"

namespace snnconv {

template <typename T>
static void scan(const T* cur, int constant, const T* add, T* v, const T* theta, const T* vth,
                 int64_t P, T* out, T* count, T* events, int64_t steps, int64_t n, int fresh,
                 int threads) {
  // neurons whose membranes stay in L1/L2 across the chunk's steps: about 4096, whole channel rows
  const int64_t B = std::max<int64_t>(4096 / P, 1) * P;
  const int64_t blocks = (n + B - 1) / B;
  // OpenMP shares PyTorch's thread team (the same libgomp), so no second pool competes with it
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t lo = b * B, len = std::min(n, lo + B) - lo;
    for (int64_t k = 0; k < steps; ++k) {
      const T* in = cur + (constant ? 0 : k * n) + lo;
      block_any<T>(in, add ? add + k * n + lo : nullptr, v + lo, out + k * n + lo, count + lo,
                   events ? events + lo : nullptr, theta + k * P, vth, P, len, fresh && k == 0);
    }
  }
}

}  // namespace snnconv

extern "C" {

void snnconv_if_scan_f32(const float* cur, int32_t constant, const float* add, float* v,
                         const float* theta, const float* vth, int64_t P, float* out,
                         float* count, float* events, int64_t steps, int64_t n, int32_t fresh,
                         int32_t threads) {
  snnconv::scan<float>(cur, constant, add, v, theta, vth, P, out, count, events, steps, n, fresh,
                       threads);
}

void snnconv_if_scan_f64(const double* cur, int32_t constant, const double* add, double* v,
                         const double* theta, const double* vth, int64_t P, double* out,
                         double* count, double* events, int64_t steps, int64_t n,
                         int32_t fresh, int32_t threads) {
  snnconv::scan<double>(cur, constant, add, v, theta, vth, P, out, count, events, steps, n, fresh,
                        threads);
}

}
