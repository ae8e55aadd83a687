// The data-independent part of a binary convolution (plan), the input rearrangement into word
// planes, the dispatch to the active instruction set, and a single-threaded entry point.
#include <algorithm>
#include <vector>

#include "binary_conv.h"
#include "cpu_features.h"
#include "isa_target.h"

namespace hidiff::core {

namespace {

int popcount_words_portable(const uint32_t* w, int64_t n) {
  int count = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = w[i];
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    count += static_cast<int>((((v + (v >> 4)) & 0x0f0f0f0fu) * 0x01010101u) >> 24);
  }
  return count;
}

#if defined(__x86_64__)
HIDIFF_TARGET_BEGIN("popcnt")
int popcount_words_hw(const uint32_t* w, int64_t n) {
  int count = 0;
  for (int64_t i = 0; i < n; ++i) count += __builtin_popcount(w[i]);
  return count;
}
HIDIFF_TARGET_END
#endif

// Popcount of n words with the POPCNT instruction when the CPU has it.
int popcount_words(const uint32_t* w, int64_t n) {
#if defined(__x86_64__)
  if (cpu_features().popcnt) return popcount_words_hw(w, n);
#endif
  return popcount_words_portable(w, n);
}

}  // namespace

ConvPlan make_conv_plan(const ConvShape& s, const uint32_t* w) {
  ConvPlan p;
  p.s = s;
  p.Ho = s.out_h();
  p.Wo = s.out_w();
  p.words = s.words();
  // Plane rows/columns reached by a valid output: oh + (kh * dil) / stride, and likewise for columns.
  const int64_t reach_h = (s.KH - 1) * s.dil_h / s.stride_h;
  const int64_t reach_w = (s.KW - 1) * s.dil_w / s.stride_w;
  p.Wq = p.Wo + reach_w;
  const int64_t grid = p.Ho * p.Wq;
  p.lanes = (grid + kLaneTile - 1) / kLaneTile * kLaneTile;
  // The last tile reads up to lane (lanes - 1) + reach_h * Wq + reach_w.
  p.plane = p.lanes + reach_h * p.Wq + reach_w;
  p.steps = s.reduction_words();

  p.step_offset.resize(p.steps);
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    const int64_t ph = kh * s.dil_h % s.stride_h, qh = kh * s.dil_h / s.stride_h;
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t pw = kw * s.dil_w % s.stride_w, qw = kw * s.dil_w / s.stride_w;
      for (int64_t j = 0; j < p.words; ++j) {
        const int64_t plane_index = (j * s.stride_h + ph) * s.stride_w + pw;
        p.step_offset[(kh * s.KW + kw) * p.words + j] = plane_index * p.plane + qh * p.Wq + qw;
      }
    }
  }

  p.row_valid.resize(p.Ho * s.KH);
  p.row_full.resize(p.Ho);
  for (int64_t oh = 0; oh < p.Ho; ++oh) {
    bool full = true;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
      const bool valid = ih >= 0 && ih < s.H;
      p.row_valid[oh * s.KH + kh] = valid;
      full = full && valid;
    }
    p.row_full[oh] = full;
  }
  p.col_valid.resize(p.Wo * s.KW);
  p.col_lo = p.col_hi = 0;
  bool seen = false;
  for (int64_t ow = 0; ow < p.Wo; ++ow) {
    bool full = true;
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
      const bool valid = iw >= 0 && iw < s.W;
      p.col_valid[ow * s.KW + kw] = valid;
      full = full && valid;
    }
    // Full columns form one contiguous range (the receptive field slides monotonically).
    if (full && !seen) p.col_lo = ow, seen = true;
    if (full) p.col_hi = ow + 1;
  }

  const int64_t taps = s.O * s.KH * s.KW;
  const uint32_t tail = common::last_word_mask(s.C);
  bool stray = false;
  for (int64_t t = 0; t < taps && !stray; ++t) stray = (w[t * p.words + p.words - 1] & ~tail) != 0;
  if (stray) {
    p.masked_weights.assign(w, w + taps * p.words);
    for (int64_t t = 0; t < taps; ++t) p.masked_weights[t * p.words + p.words - 1] &= tail;
  }
  const uint32_t* weights = p.weights(w);
  p.tap_popcount.resize(taps);
  for (int64_t t = 0; t < taps; ++t) p.tap_popcount[t] = popcount_words(weights + t * p.words, p.words);
  return p;
}

void conv_prepare_input(const ConvPlan& p, const uint32_t* x, uint32_t* planes, int64_t row_begin, int64_t row_end) {
  const ConvShape& s = p.s;
  const uint32_t tail = common::last_word_mask(s.C);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t n = r / s.H, ih = r % s.H;
    const int64_t iph = ih + s.pad_h, ph = iph % s.stride_h, qh = iph / s.stride_h;
    if (qh * p.Wq >= p.plane) continue;  // no output reads this row
    uint32_t* sample = planes + n * p.planes_per_sample() * p.plane;
    for (int64_t iw = 0; iw < s.W; ++iw) {
      const int64_t ipw = iw + s.pad_w, pw = ipw % s.stride_w, qw = ipw / s.stride_w;
      if (qw >= p.Wq) continue;
      const int64_t at = qh * p.Wq + qw;
      if (at >= p.plane) continue;
      const uint32_t* src = x + (r * s.W + iw) * p.words;
      for (int64_t j = 0; j < p.words; ++j) {
        const uint32_t word = j + 1 == p.words ? src[j] & tail : src[j];
        sample[((j * s.stride_h + ph) * s.stride_w + pw) * p.plane + at] = word;
      }
    }
  }
}

void conv_tiles(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w, const ConvEpilogue& epilogue,
                float* out, int64_t tile_begin, int64_t tile_end) {
  const uint32_t* weights = plan.weights(w);
  switch (active_isa()) {
    case Isa::Avx512:
      conv_tiles_avx512(plan, planes, weights, epilogue, out, tile_begin, tile_end);
      return;
    case Isa::Avx2:
      conv_tiles_avx2(plan, planes, weights, epilogue, out, tile_begin, tile_end);
      return;
    case Isa::Portable:
      conv_tiles_portable(plan, planes, weights, epilogue, out, tile_begin, tile_end);
      return;
  }
}

void binary_conv2d(const ConvShape& s, const uint32_t* x, const uint32_t* w, const ConvEpilogue& epilogue,
                   float* out) {
  const ConvPlan plan = make_conv_plan(s, w);
  std::vector<uint32_t> planes(plan.scratch_words(), 0u);
  conv_prepare_input(plan, x, planes.data(), 0, s.N * s.H);
  conv_tiles(plan, planes.data(), w, epilogue, out, 0, plan.num_tiles());
}

}  // namespace hidiff::core
