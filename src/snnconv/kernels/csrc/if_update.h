// The IF update of a block of neurons for one step: shared by the scan (if_scan.cpp) and the
// lookup convolution's fused epilogue (spike_conv.cpp), so both round exactly alike.
#pragma once

#include <cstdint>

namespace snnconv {

// Neuron i, with I = in[i] (+ ad[i], rounded first, as a separate add would), firing threshold
// th and spike amplitude vth: v += I; s = v >= th; v -= s * vth; o = s * vth; count += s.
// Signed neurons (events not null; simulation/neuron.py): a spike of -1 where v < th - vth (the
// membrane below 0) and the net count is positive: s = (v >= th) - (v < th - vth && count > 0);
// the same reset; events += |s| (as s * s, exact for s in {-1, 0, 1}).
// FRESH: the simulation's first step, count and events not read but written, as if they held 0
// (0 + s is s exactly, s never -0), so they need no zeroing pass before it.
// in and o may be the same buffer (the lookup convolution's epilogue overwrites its current).
// len neurons with th[0] and vth[0] for all, or (PER) th[i] and vth[i] for neuron i. A
// branch-free loop over contiguous neurons, so it vectorises.
template <typename T, bool ADD, bool SIGNED, bool PER, bool FRESH>
static void run(const T* in, const T* __restrict__ ad, T* __restrict__ v, T* o,
                T* __restrict__ count, T* __restrict__ events, const T* __restrict__ th,
                const T* __restrict__ vth, int64_t len) {
  const T th0 = th[0], vth0 = vth[0];
  for (int64_t i = 0; i < len; ++i) {
    const T t = PER ? th[i] : th0, a = PER ? vth[i] : vth0;
    const T x = ADD ? v[i] + (in[i] + ad[i]) : v[i] + in[i];
    const T c = FRESH ? T(0) : count[i];
    const T s = SIGNED ? static_cast<T>(x >= t) - static_cast<T>((x < t - a) & (c > T(0)))
                       : static_cast<T>(x >= t);
    v[i] = x - s * a;
    o[i] = s * a;
    count[i] = FRESH ? s : c + s;
    if (SIGNED) events[i] = FRESH ? s * s : events[i] + s * s;
  }
}

// run() over len neurons for one step. Their thresholds and amplitudes: with P = 1 th[0] and
// vth[0] for all (one per layer); else th[c] and vth[c] for neuron r * P + c (one per channel,
// channels innermost: len a multiple of P, the block starting at a channel 0).
template <typename T, bool ADD, bool SIGNED, bool FRESH>
static void block(const T* in, const T* ad, T* v, T* o, T* count, T* events, const T* th,
                  const T* vth, int64_t P, int64_t len) {
  if (P == 1) return run<T, ADD, SIGNED, false, FRESH>(in, ad, v, o, count, events, th, vth, len);
  for (int64_t r = 0; r < len; r += P)
    run<T, ADD, SIGNED, true, FRESH>(in + r, ADD ? ad + r : ad, v + r, o + r, count + r,
                                     SIGNED ? events + r : events, th, vth, P);
}

template <typename T, bool FRESH>
static void block_fresh(const T* in, const T* ad, T* v, T* o, T* count, T* events, const T* th,
                        const T* vth, int64_t P, int64_t len) {
  if (events && ad)
    block<T, true, true, FRESH>(in, ad, v, o, count, events, th, vth, P, len);
  else if (events)
    block<T, false, true, FRESH>(in, nullptr, v, o, count, events, th, vth, P, len);
  else if (ad)
    block<T, true, false, FRESH>(in, ad, v, o, count, nullptr, th, vth, P, len);
  else
    block<T, false, false, FRESH>(in, nullptr, v, o, count, nullptr, th, vth, P, len);
}

// block() with its variant chosen at run time (ad, events: null or not; fresh: the first step).
template <typename T>
static void block_any(const T* in, const T* ad, T* v, T* o, T* count, T* events, const T* th,
                      const T* vth, int64_t P, int64_t len, bool fresh) {
  if (fresh) return block_fresh<T, true>(in, ad, v, o, count, events, th, vth, P, len);
  block_fresh<T, false>(in, ad, v, o, count, events, th, vth, P, len);
}

}  // namespace snnconv
