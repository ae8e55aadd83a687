// The shape-dependent part of a binary convolution (plan) and its cache, the weight-dependent part,
// the input rearrangement into word planes, the dispatch to the active instruction set, and a
// single-threaded entry point.
#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "binary_conv.h"
#include "cpu_features.h"

namespace hidiff::core {

namespace {

// Which kernel taps along one axis stay inside the input for each output position, and the class
// of each position (positions keeping the same taps share one). The kept taps form an interval that
// slides monotonically with the position, so equal patterns are contiguous and a new class starts
// where the pattern changes.
struct AxisTaps {
  std::vector<int32_t> cls;    // outputs
  std::vector<uint8_t> valid;  // classes * taps
  std::vector<uint8_t> full;   // outputs: every tap inside
  int64_t classes = 0;
};

AxisTaps axis_taps(int64_t outputs, int64_t taps, int64_t size, int64_t stride, int64_t pad, int64_t dil) {
  AxisTaps a;
  a.cls.resize(outputs);
  a.full.resize(outputs);
  std::vector<uint8_t> pattern(taps);
  for (int64_t o = 0; o < outputs; ++o) {
    bool full = true;
    for (int64_t k = 0; k < taps; ++k) {
      const int64_t i = o * stride - pad + k * dil;
      pattern[k] = i >= 0 && i < size;
      full = full && pattern[k];
    }
    a.full[o] = full;
    if (a.classes == 0 || !std::equal(pattern.begin(), pattern.end(), a.valid.end() - taps)) {
      a.valid.insert(a.valid.end(), pattern.begin(), pattern.end());
      ++a.classes;
    }
    a.cls[o] = static_cast<int32_t>(a.classes - 1);
  }
  return a;
}

// The fields of a shape, as a cache key.
std::array<int64_t, 13> shape_key(const ConvShape& s) {
  return {s.N, s.H, s.W, s.C, s.O, s.KH, s.KW, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
}

// Plans kept by conv_plan_for; beyond this many shapes the cache starts over (a network has a few
// dozen layer shapes, a test sweep many more that are each used a few times).
constexpr size_t kMaxCachedPlans = 256;

}  // namespace

ConvPlan make_conv_plan(const ConvShape& s) {
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

  AxisTaps rows = axis_taps(p.Ho, s.KH, s.H, s.stride_h, s.pad_h, s.dil_h);
  AxisTaps cols = axis_taps(p.Wo, s.KW, s.W, s.stride_w, s.pad_w, s.dil_w);
  p.row_full = std::move(rows.full);
  p.row_class = std::move(rows.cls);
  p.class_row_valid = std::move(rows.valid);
  p.row_classes = rows.classes;
  p.col_class = std::move(cols.cls);
  p.class_col_valid = std::move(cols.valid);
  p.col_classes = cols.classes;
  // Full columns form one contiguous range (the receptive field slides monotonically).
  const auto first_full = std::find(cols.full.begin(), cols.full.end(), uint8_t{1});
  const auto last_full = std::find(cols.full.rbegin(), cols.full.rend(), uint8_t{1});
  p.col_lo = first_full - cols.full.begin();
  p.col_hi = first_full == cols.full.end() ? p.col_lo : cols.full.rend() - last_full;
  p.class_inside.resize(p.classes());
  for (int64_t c = 0; c < p.classes(); ++c) {
    const int64_t rc = c / p.col_classes, cc = c % p.col_classes;
    const auto kept_rows = std::count(&p.class_row_valid[rc * s.KH], &p.class_row_valid[rc * s.KH] + s.KH, 1);
    const auto kept_cols = std::count(&p.class_col_valid[cc * s.KW], &p.class_col_valid[cc * s.KW] + s.KW, 1);
    p.class_inside[c] = static_cast<int32_t>(kept_rows * kept_cols * s.C);
  }
  return p;
}

std::shared_ptr<const ConvPlan> conv_plan_for(const ConvShape& s) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 13>, std::shared_ptr<const ConvPlan>> cache;
  const auto key = shape_key(s);
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto plan = std::make_shared<const ConvPlan>(make_conv_plan(s));
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= kMaxCachedPlans) cache.clear();
  return cache.emplace(key, std::move(plan)).first->second;
}

