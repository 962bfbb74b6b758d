// The C ABI of snnconv's compiled CPU kernels: the structs and the entry points.
//
// kernels/cpu.py mirrors each struct with a ctypes.Structure and declares each entry point's
// argument types once; when it loads the library it compares snnconv_abi(), snnconv_sizeof()
// and snnconv_offsetof() with its mirrors and refuses a library that disagrees. Change a struct
// or a signature here: change the mirror in cpu.py and bump SNNCONV_ABI.
#pragma once

#include <cstddef>
#include <cstdint>

#define SNNCONV_ABI 7

extern "C" {

// One lookup convolution (spike_conv.cpp): the shapes and the table's plan (lookup_conv.plan).
// Input x is [n][h][w][c] (channels_last), the output [n][ho][wo][cout]; kernel kh x kw, stride
// (sh, sw), zero padding (ph, pw); channels in groups of gb (4 or 8) bits, output blocks of
// 16*nv (nv in 1..4) channels, input blocks of gr groups. negative: 1 if x may also hold -amp[c]
// (signed neurons' spikes), else 0. sparse_below: the lookups skip the all-zero groups (through
// per-pixel lists of the others) when the fraction of non-zero groups in x is below it (0:
// never, above 1: always); the result is the same bits either way.
struct snnconv_conv_geometry {
  int64_t n;
  int32_t c, h, w;
  int32_t cout, kh, kw, sh, sw, ph, pw, ho, wo;
  int32_t gb, nv, gr;
  int32_t negative;
  float sparse_below;
};

// The IF layer that reads the convolution, updated in the same pass: images are n = k*batch + b
// (step k < steps, sample b); v and count are [batch][ho][wo][cout], theta [steps][cout] each
// step's firing threshold per channel, vth [cout] the spike amplitudes (a layer's one V_th
// repeated, or one per channel), addend null or shaped like the output; events null
// (ordinary neurons) or shaped like v (signed neurons: spikes of either sign counted there).
// masks null, or where the masks of the spikes go for the lookup convolution that reads them,
// made while the spikes are in cache: [n][ho + 2 masks_ph][wo + 2 masks_pw][MS] bytes in that
// convolution's layout (groups of masks_gb channels, MS = G, or 2G for signed neurons), as its
// own mask pass would make them; *masks_nonzero is set to the number of non-zero masks.
// masks_only: 1 (with masks) if the spikes are read only through those masks: out is then not
// written (the update's state is); else 0. addend_masks null, or the addend given as the masks
// another layer's update made of its spikes for a convolution of its own
// (groups of addend_gb channels, border (addend_ph, addend_pw), addend_negative: signed; amplitudes
// addend_vth [cout]), one image per output image: read instead of addend (which is then null).
// fresh: 1 if step 0 is the simulation's first: count and events are then written, not read
// (if_update.h), so they need not be zeroed; else 0.
struct snnconv_fire {
  const float* addend;
  float* v;
  float* count;
  const float* theta;
  const float* vth;
  int64_t batch, steps;
  float* events;
  uint8_t* masks;
  int32_t masks_gb, masks_ph, masks_pw;
  int64_t* masks_nonzero;
  int32_t masks_only;
  const uint8_t* addend_masks;
  int32_t addend_gb, addend_ph, addend_pw, addend_negative;
  const float* addend_vth;
  int32_t fresh;
};

// The ABI version (SNNCONV_ABI); the size of a struct (field null) or of one of its fields, and
// a field's offset, by name ("conv_geometry", "n"): -1 for a name the library does not know.
int32_t snnconv_abi(void);
int64_t snnconv_sizeof(const char* type, const char* field);
int64_t snnconv_offsetof(const char* type, const char* field);

// The IF scan (if_scan.cpp), in place on v, out and count (and events). cur is [steps][n], or
// [n] when constant; add null or [steps][n]; theta [steps][P] and vth [P]: P = 1 (one V_th per
// layer) or one per channel, channels innermost (neuron i is channel i % P); events null (binary
// neurons) or [n] (signed neurons: spikes of either sign counted there); fresh: 1 if step 0 is
// the simulation's first (count and events written there, not read), else 0.
void snnconv_if_scan_f32(const float* cur, int32_t constant, const float* add, float* v,
                         const float* theta, const float* vth, int64_t P, float* out,
                         float* count, float* events, int64_t steps, int64_t n, int32_t fresh,
                         int32_t threads);
void snnconv_if_scan_f64(const double* cur, int32_t constant, const double* add, double* v,
                         const double* theta, const double* vth, int64_t P, double* out,
                         double* count, double* events, int64_t steps, int64_t n,
                         int32_t fresh, int32_t threads);

// The lookup convolution (spike_conv.cpp), with the IF update when fire is not null. Returns 0;
// 1 if x holds a value that is neither 0 nor its channel's amplitude (nor minus it, with
// geometry->negative) (nothing written); 2 if the
// geometry's plan is out of range (nothing read or written). masks null, or x's masks in this
// convolution's layout with masks_nonzero of them non-zero (made by the fire of the layer that
// wrote x, snnconv_fire.masks): then they are used instead of a mask pass over x.
int32_t snnconv_spike_conv2d_f32(const float* x, const float* amp, const float* table,
                                 const float* bias, float* out,
                                 const snnconv_conv_geometry* geometry, const snnconv_fire* fire,
                                 int32_t threads, int64_t stream_bytes, const uint8_t* masks,
                                 int64_t masks_nonzero);
}
