// What the library says about its own ABI, for the loader's check (kernels/cpu.py).
#include <cstring>

#include "snnconv_kernels.h"

namespace {

struct Field {
  const char* type;
  const char* field;
  int64_t offset, size;
};

#define SNNCONV_FIELD(T, F) \
  {#T, #F, (int64_t)offsetof(snnconv_##T, F), (int64_t)sizeof(snnconv_##T::F)}
const Field fields[] = {
    SNNCONV_FIELD(conv_geometry, n),    SNNCONV_FIELD(conv_geometry, c),
    SNNCONV_FIELD(conv_geometry, h),    SNNCONV_FIELD(conv_geometry, w),
    SNNCONV_FIELD(conv_geometry, cout), SNNCONV_FIELD(conv_geometry, kh),
    SNNCONV_FIELD(conv_geometry, kw),   SNNCONV_FIELD(conv_geometry, sh),
    SNNCONV_FIELD(conv_geometry, sw),   SNNCONV_FIELD(conv_geometry, ph),
    SNNCONV_FIELD(conv_geometry, pw),   SNNCONV_FIELD(conv_geometry, ho),
    SNNCONV_FIELD(conv_geometry, wo),   SNNCONV_FIELD(conv_geometry, gb),
    SNNCONV_FIELD(conv_geometry, nv),   SNNCONV_FIELD(conv_geometry, gr),
    SNNCONV_FIELD(conv_geometry, negative), SNNCONV_FIELD(conv_geometry, sparse_below),
    SNNCONV_FIELD(fire, addend),        SNNCONV_FIELD(fire, v),
    SNNCONV_FIELD(fire, count),         SNNCONV_FIELD(fire, theta),
    SNNCONV_FIELD(fire, vth),           SNNCONV_FIELD(fire, batch),
    SNNCONV_FIELD(fire, steps),         SNNCONV_FIELD(fire, events),
    SNNCONV_FIELD(fire, masks),         SNNCONV_FIELD(fire, masks_gb),
    SNNCONV_FIELD(fire, masks_ph),      SNNCONV_FIELD(fire, masks_pw),
    SNNCONV_FIELD(fire, masks_nonzero), SNNCONV_FIELD(fire, masks_only),
    SNNCONV_FIELD(fire, addend_masks),  SNNCONV_FIELD(fire, addend_gb),
    SNNCONV_FIELD(fire, addend_ph),     SNNCONV_FIELD(fire, addend_pw),
    SNNCONV_FIELD(fire, addend_negative), SNNCONV_FIELD(fire, addend_vth),
    SNNCONV_FIELD(fire, fresh),
};
#undef SNNCONV_FIELD

const Field* find(const char* type, const char* field) {
  for (const Field& f : fields)
    if (std::strcmp(f.type, type) == 0 && std::strcmp(f.field, field) == 0) return &f;
  return nullptr;
}

}  // namespace

extern "C" {

int32_t snnconv_abi(void) { return SNNCONV_ABI; }

int64_t snnconv_sizeof(const char* type, const char* field) {
  if (field != nullptr) {
    const Field* f = find(type, field);
    return f ? f->size : -1;
  }
  if (std::strcmp(type, "conv_geometry") == 0) return sizeof(snnconv_conv_geometry);
  if (std::strcmp(type, "fire") == 0) return sizeof(snnconv_fire);
  return -1;
}

int64_t snnconv_offsetof(const char* type, const char* field) {
  const Field* f = find(type, field);
  return f ? f->offset : -1;
}

}
