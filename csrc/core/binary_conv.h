// XNOR-popcount 2-D convolution on bit-packed operands (torch-free).
//
// Operands use the layout of bitpack.h: activations (N, H, W, words), weights (O, KH, KW, words),
// words = ceil(C / 32). For every output the kernel counts the disagreeing bits D over the taps
// that fall inside the image and returns taps * C - 2 * D, which is exactly
// conv2d(sign(x), sign(w)) with zero padding: a padded tap is skipped, so it contributes 0.
// Padded taps are only possible near the border, so interior pixels run a branch-free loop over
// contiguous spans of (kernel width x words) words and pay nothing for the correction.
#pragma once

#include <cstdint>

namespace hidiff::core {

struct ConvShape {
  int64_t N, H, W, C;  // input batch, height, width, logical channels
  int64_t O, KH, KW;   // output channels, kernel height, kernel width
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;

  int64_t words() const { return (C + 31) / 32; }
  int64_t out_h() const { return (H + 2 * pad_h - dil_h * (KH - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (W + 2 * pad_w - dil_w * (KW - 1) - 1) / stride_w + 1; }
};

// Output channels computed by one tile: their packed weights stay in L1/L2 while the tile
// sweeps an output row.
constexpr int64_t kChannelTile = 64;

// Work is split into tiles of (one output row, up to kChannelTile output channels) so that a
// batch-1 convolution still has N * Ho * ceil(O / kChannelTile) independent pieces for threads.
inline int64_t binary_conv2d_num_tiles(const ConvShape& s) {
  return s.N * s.out_h() * ((s.O + kChannelTile - 1) / kChannelTile);
}

// Computes tiles [tile_begin, tile_end) with the active instruction set (cpu_features.h).
//   x:     packed activations (N, H, W, words)
//   w:     packed weights (O, KH, KW, words)
//   scale: nullptr or (O,) float, bias: nullptr or (O,) float
//   out:   (N, O, Ho, Wo) float32, out = count * scale + bias
void binary_conv2d_tiles(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                         const float* bias, float* out, int64_t tile_begin, int64_t tile_end);

// The per-instruction-set entry points behind binary_conv2d_tiles (same contract).
void binary_conv2d_tiles_portable(const ConvShape& s, const uint32_t* x, const uint32_t* w,
                                  const float* scale, const float* bias, float* out, int64_t tile_begin,
                                  int64_t tile_end);
void binary_conv2d_tiles_avx2(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                              const float* bias, float* out, int64_t tile_begin, int64_t tile_end);
void binary_conv2d_tiles_avx512(const ConvShape& s, const uint32_t* x, const uint32_t* w,
                                const float* scale, const float* bias, float* out, int64_t tile_begin,
                                int64_t tile_end);

}  // namespace hidiff::core
