// Per-call cost of the binary convolution's stages on one thread, without torch: plan (built, and
// from the cache), weight tables, input rearrangement (zero fill + copy into word planes) and the
// tiles (micro-kernel + epilogue), the tiles also as a fraction of the register-only popcount limit
// (popcount_peak.h), for the small layers where fixed costs matter and the layer-table shapes. Run
// by hand (build/cmake/conv_breakdown); `python -m hidiff_kernels.overhead` times the ATen glue and
// Python layers on top.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../binary_conv.h"
#include "../cpu_features.h"
#include "../popcount_peak.h"

using namespace hidiff::core;

namespace {

// Median over rounds of the mean time of `reps` calls, in microseconds.
template <class Fn>
double median_us(Fn&& fn, int reps) {
  std::vector<double> rounds;
  for (int r = 0; r < 7; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) fn();
    const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
    rounds.push_back(took.count() / reps);
  }
  std::sort(rounds.begin(), rounds.end());
  return rounds[rounds.size() / 2];
}

// Binary MACs per microsecond of the register-only loop of the active path (the per-core limit).
double peak_per_us() {
  uint64_t checksum = 0;
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const int64_t bits = popcount_peak(1'000'000, &checksum);
    const std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
    best = std::max(best, static_cast<double>(bits) / took.count());
  }
  return best;
}

void run(int64_t C, int64_t O, int64_t size, int64_t stride) {
  const ConvShape s{1, size, size, C, O, 3, 3, stride, stride, 1, 1, 1, 1};
  std::mt19937 rng(0);
  std::vector<uint32_t> x(s.N * s.H * s.W * s.words()), w(s.O * 9 * s.words());
  for (auto& v : x) v = rng();
  for (auto& v : w) v = rng();
  const uint32_t tail = hidiff::common::last_word_mask(C);
  for (int64_t t = 0; t < s.O * 9; ++t) w[t * s.words() + s.words() - 1] &= tail;
  std::vector<float> out(s.N * s.O * s.out_h() * s.out_w()), scale(O, 0.5f), bias(O, 0.25f);
  ConvEpilogue ep;
  ep.scale = scale.data();
  ep.bias = bias.data();

  const ConvPlan plan = make_conv_plan(s);
  ConvWeights weights;
  conv_prepare_weights(plan, w.data(), weights);
  std::vector<uint32_t> planes(plan.scratch_words());
  const double macs = static_cast<double>(O) * s.out_h() * s.out_w() * 9 * C;
  const int reps = std::max<int>(1, static_cast<int>(2e8 / macs));

  const double t_plan = median_us([&] { make_conv_plan(s); }, reps);
  const double t_cached = median_us([&] { conv_plan_for(s); }, reps);
  const double t_weights = median_us([&] { conv_prepare_weights(plan, w.data(), weights); }, reps);
  const double t_prepare = median_us(
      [&] {
        std::fill(planes.begin(), planes.end(), 0u);
        conv_prepare_input(plan, x.data(), planes.data(), 0, s.N * s.H);
      },
      reps);
  const double t_tiles = median_us(
      [&] { conv_tiles(plan, weights, planes.data(), ep, out.data(), 0, plan.num_tiles()); }, reps);
  const double total = t_cached + t_weights + t_prepare + t_tiles;
  std::printf(
      "%4ld->%-4ld %3ldx%-3ld s%ld | plan %7.2f (cached %5.2f) | weights %6.2f | input %8.2f | tiles %9.2f | "
      "total %9.2f | tiles at %4.0f%% of the limit\n",
      static_cast<long>(C), static_cast<long>(O), static_cast<long>(size), static_cast<long>(size),
      static_cast<long>(stride), t_plan, t_cached, t_weights, t_prepare, t_tiles, total, 100 * macs / t_tiles / peak_per_us());
}

}  // namespace

int main() {
  std::printf("popcount path %s, 1 thread; microseconds per call (median of 7 rounds); limit %.0f G bit-MAC/s\n",
              isa_name(active_isa()), peak_per_us() * 1e-3);
  for (const auto& l : std::vector<std::vector<int64_t>>{{32, 32, 1, 1},
                                                         {512, 512, 4, 1},
                                                         {512, 512, 8, 1},
                                                         {512, 512, 16, 1},
                                                         {256, 256, 64, 1},
                                                         {128, 128, 256, 1},
                                                         {128, 128, 256, 2},
                                                         {256, 128, 256, 1}}) {
    run(l[0], l[1], l[2], l[3]);
  }
  return 0;
}
