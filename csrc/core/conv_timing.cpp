#include "conv_timing.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

namespace hidiff::core {
namespace {

template <class Fn>
double median_us(Fn&& fn, int reps, int rounds) {
  std::vector<double> means;
  for (int r = 0; r < rounds; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
    means.push_back(took.count() / reps);
  }
  std::sort(means.begin(), means.end());
  return means[means.size() / 2];
}

}  // namespace

ConvStageTimes time_conv_stages(const ConvShape& s, int reps, int rounds) {
  std::mt19937 rng(0);
  const int64_t words = s.words();
  std::vector<uint32_t> x(s.N * s.H * s.W * words), w(s.O * s.KH * s.KW * words);
  for (auto& v : x) v = rng();
  for (auto& v : w) v = rng();
  // Packed operands have clear pad bits (the weights' stray-bit path is the exception, not timed).
  const uint32_t tail = common::last_word_mask(s.C);
  for (int64_t t = 0; t < s.O * s.KH * s.KW; ++t) w[t * words + words - 1] &= tail;
  std::vector<float> out(s.N * s.O * s.out_h() * s.out_w()), scale(s.O, 0.5f), bias(s.O, 0.25f);
  ConvEpilogue ep;
  ep.scale = scale.data();
  ep.bias = bias.data();

  const ConvPlan plan = make_conv_plan(s);
  ConvWeights weights;
  conv_prepare_weights(plan, w.data(), weights);
  std::vector<uint32_t> planes(plan.scratch_words());
  ConvStageTimes t;
  t.plan_build = median_us([&] { make_conv_plan(s); }, reps, rounds);
  t.plan_cached = median_us([&] { conv_plan_for(s); }, reps, rounds);
  t.weights = median_us([&] { conv_prepare_weights(plan, w.data(), weights); }, reps, rounds);
  t.input = median_us(
      [&] {
        std::fill(planes.begin(), planes.end(), 0u);
        conv_prepare_input(plan, x.data(), planes.data(), 0, s.N * s.H);
      },
      reps, rounds);
  t.tiles = median_us([&] { conv_tiles(plan, weights, planes.data(), ep, out.data(), 0, plan.num_tiles()); }, reps,
                      rounds);
  return t;
}

}  // namespace hidiff::core