void conv_prepare_weights(const ConvPlan& p, const uint32_t* w, ConvWeights& out) {
  const ConvShape& s = p.s;
  const int64_t taps = s.KH * s.KW, O = s.O;
  const uint32_t tail = common::last_word_mask(s.C);
  bool stray = false;
  if (tail != ~0u) {
    for (int64_t t = 0; t < O * taps && !stray; ++t) stray = (w[t * p.words + p.words - 1] & ~tail) != 0;
  }
  out.weights = w;
  if (stray) {
    out.masked.assign(w, w + O * taps * p.words);
    for (int64_t t = 0; t < O * taps; ++t) out.masked[t * p.words + p.words - 1] &= tail;
    out.weights = out.masked.data();
  }
  if (out.tap_popcount.size() < static_cast<size_t>(taps * O)) out.tap_popcount.resize(taps * O);
  int32_t* pop = out.tap_popcount.data();
  switch (active_isa()) {
    case Isa::Avx512:
      conv_tap_popcount_avx512(p, out.weights, pop);
      break;
    case Isa::Avx2:
      conv_tap_popcount_avx2(p, out.weights, pop);
      break;
    case Isa::Portable:
      conv_tap_popcount_portable(p, out.weights, pop);
      break;
  }
  // Set bits of each class's outside taps, channels innermost so the sums vectorise.
  if (out.spurious.size() < static_cast<size_t>(p.classes() * O)) out.spurious.resize(p.classes() * O);
  for (int64_t c = 0; c < p.classes(); ++c) {
    const int64_t rc = c / p.col_classes, cc = c % p.col_classes;
    int32_t* spurious = out.spurious.data() + c * O;
    std::fill(spurious, spurious + O, 0);
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        if (p.class_row_valid[rc * s.KH + kh] && p.class_col_valid[cc * s.KW + kw]) continue;
        const int32_t* tap = pop + (kh * s.KW + kw) * O;
        for (int64_t o = 0; o < O; ++o) spurious[o] += tap[o];
      }
    }
  }
}

void conv_prepare_input(const ConvPlan& p, const uint32_t* x, uint32_t* planes, int64_t row_begin, int64_t row_end) {
  const ConvShape& s = p.s;
  const uint32_t tail = common::last_word_mask(s.C);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t n = r / s.H, ih = r % s.H;
    const int64_t iph = ih + s.pad_h, ph = iph % s.stride_h, qh = iph / s.stride_h;
    if (qh * p.Wq >= p.plane) continue;  // no output reads this row
    uint32_t* sample = planes + n * p.planes_per_sample() * p.plane;
    const uint32_t* row = x + r * s.W * p.words;
    // The columns of one column phase pw ((iw + pad_w) % stride_w == pw) land side by side in a
    // plane row from qw0 = (iw0 + pad_w) / stride_w on: each word j is one strided gather into
    // contiguous words, with no division per pixel. Columns at qw >= Wq (or past the plane) are
    // read by no output.
    for (int64_t pw = 0; pw < s.stride_w; ++pw) {
      const int64_t iw0 = ((pw - s.pad_w) % s.stride_w + s.stride_w) % s.stride_w;
      if (iw0 >= s.W) continue;
      const int64_t qw0 = (iw0 + s.pad_w) / s.stride_w;
      const int64_t at0 = qh * p.Wq + qw0;
      const int64_t count = std::min({(s.W - 1 - iw0) / s.stride_w + 1, p.Wq - qw0, p.plane - at0});
      const int64_t step = s.stride_w * p.words;
      for (int64_t j = 0; j < p.words; ++j) {
        uint32_t* dst = sample + ((j * s.stride_h + ph) * s.stride_w + pw) * p.plane + at0;
        const uint32_t* src = row + iw0 * p.words + j;
        const uint32_t mask = j + 1 == p.words ? tail : ~0u;
        for (int64_t k = 0; k < count; ++k) dst[k] = src[k * step] & mask;
      }
    }
  }
}

void conv_tiles(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,
                const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end) {
  switch (active_isa()) {
    case Isa::Avx512:
      conv_tiles_avx512(plan, weights, planes, epilogue, out, tile_begin, tile_end);
      return;
    case Isa::Avx2:
      conv_tiles_avx2(plan, weights, planes, epilogue, out, tile_begin, tile_end);
      return;
    case Isa::Portable:
      conv_tiles_portable(plan, weights, planes, epilogue, out, tile_begin, tile_end);
      return;
  }
}

void binary_conv2d(const ConvShape& s, const uint32_t* x, const uint32_t* w, const ConvEpilogue& epilogue,
                   float* out) {
  const std::shared_ptr<const ConvPlan> plan = conv_plan_for(s);
  ConvWeights weights;
  conv_prepare_weights(*plan, w, weights);
  std::vector<uint32_t> planes(plan->scratch_words(), 0u);
  conv_prepare_input(*plan, x, planes.data(), 0, s.N * s.H);
  conv_tiles(*plan, weights, planes.data(), epilogue, out, 0, plan->num_tiles());
}

}  // namespace hidiff::core
