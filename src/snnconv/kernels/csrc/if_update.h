// The IF update of a block of neurons for one step: shared by the scan (if_scan.cpp) and the
// lookup convolution's fused epilogue (spike_conv.cpp), so both round exactly alike.
#pragma once

#include <cstdint>

namespace snnconv {

// Per neuron i, with I = in[i] (+ ad[i], rounded first, as a separate add would):
// v += I; s = v >= th; v -= s * vth; o = s * vth; count += s.
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

// Signed neurons (simulation/neuron.py): a spike of -1 where v < th - vth (the membrane below 0)
// and the net count is positive: s = (v >= th) - (v < th - vth && count > 0); the same reset;
// events += |s| (as s * s, exact for s in {-1, 0, 1}).
template <typename T, bool ADD>
static void signed_block(const T* in, const T* __restrict__ ad, T* __restrict__ v, T* o,
                         T* __restrict__ count, T* __restrict__ events, T th, T vth,
                         int64_t len) {
  const T lo = th - vth;
  for (int64_t i = 0; i < len; ++i) {
    T x = ADD ? v[i] + (in[i] + ad[i]) : v[i] + in[i];
    T s = static_cast<T>(x >= th) - static_cast<T>((x < lo) & (count[i] > T(0)));
    v[i] = x - s * vth;
    o[i] = s * vth;
    count[i] += s;
    events[i] += s * s;
  }
}

}  // namespace snnconv
