// Host/device helpers shared by the CUDA kernels and their host-side tests (torch-free).
//
// The float epilogues must equal the PyTorch reference to the last bit, which rounds after every
// operation. nvcc contracts a * b + c into one FMA by default (--fmad=true), so device code uses
// the explicitly rounded intrinsics, which are never contracted; host code relies on the
// build's -ffp-contract=off (CMakeLists.txt and setup.py both set it).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define HIDIFF_HD __host__ __device__ __forceinline__
#else
#define HIDIFF_HD inline
#endif

namespace hidiff::cuda {

HIDIFF_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

HIDIFF_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

HIDIFF_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

HIDIFF_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

HIDIFF_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

HIDIFF_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

HIDIFF_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

HIDIFF_HD int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

HIDIFF_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// TA (paper Eq. 16) in the reference's order: s = u - g; u > g ? s + z : b * s + z.
template <typename T>
HIDIFF_HD T time_activation(T u, T gamma, T zeta, T beta) {
  const T shifted = sub_rn(u, gamma);
  return u > gamma ? add_rn(shifted, zeta) : add_rn(mul_rn(beta, shifted), zeta);
}

}  // namespace hidiff::cuda
