// Index math of the binary convolution kernel, shared by the device code and the host tests.
//
// The convolution is an implicit GEMM: row m of the left matrix is output pixel
// m = (n * Ho + oh) * Wo + ow, column o of the right matrix is output channel o, and the
// reduction index k runs over the packed words of every tap, k = (kh * KW + kw) * words + j.
// In that order the packed weights (O, KH, KW, words) already are the right matrix, row-major
// (O, KH * KW * words); the left matrix is gathered from the activations (N, H, W, words) on
// the fly, with 0 for taps outside the image.
//
// Counting. sm_90 has no XOR for 1-bit MMA, only AND + POPC, so the kernel derives the
// disagreements D between activation and weight bits over the valid taps from
//   D = popc(a) + popc(w) - 2 popc(a & w)
// and returns conv = valid_taps * C - 2 D, which is exactly the +-1 convolution with zero padding.
// popc(a & w) comes from the tensor cores; popc(a) per pixel is summed while the gathered words
// are staged (taps outside the image are gathered as 0, so they add nothing); popc(w) over the
// valid taps is a rectangle of taps, (kh_lo..kh_hi) x (kw_lo..kw_hi), read from a summed-area
// table of per-tap weight popcounts. Pad bits (channels >= C) are masked off the gathered
// activations, which keeps them out of popc(a) and popc(a & w), and off the table's counts.
#pragma once

#include <climits>
#include <cstdint>

#include "../common/conv_epilogue.h"
#include "../common/conv_shape.h"
#include "../common/packed_bits.h"
#include "device_math.h"

