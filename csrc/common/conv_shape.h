// Sizes of one binary convolution and the sizes that follow from them, shared by every backend.
//
// The CPU kernels use 64-bit sizes (ConvShape<int64_t>); the CUDA kernels use 32-bit ones
// (ConvShape<int>), which keeps their index math in 32-bit registers, after the glue has checked
// that every size fits. The batch size is 64-bit in both.
#pragma once

#include <cstdint>

#include "host_device.h"
#include "packed_bits.h"

namespace hidiff::common {

template <typename Int>
struct ConvShape {
  int64_t N;      // batch
  Int H, W, C;    // input height, width, logical channels
  Int O, KH, KW;  // output channels, kernel height, kernel width
  Int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;

  HIDIFF_HOST_DEVICE HIDIFF_INLINE Int words() const { return packed_words(C); }
  HIDIFF_HOST_DEVICE HIDIFF_INLINE Int out_h() const { return output_size(H, pad_h, dil_h, KH, stride_h); }
  HIDIFF_HOST_DEVICE HIDIFF_INLINE Int out_w() const { return output_size(W, pad_w, dil_w, KW, stride_w); }
  // Packed words of one output channel's weights (KH, KW, words): the reduction length.
  HIDIFF_HOST_DEVICE HIDIFF_INLINE Int reduction_words() const { return KH * KW * words(); }
  HIDIFF_HOST_DEVICE HIDIFF_INLINE int64_t pixels() const { return N * out_h() * out_w(); }

 private:
  // Output positions along one axis: those whose first tap starts inside the padded input and
  // whose last tap ends inside it, as in torch.nn.functional.conv2d.
  static HIDIFF_HOST_DEVICE HIDIFF_INLINE Int output_size(Int size, Int pad, Int dilation, Int taps, Int stride) {
    return (size + 2 * pad - dilation * (taps - 1) - 1) / stride + 1;
  }
};

}  // namespace hidiff::common
