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
// popcount(weight word) disagreements; lanes near the border subtract exactly that. Which taps an
// output keeps depends only on its row's and column's border class (3 x 3 classes for a 3x3 kernel
// with padding 1), so the correction is one table entry per (class, channel), summed from the
// weight taps' popcounts once per call: nothing in the interior, a lookup at the border. Lanes
// with ow >= Wo are computed and dropped.
//
// Weights are used in their packed (O, KH, KW, words) layout: one output channel's K words are
// contiguous in step order, which is the order the broadcasts read them.
#pragma once

#include <cstdint>
#include <memory>
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

// Everything about one call that depends on its shape only: plane geometry, the lane shift of
// every step, and which taps each output row/column keeps. Built once per shape (conv_plan_for).
struct ConvPlan {
  ConvShape s;
  int64_t Ho, Wo, words;
  int64_t Wq;                        // row pitch of the planes and of the lane grid
  int64_t plane;                     // words per plane (rows * Wq plus the slack read by the last tile)
  int64_t lanes;                     // Ho * Wq rounded up to kLaneTile
  int64_t steps;                     // K = KH * KW * words
  int64_t col_lo, col_hi;            // output columns whose taps are all inside the image
  std::vector<int64_t> step_offset;  // K: plane and lane shift of each step, in words
  std::vector<uint8_t> row_full;     // Ho: every kernel row inside
  // Border classes: outputs whose rows keep the same kernel rows share a row class, likewise for
  // columns, so the taps an output keeps depend on (row class, column class) alone.
  int64_t row_classes, col_classes;
  std::vector<int32_t> row_class;        // Ho
  std::vector<int32_t> col_class;        // Wo
  std::vector<uint8_t> class_row_valid;  // row_classes * KH: kernel row kh is inside for that class
  std::vector<uint8_t> class_col_valid;  // col_classes * KW
  std::vector<int32_t> class_inside;     // classes: (taps inside) * C

  int64_t classes() const { return row_classes * col_classes; }
  int64_t planes_per_sample() const { return words * s.stride_h * s.stride_w; }
  // Words of the rearranged input (N planes sets), to be allocated zero-filled by the caller.
  int64_t scratch_words() const { return s.N * planes_per_sample() * plane; }
  int64_t num_tiles() const { return s.N * (lanes / kLaneTile) * ((s.O + kChannelTile - 1) / kChannelTile); }
};

// Builds the plan of a shape.
ConvPlan make_conv_plan(const ConvShape& s);

// The plan of a shape from a process-wide cache (built on first use): a network calls the same
// few shapes over and over, and a plan costs more than a small layer's convolution to build.
// Safe to call from any thread; the plan stays valid while the returned pointer is held.
std::shared_ptr<const ConvPlan> conv_plan_for(const ConvShape& s);

// What a call needs from the weights besides the words themselves.
//   weights: the packed weights the tiles read: the caller's, or `masked` when they had stray bits
//   spurious[c * O + o]: the set bits of output channel o's taps outside the image at border class c
//     (row class * col_classes + column class): the zero input words read for them count that many
//     disagreements, so the output's count is class_inside[c] - 2 * (D - spurious).
// The buffers only grow, so one ConvWeights reused across calls allocates once per size.
struct ConvWeights {
  const uint32_t* weights = nullptr;
  std::vector<uint32_t> masked;
  std::vector<int32_t> spurious;
  std::vector<int32_t> tap_popcount;  // KH * KW * O, tap-major (scratch of conv_prepare_weights)
};

// Fills `out` for packed weights w (O, KH, KW, words), on the active instruction set: stray bits
// above channel C in a tap's last word would count as disagreements, so such weights are masked.
void conv_prepare_weights(const ConvPlan& plan, const uint32_t* w, ConvWeights& out);

// Copies input rows [row_begin, row_end) of the (N * H) rows of x into the zero-filled planes,
// clearing the unused high bits of each pixel's last word.
void conv_prepare_input(const ConvPlan& plan, const uint32_t* x, uint32_t* planes, int64_t row_begin,
                        int64_t row_end);

// Computes tiles [tile_begin, tile_end) with the active instruction set (cpu_features.h).
//   planes: from conv_prepare_input; weights: from conv_prepare_weights
//   out: (N, O, Ho, Wo) float32
void conv_tiles(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,
                const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end);

// The per-instruction-set entry points behind conv_prepare_weights and conv_tiles (same contracts).
#define HIDIFF_CONV_ENTRY_POINTS(isa)                                                                      \
  void conv_tap_popcount_##isa(const ConvPlan& plan, const uint32_t* w, int32_t* tap_popcount);          \
  void conv_tiles_##isa(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,         \
                        const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end);
HIDIFF_CONV_ENTRY_POINTS(portable)
HIDIFF_CONV_ENTRY_POINTS(avx2)
HIDIFF_CONV_ENTRY_POINTS(avx512)
#undef HIDIFF_CONV_ENTRY_POINTS

// The whole convolution on the calling thread (tests and small callers).
void binary_conv2d(const ConvShape& s, const uint32_t* x, const uint32_t* w, const ConvEpilogue& epilogue,
                   float* out);

}  // namespace hidiff::core