namespace hidiff::cuda {

// 32-bit sizes keep the index math in 32-bit registers; the glue checks that every size fits.
using ConvGeometry = common::ConvShape<int>;

// int32 elements of one channel's summed-area table of tap popcounts, and of all of them (the
// kernel's workspace).
HIDIFF_HOST_DEVICE HIDIFF_INLINE int sat_stride(const ConvGeometry& g) { return (g.KH + 1) * (g.KW + 1); }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int64_t sat_elements(const ConvGeometry& g) {
  return static_cast<int64_t>(g.O) * sat_stride(g);
}

// Kernel taps [lo, hi) along one axis whose input coordinate origin + k * dilation lies in [0, size).
struct TapRange {
  int lo, hi;
  HIDIFF_HOST_DEVICE HIDIFF_INLINE int count() const { return hi - lo; }
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE TapRange tap_range(int origin, int size, int dilation, int taps) {
  const int lo = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
  const int last = size - 1 - origin;  // the largest offset k * dilation still inside
  int hi = last >= 0 ? last / dilation + 1 : 0;
  hi = hi < taps ? hi : taps;
  return {lo < hi ? lo : hi, hi};
}

// Where output pixel m reads from: its batch item and the input coordinates of tap (0, 0).
struct OutputPixel {
  int64_t n;
  int rest;  // oh * Wo + ow: the offset of the pixel inside its NCHW output plane
  int ih0, iw0;
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE OutputPixel output_pixel(int64_t m, const ConvGeometry& g) {
  const int plane = g.out_h() * g.out_w();
  const int64_t n = m / plane;
  const int rest = static_cast<int>(m - n * plane);
  const int oh = rest / g.out_w();
  const int ow = rest - oh * g.out_w();
  return {n, rest, oh * g.stride_h - g.pad_h, ow * g.stride_w - g.pad_w};
}

// A gathered row of the left matrix: the activation base of the pixel's batch item and the tap
// origin; rows past the last pixel get an origin that no tap can bring inside the image.
struct GatherRow {
  int64_t x_offset;
  int ih0, iw0;
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE GatherRow gather_row(int64_t m, const ConvGeometry& g) {
  if (m >= g.pixels()) return {0, INT_MIN / 2, INT_MIN / 2};
  const OutputPixel p = output_pixel(m, g);
  return {p.n * g.H * g.W * g.words(), p.ih0, p.iw0};
}

// Reduction index k -> (kernel row, kernel column, word) and the mask of its valid bits
// (0 past the end of the reduction, which pads it to whole MMA steps).
struct ReductionIndex {
  int kh, kw, word;
  uint32_t mask;
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE ReductionIndex reduction_index(int k, const ConvGeometry& g) {
  if (k >= g.reduction_words()) return {0, 0, 0, 0u};
  const int words = g.words();
  const int tap = k / words;
  const int word = k - tap * words;
  const int kh = tap / g.KW;
  return {kh, tap - kh * g.KW, word, common::channel_mask(word, g.C)};
}

// Element (row, k) of the implicit im2col matrix: a masked activation word, 0 outside the image.
HIDIFF_HOST_DEVICE HIDIFF_INLINE uint32_t gather_activation(const uint32_t* x, const ConvGeometry& g,
                                                            const GatherRow& row, const ReductionIndex& r) {
  const int ih = row.ih0 + r.kh * g.dil_h;
  const int iw = row.iw0 + r.kw * g.dil_w;
  if (r.mask == 0u || ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0u;
  return x[row.x_offset + (static_cast<int64_t>(ih) * g.W + iw) * g.words() + r.word] & r.mask;
}

// Element (o, k) of the right matrix: a weight word, 0 past the last channel or the reduction end.
HIDIFF_HOST_DEVICE HIDIFF_INLINE uint32_t gather_weight(const uint32_t* w, const ConvGeometry& g, int o, int k,
                                                        const ReductionIndex& r) {
  if (o >= g.O || r.mask == 0u) return 0u;
  return w[static_cast<int64_t>(o) * g.reduction_words() + k];
}

// Summed-area table of the popcounts of channel o's weight taps:
//   sat[kh * (KW + 1) + kw] = sum of popc(w[o, i, j, :]) over i < kh, j < kw.
HIDIFF_HOST_DEVICE HIDIFF_INLINE void build_tap_sat(const uint32_t* w, const ConvGeometry& g, int o, int32_t* sat) {
  const int words = g.words();
  const int row = g.KW + 1;
  const uint32_t* wo = w + static_cast<int64_t>(o) * g.reduction_words();
  for (int kw = 0; kw <= g.KW; ++kw) sat[kw] = 0;
  for (int kh = 0; kh < g.KH; ++kh) {
    sat[(kh + 1) * row] = 0;
    for (int kw = 0; kw < g.KW; ++kw) {
      int ones = 0;
      for (int j = 0; j < words; ++j) {
        ones += popcount32(wo[(kh * g.KW + kw) * words + j] & common::channel_mask(j, g.C));
      }
      sat[(kh + 1) * row + kw + 1] = ones + sat[kh * row + kw + 1] + sat[(kh + 1) * row + kw] - sat[kh * row + kw];
    }
  }
}

// popc(w) of channel o summed over the taps of rows [rh.lo, rh.hi) x columns [rw.lo, rw.hi).
HIDIFF_HOST_DEVICE HIDIFF_INLINE int64_t sat_rectangle(const int32_t* sat, int KW, TapRange rh, TapRange rw) {
  const int row = KW + 1;
  return static_cast<int64_t>(sat[rh.hi * row + rw.hi]) - sat[rh.lo * row + rw.hi] - sat[rh.hi * row + rw.lo] +
         sat[rh.lo * row + rw.lo];
}

// The +-1 dot product over `valid_taps` taps of C channels from the three popcounts.
HIDIFF_HOST_DEVICE HIDIFF_INLINE int32_t pm1_dot(int valid_taps, int C, int64_t popc_a, int64_t popc_w,
                                                 int64_t popc_and) {
  const int64_t disagreements = popc_a + popc_w - 2 * popc_and;
  return static_cast<int32_t>(static_cast<int64_t>(valid_taps) * C - 2 * disagreements);
}

// Output value of (n, o) at NCHW index out_index, with the epilogue of every backend
// (csrc/common/conv_epilogue.h); the kernel reads the operands per element.
HIDIFF_HOST_DEVICE HIDIFF_INLINE float output_value(int32_t count, const common::ConvEpilogue& e, int64_t n, int o,
                                                    int O, int64_t out_index) {
  const common::EpilogueSteps steps = common::epilogue_steps(e);
  return common::epilogue_value(count, steps, common::channel_operands(e, steps, n, o, O),
                                steps.residual ? e.residual[out_index] : 0.0f);
}

// Fragments of mma.m16n8k256 with .b1 operands (PTX ISA, "Matrix Fragments for mma.m16n8k256"),
// in words of 32 k-elements: with g = lane / 4 and t = lane % 4,
//   A register r (0..3): row g + 8 * (r % 2), word t + 4 * (r / 2) of the 8-word (256-bit) step;
//   B register r (0..1): column g, word t + 4 * r;
//   accumulator r (0..3): row g + 8 * (r / 2), column 2 * t + r % 2.
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_a_row(int lane, int reg) { return lane / 4 + 8 * (reg % 2); }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_a_word(int lane, int reg) { return lane % 4 + 4 * (reg / 2); }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_b_col(int lane) { return lane / 4; }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_b_word(int lane, int reg) { return lane % 4 + 4 * reg; }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_c_row(int lane, int reg) { return lane / 4 + 8 * (reg / 2); }
HIDIFF_HOST_DEVICE HIDIFF_INLINE int mma_c_col(int lane, int reg) { return 2 * (lane % 4) + reg % 2; }

}  // namespace hidiff::cuda
