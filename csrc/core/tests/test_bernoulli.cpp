// Torch-free tests of the Bernoulli step kernel: Random123 known-answer vectors of Philox4x32-10,
// the posterior and DDIM means on hand-computed values, and every instruction set against the
// scalar definition (odd ranges, per-sample coefficients, counters crossing 2^32, NaN).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "../bernoulli.h"
#include "../cpu_features.h"

using namespace hidiff::common;
using namespace hidiff::core;

namespace {

int failures = 0;

#define EXPECT(cond, ...)                              \
  do {                                                 \
    if (!(cond)) {                                     \
      ++failures;                                      \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

void test_philox_known_answers() {
  // Known-answer vectors of Philox4x32-10 from Random123 (kat_vectors).
  struct Kat {
    PhiloxBlock ctr;
    PhiloxKey key;
    PhiloxBlock expected;
  };
  const Kat kats[] = {
      {{{0u, 0u, 0u, 0u}}, {{0u, 0u}}, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}},
       {{0xffffffffu, 0xffffffffu}},
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}},
       {{0xa4093822u, 0x299f31d0u}},
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const Kat& kat : kats) {
    const PhiloxBlock got = philox4x32_10(kat.ctr, kat.key);
    bool same = true;
    for (int i = 0; i < 4; ++i) same = same && got.word[i] == kat.expected.word[i];
    EXPECT(same, "philox4x32_10(ctr %08x...) = %08x %08x %08x %08x", kat.ctr.word[0], got.word[0], got.word[1],
           got.word[2], got.word[3]);
  }
  // The uniform takes the top 24 bits of the first word: counter 0 under key 0 gives 0x6627e8d5 >> 8.
  EXPECT(counter_uniform(0, 0) == static_cast<float>(0x6627e8u) / 16777216.0f, "counter_uniform(0, 0)");
}

void test_means_on_known_values() {
  // DDIM: a * y + b * |y - e|, clipped to [0, 1].
  EXPECT(bernoulli_mean(1.f, 0.25f, 0.5f, 0.5f, 0.25f, BernoulliMode::Ddim) == 0.5f + 0.25f * 0.75f, "ddim value");
  EXPECT(bernoulli_mean(1.f, 0.f, 0.5f, 0.8f, 0.5f, BernoulliMode::Ddim) == 1.f, "ddim clipped above");
  EXPECT(bernoulli_mean(0.f, 1.f, 0.5f, 0.8f, -0.5f, BernoulliMode::Ddim) == 0.f, "ddim clipped below");
  // Posterior with y_t = 1, y0_hat = 1, p = 0.5, alpha = 0.9, abar = 0.6:
  // theta1 = (0.9 + 0.1 * 0.5) * (0.6 + 0.4 * 0.5), theta0 = (0 + 0.1 * 0.5) * (0 + 0.4 * 0.5).
  const double theta1 = (0.9 + 0.05) * 0.8, theta0 = 0.05 * 0.2;
  const float posterior = bernoulli_mean(1.f, 0.f, 0.5f, 0.9f, 0.6f, BernoulliMode::Posterior);
  EXPECT(std::fabs(posterior - theta1 / (theta0 + theta1)) < 1e-6, "posterior value %.9g", posterior);
  // Saturated prior and y0_hat: 0/0 guarded to 0 (p = 0, y0_hat = 0, y_t = 1).
  EXPECT(bernoulli_mean(1.f, 1.f, 0.f, 0.9f, 0.6f, BernoulliMode::Posterior) == 0.f, "0/0 guard");
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT(std::isnan(bernoulli_mean(nan, 0.f, 0.5f, 0.9f, 0.6f, BernoulliMode::Posterior)), "NaN propagates");
  EXPECT(std::isnan(bernoulli_mean(nan, 0.f, 0.5f, 0.9f, 0.6f, BernoulliMode::Ddim)), "NaN propagates in ddim");
}

// Definition of the kernel, element by element.
std::vector<float> naive_step(const std::vector<float>& y, const std::vector<float>& e, const std::vector<float>& p,
                              const std::vector<float>& coef, int64_t inner, BernoulliMode mode, uint64_t seed,
                              uint64_t offset) {
  std::vector<float> out(y.size());
  for (size_t i = 0; i < y.size(); ++i) {
    const size_t n = i / static_cast<size_t>(inner);
    const float mean = bernoulli_mean(y[i], e[i], p[i], coef[2 * n], coef[2 * n + 1], mode);
    out[i] = counter_uniform(seed, offset + i) < mean ? 1.f : 0.f;
  }
  return out;
}

