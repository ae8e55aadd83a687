// The tile loop and the epilogue shared by every instruction set (see binary_conv.h).
//
// Included by each per-ISA source after its target pragma. Everything here sits in an anonymous
// namespace, so each source gets its own copy compiled for its own instruction set: an inline
// function shared by name between an AVX-512 and a portable source could otherwise be merged by
// the linker into one AVX-512 copy, which would crash the portable path on older CPUs.
//
// The shared headers used here (csrc/common) come in through binary_conv.h, which every per-ISA
// source includes before its target pragma: their inline functions are thus baseline code in
// every source, and inlining them into the ISA-specific loops is always allowed.
//
// A Kernel provides kLanes (lanes of one block, a divisor of kLaneTile) in kVectors vectors,
// kChannels (Q) and
//   template <int Q, int P> static void run(const uint32_t* x, const int64_t* offsets, const uint32_t* w,
//                                           int64_t steps, int32_t* D);
// which sets D[q * kLanes + i] = sum over k < steps of popcount(x[offsets[k] + i] ^ w[q * steps + k])
// for the lanes i of the block's first P vectors: the disagreeing bits of those pixels against Q
// output channels. P < kVectors serves the last block of a small map, whose later vectors would
// only hold lanes past the grid.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "binary_conv.h"

namespace hidiff::core::detail {
namespace {

struct Tile {
  const ConvPlan* plan;
  const ConvEpilogue* ep;
  const ConvWeights* weights;
  float* out;
  int64_t n;
  int64_t o_begin, m_begin;  // first channel and lane of the tile
  // When packing: the binarised outputs of the tile's lanes, packed_bits[(o - o_begin) / 32 *
  // kLaneTile + lane - m_begin], filled by the epilogue and written out by pack_outputs.
  uint32_t* packed_bits;
};

// Set bits of every weight tap, tap-major: tap_popcount[(kh * KW + kw) * O + o].
inline void tap_popcount(const ConvPlan& p, const uint32_t* w, int32_t* tap_popcount) {
  const int64_t taps = p.s.KH * p.s.KW;
  for (int64_t o = 0; o < p.s.O; ++o) {
    for (int64_t t = 0; t < taps; ++t) {
      const uint32_t* words = w + (o * taps + t) * p.words;
      int32_t count = 0;
      for (int64_t j = 0; j < p.words; ++j) count += __builtin_popcount(words[j]);
      tap_popcount[t * p.s.O + o] = count;
    }
  }
}

// Which optional epilogue steps a call has, as the bits of a template argument: the epilogue loop
// then has no branches and vectorises.
enum EpilogueStep : int { kScale = 1, kBias = 2, kResidual = 4, kActivation = 8, kAllSteps = 16 };

inline int epilogue_step_bits(const ConvEpilogue& ep) {
  const common::EpilogueSteps steps = common::epilogue_steps(ep);
  return (steps.scale ? kScale : 0) | (steps.bias ? kBias : 0) | (steps.residual ? kResidual : 0) |
         (steps.activation ? kActivation : 0);
}

// The steps of a template argument, as the compile-time constant that common::epilogue_value() folds.
constexpr common::EpilogueSteps steps_of_bits(int bits) {
  return {(bits & kScale) != 0, (bits & kBias) != 0, (bits & kResidual) != 0, (bits & kActivation) != 0};
}

// A run of valid outputs: row oh, columns [ow_begin, ow_end), starting at lane first.
struct Run {
  int64_t oh, ow_begin, ow_end, first;
};

// Calls fn(oh, ow_begin, ow_end, first_lane) for the runs of valid outputs among lanes [m_begin, m_end).
template <class Fn>
inline void for_each_run(const ConvPlan& p, int64_t m_begin, int64_t m_end, Fn&& fn) {
  m_end = std::min(m_end, p.Ho * p.Wq);
  int64_t m = m_begin;
  while (m < m_end) {
    const int64_t oh = m / p.Wq, ow = m % p.Wq;
    if (ow >= p.Wo) {
      m = (oh + 1) * p.Wq;
      continue;
    }
    const int64_t ow_end = std::min(p.Wo, ow + (m_end - m));
    fn(oh, ow, ow_end, m);
    m += ow_end - ow;
  }
}

// Writes the packed words of the tile's valid outputs from t.packed_bits (channels [o_begin, o_end),
// whole packed words, lanes [m_begin, m_end)).
inline void pack_outputs(const Tile& t, int64_t o_end, int64_t m_end) {
  const ConvPlan& p = *t.plan;
  const int64_t out_words = common::packed_words(p.s.O);
  for_each_run(p, t.m_begin, m_end, [&](int64_t oh, int64_t ow_begin, int64_t ow_end, int64_t first) {
    uint32_t* dst = t.ep->packed + ((t.n * p.Ho + oh) * p.Wo + ow_begin) * out_words;
    for (int64_t j = t.o_begin / 32; j * 32 < o_end; ++j) {
      const uint32_t* bits = t.packed_bits + (j - t.o_begin / 32) * kLaneTile + (first - t.m_begin);
      for (int64_t i = 0; i < ow_end - ow_begin; ++i) dst[i * out_words + j] = bits[i];
    }
  });
}

// The outputs of channel o at the block's `kUsed` lanes from m, from their disagreement counts D
// (lane order), in one pass: count, * scale, + bias, + residual, TA, in the reference's float32
// order. Every lane is computed at once in a fixed-length loop that vectorises without remainder,
// lanes that are not outputs included (they are dropped); then each run of valid outputs is copied
// to its row. Small maps have runs of a few outputs, and a pass per run cost as much as the
// popcounts at 512->512 8x8.
template <int kSteps, int64_t kUsed>
inline void finish_block(const Tile& t, const int32_t* D, int64_t m, int64_t o, const Run* runs, int nruns) {
  const ConvPlan& p = *t.plan;
  const ConvEpilogue& ep = *t.ep;
  constexpr common::EpilogueSteps steps = steps_of_bits(kSteps);
  alignas(64) int32_t count[kUsed];
  const int32_t full = static_cast<int32_t>(p.s.KH * p.s.KW * p.s.C);
  for (int64_t i = 0; i < kUsed; ++i) count[i] = full - 2 * D[i];
  // Border outputs: the taps inside and the spurious disagreements of the outside ones by class.
  const int32_t* spurious = t.weights->spurious.data() + o;
  alignas(64) float residual[steps.residual ? kUsed : 1];
  if constexpr (steps.residual) std::fill(residual, residual + kUsed, 0.f);
  for (int r = 0; r < nruns; ++r) {
    const Run& run = runs[r];
    int32_t* run_count = count + (run.first - m) - run.ow_begin;  // indexed by ow
    int64_t lo = run.ow_end, hi = run.ow_end;                      // interior columns [lo, hi)
    if (p.row_full[run.oh]) {
      lo = std::clamp(p.col_lo, run.ow_begin, run.ow_end);
      hi = std::clamp(p.col_hi, lo, run.ow_end);
    }
    const int64_t row_class = p.row_class[run.oh] * p.col_classes;
    const auto border = [&](int64_t ow) {
      const int64_t c = row_class + p.col_class[ow];
      run_count[ow] = p.class_inside[c] - 2 * (D[(run.first - m) + (ow - run.ow_begin)] - spurious[c * p.s.O]);
    };
    for (int64_t ow = run.ow_begin; ow < lo; ++ow) border(ow);
    for (int64_t ow = hi; ow < run.ow_end; ++ow) border(ow);
    if constexpr (steps.residual) {
      const int64_t row = ((t.n * p.s.O + o) * p.Ho + run.oh) * p.Wo + run.ow_begin;
      std::copy_n(ep.residual + row, run.ow_end - run.ow_begin, residual + (run.first - m));
    }
  }
  const common::ChannelOperands operands = common::channel_operands(ep, steps, t.n, o, p.s.O);
  alignas(64) float value[kUsed];
  for (int64_t i = 0; i < kUsed; ++i) {
    value[i] = common::epilogue_value(count[i], steps, operands, steps.residual ? residual[i] : 0.f);
  }
  for (int r = 0; r < nruns; ++r) {
    const Run& run = runs[r];
    const int64_t row = ((t.n * p.s.O + o) * p.Ho + run.oh) * p.Wo + run.ow_begin;
    std::copy_n(value + (run.first - m), run.ow_end - run.ow_begin, t.out + row);
  }
  // The next layer's binarisation, while the values are at hand (lanes that are not outputs too,
  // never written out).
  if (t.packed_bits) {
    const float threshold = common::output_threshold(ep, t.n, o);
    const uint32_t shift = static_cast<uint32_t>((o - t.o_begin) % 32);
    uint32_t* bits = t.packed_bits + (o - t.o_begin) / 32 * kLaneTile + (m - t.m_begin);
    for (int64_t i = 0; i < kUsed; ++i) bits[i] |= static_cast<uint32_t>(common::packed_bit(value[i], threshold)) << shift;
  }
}

template <class Kernel, int kSteps, int Q, int P>
inline void run_block(const Tile& t, const uint32_t* x, int64_t m, int64_t o, const Run* runs, int nruns) {
  constexpr int64_t L = Kernel::kLanes;
  const ConvPlan& p = *t.plan;
  alignas(64) int32_t D[Q * L];
  // The output (and residual) lines the block's epilogue will touch, requested before the
  // popcounts so that they arrive while those run: written on arrival, a block's Q channel rows
  // (a plane apart) waited for memory about as long as the popcounts took at 128->128 256x256.
  for (int q = 0; q < Q; ++q) {
    for (int r = 0; r < nruns; ++r) {
      const int64_t row = ((t.n * p.s.O + o + q) * p.Ho + runs[r].oh) * p.Wo;
      for (int64_t ow = runs[r].ow_begin; ow < runs[r].ow_end + 16; ow += 16) {
        const int64_t at = row + std::min(ow, runs[r].ow_end - 1);
        __builtin_prefetch(t.out + at, 1);
        if (t.ep->residual) __builtin_prefetch(t.ep->residual + at, 0);
      }
    }
  }
  Kernel::template run<Q, P>(x + m, p.step_offset.data(), t.weights->weights + o * p.steps, p.steps, D);
  for (int q = 0; q < Q; ++q) finish_block<kSteps, L / Kernel::kVectors * P>(t, D + q * L, m, o + q, runs, nruns);
}

// run_block with the first `vectors` lane vectors of the block (at least one, at most P).
template <class Kernel, int kSteps, int Q, int P = Kernel::kVectors>
inline void run_block_vectors(const Tile& t, const uint32_t* x, int64_t m, int64_t o, const Run* runs, int nruns,
                              int64_t vectors) {
  if constexpr (P > 1) {
    if (vectors < P) return run_block_vectors<Kernel, kSteps, Q, P - 1>(t, x, m, o, runs, nruns, vectors);
  }
  run_block<Kernel, kSteps, Q, P>(t, x, m, o, runs, nruns);
}

template <class Kernel, int kSteps>
void conv_tiles_with(const ConvPlan& p, const ConvWeights& w, const uint32_t* planes, const ConvEpilogue& ep,
                     float* out, int64_t tile_begin, int64_t tile_end) {
  constexpr int Q = Kernel::kChannels;
  const int64_t channel_tiles = (p.s.O + kChannelTile - 1) / kChannelTile;
  const int64_t lane_tiles = p.lanes / kLaneTile;
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t ct = tile % channel_tiles;
    const int64_t lt = (tile / channel_tiles) % lane_tiles;
    const int64_t n = tile / (channel_tiles * lane_tiles);
    const int64_t o_begin = ct * kChannelTile, o_end = std::min(p.s.O, o_begin + kChannelTile);
    const int64_t m_begin = lt * kLaneTile, m_end = m_begin + kLaneTile;
    alignas(64) uint32_t packed_bits[kChannelTile / 32 * kLaneTile];
    if (ep.packed) std::fill(packed_bits, packed_bits + kChannelTile / 32 * kLaneTile, 0u);
    const Tile t{&p, &ep, &w, out, n, o_begin, m_begin, ep.packed ? packed_bits : nullptr};
    const uint32_t* x = planes + n * p.planes_per_sample() * p.plane;
    // The runs of every lane block of the tile (each lane starts at most one run).
    constexpr int64_t kBlocks = kLaneTile / Kernel::kLanes;
    // The lane vectors a block needs: up to its last valid lane.
    constexpr int64_t kVectorLanes = Kernel::kLanes / Kernel::kVectors;
    Run runs[kBlocks][Kernel::kLanes];
    int nruns[kBlocks];
    int64_t vectors[kBlocks];
    int64_t blocks = 0;
    for (int64_t m = m_begin; m < m_end && m < p.Ho * p.Wq; m += Kernel::kLanes, ++blocks) {
      nruns[blocks] = 0;
      int64_t used = 0;
      for_each_run(p, m, m + Kernel::kLanes, [&](int64_t oh, int64_t ow_begin, int64_t ow_end, int64_t first) {
        runs[blocks][nruns[blocks]++] = Run{oh, ow_begin, ow_end, first};
        used = first + (ow_end - ow_begin) - m;
      });
      vectors[blocks] = (used + kVectorLanes - 1) / kVectorLanes;
    }
    // Channel groups outside, lane blocks inside: the outputs (and residuals) of a group are then
    // written (read) as a few sequential streams that the hardware prefetches, while the tile's
    // input planes stay in L1 across the groups.
    const auto sweep = [&](auto channels, int64_t o) {
      constexpr int kGroup = decltype(channels)::value;
      for (int64_t b = 0; b < blocks; ++b) {
        run_block_vectors<Kernel, kSteps, kGroup>(t, x, m_begin + b * Kernel::kLanes, o, runs[b], nruns[b],
                                                  vectors[b]);
      }
    };
    int64_t o = o_begin;
    for (; o + Q <= o_end; o += Q) sweep(std::integral_constant<int, Q>{}, o);
    // Leftover channels of the tile: blocks of 4 keep most of the register blocking.
    if constexpr (Q > 4) {
      for (; o + 4 <= o_end; o += 4) sweep(std::integral_constant<int, 4>{}, o);
    }
    for (; o < o_end; ++o) sweep(std::integral_constant<int, 1>{}, o);
    if (ep.packed) pack_outputs(t, o_end, m_end);
  }
}

// Runs conv_tiles_with for the epilogue steps of ep (one instantiation per combination).
template <class Kernel, int kSteps = 0>
void conv_tiles(const ConvPlan& p, const ConvWeights& w, const uint32_t* planes, const ConvEpilogue& ep, float* out,
                int64_t tile_begin, int64_t tile_end) {
  if constexpr (kSteps < kAllSteps) {
    if (epilogue_step_bits(ep) == kSteps) {
      return conv_tiles_with<Kernel, kSteps>(p, w, planes, ep, out, tile_begin, tile_end);
    }
    conv_tiles<Kernel, kSteps + 1>(p, w, planes, ep, out, tile_begin, tile_end);
  }
}

}  // namespace
}  // namespace hidiff::core::detail

// Defines the entry points conv_tap_popcount_<isa> and conv_tiles_<isa> of binary_conv.h with this
// source's instruction set and micro-kernel (inside namespace hidiff::core).
#define HIDIFF_DEFINE_CONV_ENTRY_POINTS(isa, Kernel)                                                          \
  void conv_tap_popcount_##isa(const ConvPlan& plan, const uint32_t* w, int32_t* tap_popcount) {              \
    detail::tap_popcount(plan, w, tap_popcount);                                                             \
  }                                                                                                          \
  void conv_tiles_##isa(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,             \
                        const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end) {    \
    detail::conv_tiles<Kernel>(plan, weights, planes, epilogue, out, tile_begin, tile_end);                   \
  }
