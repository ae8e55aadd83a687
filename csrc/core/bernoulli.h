// Fused reverse step of Bernoulli diffusion: calibrated mean (paper Eq. 7 / Eq. 10, or DDIM Alg. 2)
// and a Bernoulli draw from a counter-based RNG, in one pass over the elements.
//
// RNG (shared by every backend, see hidiff_kernels/reference.py): element i uses Philox4x32-10 with
// key (lo32(seed), hi32(seed)) and counter (lo32(offset + i), hi32(offset + i), 0, 0); its uniform
// is u = (r0 >> 8) * 2^-24 and the sample is 1 where u < mean. A sample therefore depends only on
// (seed, offset + i) and the inputs, never on how the range is split over threads.
//
// The mean is computed in float32 with exactly the reference's operations in its order (the build
// uses -ffp-contract=off, so no multiply-add is fused), which makes every path bit-identical to it.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace hidiff::core {

using PhiloxCounter = std::array<uint32_t, 4>;
using PhiloxKey = std::array<uint32_t, 2>;

inline constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
inline constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
inline constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
inline constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
inline constexpr int kPhiloxRounds = 10;

// Philox4x32-10 (Salmon et al., SC'11), the Random123 reference definition.
inline PhiloxCounter philox4x32_10(PhiloxCounter ctr, PhiloxKey key) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * ctr[0];
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * ctr[2];
    ctr = {static_cast<uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<uint32_t>(p1),
           static_cast<uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<uint32_t>(p0)};
    key = {key[0] + kPhiloxW0, key[1] + kPhiloxW1};
  }
  return ctr;
}

// Uniform float in [0, 1) of counter index `index` (= offset + i) under `seed`; 24 bits, exact in float32.
inline float counter_uniform(uint64_t seed, uint64_t index) {
  const PhiloxCounter r = philox4x32_10({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u},
                                        {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
  return static_cast<float>(r[0] >> 8) * 0x1p-24f;
}

enum class BernoulliMode : int { Posterior = 0, Ddim = 1 };

// Denominator guard of the posterior: 0/0 happens when the prior and y0_hat saturate to 0 or 1.
inline constexpr float kPosteriorEps = 1e-12f;

// Mean of y_{t-1} for one element with y0_hat = |y_t - eps_hat|:
//   Posterior, (a, b) = (alpha_t, abar_{t-1}):  theta1 / max(theta0 + theta1, 1e-12)  (Eq. 7)
//   Ddim, (a, b) = (sigma_t, abar_{t-1} - sigma_t * abar_t):  clip(a * y_t + b * y0_hat, 0, 1)
// NaN propagates (and then never draws a 1), as in the reference.
inline float bernoulli_mean(float y_t, float eps_hat, float prior, float a, float b, BernoulliMode mode) {
  const float y0_hat = std::fabs(y_t - eps_hat);
  if (mode == BernoulliMode::Ddim) {
    const float m = a * y_t + b * y0_hat;
    const float low = m < 0.0f ? 0.0f : m;
    return low > 1.0f ? 1.0f : low;
  }
  const float not_y = 1.0f - y_t;
  const float likelihood = std::fabs(not_y - prior);  // p^y_t (1 - p)^(1 - y_t) for binary y_t
  const float mix = (1.0f - a) * likelihood;
  const float one_minus_b = 1.0f - b;
  const float prior1 = b * y0_hat + one_minus_b * prior;
  const float prior0 = b * (1.0f - y0_hat) + one_minus_b * (1.0f - prior);
  const float theta1 = (a * y_t + mix) * prior1;
  const float theta0 = (a * not_y + mix) * prior0;
  const float sum = theta0 + theta1;
  return theta1 / (sum < kPosteriorEps ? kPosteriorEps : sum);
}

// Elements [begin, end) of the flattened (N, inner_size) inputs:
//   y_t, eps_hat, prior, out: N * inner_size contiguous float32
//   coef:                     (N, 2) contiguous float32, the (a, b) of sample n = element / inner_size
//   out[i] = counter_uniform(seed, offset + i) < mean[i] ? 1 : 0   (counter index wraps modulo 2^64)
// Uses the AVX-512 or AVX2 path when it is the active one (cpu_features.h), else portable C++; all
// paths give identical results.
void bernoulli_step(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                    int64_t inner_size, BernoulliMode mode, uint64_t seed, uint64_t offset, float* out, int64_t begin,
                    int64_t end);

}  // namespace hidiff::core
