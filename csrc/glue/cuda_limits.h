// Size checks of the CUDA glue: what the CUDA kernels can index (ATen only, no CUDA header).
//
// The CUDA kernels keep their index math in 32-bit integers and put output words (binarize_pack)
// or output channel tiles (binary_conv2d) on the grid's y dimension; the CPU kernels index with
// 64 bits and need none of these checks.
#pragma once

#include <ATen/ATen.h>

#include <climits>
#include <cstdint>

#include "../common/conv_shape.h"
#include "../common/packed_bits.h"

namespace hidiff::glue {

// Largest grid dimension y of a CUDA launch.
inline constexpr int64_t kMaxGridY = 65535;

inline void check_fits_int(int64_t value, const char* what) {
  TORCH_CHECK_VALUE(value >= 0 && value <= INT_MAX, what, " must be below 2^31 for the CUDA kernels, got ", value);
}

// binarize_pack puts one packed word of channels on each grid row.
inline void check_cuda_binarize_channels(int64_t C) {
  TORCH_CHECK_VALUE(common::packed_words(C) <= kMaxGridY, "x has ", C, " channels, more than the CUDA kernel's ",
                    kMaxGridY * 32);
}

// The checked shape of a convolution (check_conv_args) in the 32-bit sizes of the CUDA kernels,
// after checking that they fit; binary_conv2d puts 64 output channels on each grid row.
inline common::ConvShape<int> cuda_conv_shape(const common::ConvShape<int64_t>& s) {
  for (int64_t size : {s.H, s.W, s.O, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w}) {
    check_fits_int(size, "every size, stride, padding and dilation");
  }
  check_fits_int(s.H + 2 * s.pad_h, "H + 2 * padding");
  check_fits_int(s.W + 2 * s.pad_w, "W + 2 * padding");
  check_fits_int(s.out_h() * s.out_w(), "Ho * Wo");
  TORCH_CHECK_VALUE(common::packed_words(s.O) <= kMaxGridY * 2, "w_packed has ", s.O,
                    " output channels, more than the CUDA kernel's ", kMaxGridY * 64);
  // check_conv_args bounds C * KH * KW below 2^31, so C, KH and KW fit too.
  const auto narrow = [](int64_t size) { return static_cast<int>(size); };
  return {s.N,
          narrow(s.H),
          narrow(s.W),
          narrow(s.C),
          narrow(s.O),
          narrow(s.KH),
          narrow(s.KW),
          narrow(s.stride_h),
          narrow(s.stride_w),
          narrow(s.pad_h),
          narrow(s.pad_w),
          narrow(s.dil_h),
          narrow(s.dil_w)};
}

}  // namespace hidiff::glue
