// Float operations rounded one at a time, as the PyTorch reference rounds them.
//
// The epilogues, TA and the Bernoulli mean must equal the reference to the last bit, so a * b + c
// must never become one fused multiply-add. nvcc contracts it by default (--fmad=true), so device
// code uses the explicitly rounded intrinsics, which are never contracted; host code relies on the
// build's -ffp-contract=off (CMakeLists.txt and setup.py both set it).
#pragma once

#include "host_device.h"

namespace hidiff::common {

HIDIFF_HOST_DEVICE HIDIFF_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace hidiff::common
