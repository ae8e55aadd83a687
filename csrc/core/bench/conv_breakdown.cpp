// Per-call cost of the binary convolution's stages on one thread, without torch (conv_timing.h),
// for the small layers where fixed costs matter and the layer-table shapes, the tiles also as a
// fraction of the register-only popcount limit (popcount_peak.h). Run by hand
// (build/cmake/conv_breakdown); `python -m hidiff_kernels.overhead` adds the ATen glue, the
// dispatcher, the Python wrapper and the threads on top.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

#include "../conv_timing.h"
#include "../cpu_features.h"
#include "../popcount_peak.h"

using namespace hidiff::core;

namespace {

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

void run(int64_t C, int64_t O, int64_t size, int64_t stride, double peak) {
  const ConvShape s{1, size, size, C, O, 3, 3, stride, stride, 1, 1, 1, 1};
  const double macs = static_cast<double>(O) * s.out_h() * s.out_w() * 9 * C;
  const ConvStageTimes t = time_conv_stages(s, std::max<int>(1, static_cast<int>(2e8 / macs)));
  std::printf(
      "%4ld->%-4ld %3ldx%-3ld s%ld | plan %7.2f (cached %5.2f) | weights %6.2f | input %8.2f | tiles %9.2f | "
      "total %9.2f | tiles at %3.0f%% of the limit\n",
      static_cast<long>(C), static_cast<long>(O), static_cast<long>(size), static_cast<long>(size),
      static_cast<long>(stride), t.plan_build, t.plan_cached, t.weights, t.input, t.tiles,
      t.plan_cached + t.weights + t.input + t.tiles, 100 * macs / t.tiles / peak);
}

}  // namespace

int main() {
  const double peak = peak_per_us();
  std::printf("popcount path %s, 1 thread; microseconds per call (median of 7 rounds); limit %.0f G bit-MAC/s\n",
              isa_name(active_isa()), peak * 1e-3);
  const int64_t layers[][4] = {{32, 32, 1, 1},    {512, 512, 4, 1},    {512, 512, 8, 1},   {512, 512, 16, 1},
                               {256, 256, 64, 1}, {128, 128, 256, 1}, {128, 128, 256, 2}, {256, 128, 256, 1}};
  for (const auto& l : layers) run(l[0], l[1], l[2], l[3], peak);
  return 0;
}