void test_every_isa_matches_definition() {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  struct Case {
    int64_t N, inner;
    uint64_t seed, offset;
  };
  const Case cases[] = {
      {1, 1, 0, 0},
      {3, 37, 0x123456789abcdefull, 5},
      {2, 1000, ~0ull, 0xFFFFFFFFull - 500},  // counter low word wraps mid-tensor
      {5, 16, 42, 0xFFFFFFFFFFFFFFF0ull},     // and the whole counter wraps modulo 2^64
      {4, 129, 7, 1ull << 40},
  };
  for (const Case& c : cases) {
    const int64_t numel = c.N * c.inner;
    std::vector<float> y(numel), e(numel), p(numel), coef(2 * c.N);
    for (int64_t i = 0; i < numel; ++i) {
      y[i] = unit(rng) < 0.5f ? 0.f : 1.f;
      e[i] = unit(rng);
      p[i] = unit(rng);
    }
    // Saturated entries (0/0 guard), a NaN and an infinity (whose posterior is inf / NaN) take the
    // same path as everything else.
    p[0] = 0.f;
    e[0] = y[0];
    if (numel > 5) {
      e[3] = std::numeric_limits<float>::quiet_NaN();
      e[5] = std::numeric_limits<float>::infinity();
    }
    for (int64_t n = 0; n < c.N; ++n) {
      coef[2 * n] = unit(rng);
      coef[2 * n + 1] = 2.f * unit(rng) - 0.5f;  // lets the DDIM mean leave [0, 1]
    }
    for (BernoulliMode mode : {BernoulliMode::Posterior, BernoulliMode::Ddim}) {
      const std::vector<float> expected = naive_step(y, e, p, coef, c.inner, mode, c.seed, c.offset);
      for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512}) {
        if (!set_active_isa(isa)) continue;
        std::vector<float> out(numel, -1.f);
        // Split the range unevenly, as threads would: the result must not depend on the split.
        const int64_t cuts[] = {0, numel / 3, numel / 3 + 1, (2 * numel) / 3, numel};
        for (int k = 0; k + 1 < 5; ++k)
          bernoulli_step(y.data(), e.data(), p.data(), coef.data(), c.inner, mode, c.seed, c.offset, out.data(),
                         cuts[k], cuts[k + 1]);
        int64_t mismatches = 0;
        for (int64_t i = 0; i < numel; ++i) mismatches += out[i] != expected[i];
        EXPECT(mismatches == 0, "%s mode %d N=%ld inner=%ld: %ld mismatches", isa_name(isa), static_cast<int>(mode),
               static_cast<long>(c.N), static_cast<long>(c.inner), static_cast<long>(mismatches));
      }
    }
  }
  set_active_isa(best_supported_isa());
}

void test_uniform_mean() {
  // A constant mean of 0.3: the fraction of ones stays within 5 standard errors.
  const int64_t numel = 200000;
  std::vector<float> y(numel, 0.f), e(numel, 1.f), p(numel, 0.5f), out(numel);
  const float coef[2] = {0.f, 0.3f};  // ddim: 0 * y + 0.3 * |0 - 1|
  bernoulli_step(y.data(), e.data(), p.data(), coef, numel, BernoulliMode::Ddim, 2024, 0, out.data(), 0, numel);
  double ones = 0;
  for (float v : out) ones += v;
  const double frac = ones / numel, se = std::sqrt(0.3 * 0.7 / numel);
  EXPECT(std::fabs(frac - 0.3) < 5 * se, "fraction of ones %.5f, expected 0.3 +- %.5f", frac, 5 * se);
}

}  // namespace

int main() {
  test_philox_known_answers();
  test_means_on_known_values();
  test_every_isa_matches_definition();
  test_uniform_mean();
  if (failures) {
    std::printf("%d failed\n", failures);
    return 1;
  }
  std::printf("all bernoulli tests passed\n");
  return 0;
}
