// XNOR-popcount 2-D convolution on bit-packed operands with a fused epilogue (torch-free).
//
// Operands use the layout of bitpack.h: activations (N, H, W, words), weights (O, KH, KW, words),
// words = ceil(C / 32). For every output the kernel counts the disagreeing bits D over the taps
// inside the image and computes taps * C - 2 * D, which is exactly conv2d(sign(x), sign(w)) with
// zero padding, then the epilogue of csrc/common/conv_epilogue.h: * scale + bias, + residual,
// TA (paper Eq. 16) and optionally the next layer's binarisation and packing.
//
// How it runs: output pixels sit in the SIMD lanes. The packed input is first rearranged into
// zero-padded word planes, one plane per (word, row phase, column phase) of the stride, whose rows
// have a common pitch Wq. Output (oh, ow) is lane m = oh * Wq + ow, and every tap (kh, kw) then
// reads lane m + shift(kh, kw) of one plane: the whole convolution is a sequence of K = KH*KW*words
// steps "load a vector of lanes, XOR with one broadcast weight word, popcount, add", with no
// per-pixel index work, for any stride, dilation and padding. The micro-kernel keeps P vectors of
// lanes x Q output channels of counts in registers. Padded taps read zero words, which counts
// popcount(weight word) disagreements; lanes near the border subtract exactly that (popcounts of
// the weight taps are precomputed), so the correction costs nothing in the interior. Lanes with
// ow >= Wo are computed and dropped.
//
// Weights are used in their packed (O, KH, KW, words) layout: one output channel's K words are
// contiguous in step order, which is the order the broadcasts read them.
#pragma once

#include <cstdint>
#include <vector>

// The per-ISA sources include this header before their target pragma, so the inline functions of
// the shared headers are compiled for the baseline instruction set in every source (see
// conv_driver.h for why that matters).
#include "../common/conv_epilogue.h"
#include "../common/conv_shape.h"
#include "../common/packed_bits.h"

namespace hidiff::core {

// The CPU kernels index with 64-bit sizes throughout.
using ConvShape = common::ConvShape<int64_t>;
using common::ConvEpilogue;

// Output channels of one tile (two packed words, so a tile packs whole words of its output).
constexpr int64_t kChannelTile = 64;
// Lanes (output pixels, row pitch Wq) of one tile; a multiple of every micro-kernel's block.
constexpr int64_t kLaneTile = 384;

// Everything about one call that does not depend on the data: plane geometry, the lane shift of
// every step, which taps each output row/column keeps, and the popcount of each weight tap.
struct ConvPlan {
  ConvShape s;
  int64_t Ho, Wo, words;
  int64_t Wq;          // row pitch of the planes and of the lane grid
  int64_t plane;       // words per plane (rows * Wq plus the slack read by the last tile)
  int64_t lanes;       // Ho * Wq rounded up to kLaneTile
  int64_t steps;       // K = KH * KW * words
  int64_t col_lo, col_hi;            // output columns whose taps are all inside the image
  std::vector<int64_t> step_offset;  // K: plane and lane shift of each step, in words
  std::vector<uint8_t> row_valid;    // Ho * KH: kernel row kh is inside the image for output row oh
  std::vector<uint8_t> col_valid;    // Wo * KW: kernel column kw is inside for output column ow
  std::vector<uint8_t> row_full;     // Ho: every kernel row inside
  std::vector<int32_t> tap_popcount; // O * KH * KW: set bits of each weight tap
  // The weights with the unused high bits of every tap's last word cleared, when the caller's had any set (else
  // empty, and the caller's weights are used as they are). Stray bits would count as disagreements.
  std::vector<uint32_t> masked_weights;

  // The weights the tiles read: masked_weights if the plan made them, else w.
  const uint32_t* weights(const uint32_t* w) const { return masked_weights.empty() ? w : masked_weights.data(); }

  int64_t planes_per_sample() const { return words * s.stride_h * s.stride_w; }
  // Words of the rearranged input (N planes sets), to be allocated zero-filled by the caller.
  int64_t scratch_words() const { return s.N * planes_per_sample() * plane; }
  int64_t num_tiles() const { return s.N * (lanes / kLaneTile) * ((s.O + kChannelTile - 1) / kChannelTile); }
};

// Builds the plan; w is the packed weight (O, KH, KW, words).
ConvPlan make_conv_plan(const ConvShape& s, const uint32_t* w);

// Copies input rows [row_begin, row_end) of the (N * H) rows of x into the zero-filled planes,
// clearing the unused high bits of each pixel's last word.
void conv_prepare_input(const ConvPlan& plan, const uint32_t* x, uint32_t* planes, int64_t row_begin,
                        int64_t row_end);

// Computes tiles [tile_begin, tile_end) with the active instruction set (cpu_features.h).
//   planes: from conv_prepare_input; w: packed weights (O, KH, KW, words)
//   out: (N, O, Ho, Wo) float32
void conv_tiles(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w, const ConvEpilogue& epilogue,
                float* out, int64_t tile_begin, int64_t tile_end);

// The per-instruction-set entry points behind conv_tiles (same contract).
void conv_tiles_portable(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w,
                         const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end);
void conv_tiles_avx2(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w, const ConvEpilogue& epilogue,
                     float* out, int64_t tile_begin, int64_t tile_end);
void conv_tiles_avx512(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w,
                       const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end);

// The whole convolution on the calling thread (tests and small callers).
void binary_conv2d(const ConvShape& s, const uint32_t* x, const uint32_t* w, const ConvEpilogue& epilogue,
                   float* out);

}  // namespace hidiff::core
