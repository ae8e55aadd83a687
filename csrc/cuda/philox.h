// Counter-based RNG and Bernoulli mean of the fused Bernoulli step, for host and device.
//
// The same definitions as csrc/core/bernoulli.h and hidiff_kernels/reference.py: element i uses
// Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter (lo32(offset + i), hi32(offset + i), 0, 0);
// its uniform is (r0 >> 8) * 2^-24 and the sample is 1 where uniform < mean. The mean is computed
// with the reference's float32 operations in the reference's order, each rounded (device_math.h),
// so a seed gives the same sample on the CPU and the GPU.
#pragma once

#include <cmath>
#include <cstdint>

#include "device_math.h"

namespace hidiff::cuda {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;
constexpr float kPosteriorEps = 1e-12f;

HIDIFF_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// First output word of Philox4x32-10 for the counter (c0, c1, 0, 0): the only word the step uses.
HIDIFF_HD uint32_t philox_first_word(uint32_t c0, uint32_t c1, uint32_t key0, uint32_t key1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    const uint32_t hi0 = mulhi32(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = mulhi32(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
    c0 = hi1 ^ c1 ^ key0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ key1;
    c3 = lo0;
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return c0;
}

// Uniform in [0, 1) of counter index `index` (= offset + i, modulo 2^64) under `seed`; 24 bits, exact.
HIDIFF_HD float counter_uniform(uint64_t seed, uint64_t index) {
  const uint32_t r0 = philox_first_word(static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32),
                                        static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return mul_rn(static_cast<float>(r0 >> 8), 0x1p-24f);  // 24 bits times a power of two: exact
}

enum class BernoulliMode : int { Posterior = 0, Ddim = 1 };

// Mean of y_{t-1} with y0_hat = |y_t - eps_hat| (reference.bernoulli_mean):
//   Posterior, (a, b) = (alpha_t, abar_{t-1}): theta1 / max(theta0 + theta1, 1e-12)
//   Ddim, (a, b) = (sigma_t, abar_{t-1} - sigma_t * abar_t): clip(a * y_t + b * y0_hat, 0, 1)
// The clamps are written as comparisons so that NaN propagates (and then never draws a 1).
HIDIFF_HD float bernoulli_mean(float y_t, float eps_hat, float prior, float a, float b, BernoulliMode mode) {
  const float y0_hat = fabsf(sub_rn(y_t, eps_hat));
  if (mode == BernoulliMode::Ddim) {
    const float m = add_rn(mul_rn(a, y_t), mul_rn(b, y0_hat));
    const float low = m < 0.0f ? 0.0f : m;
    return low > 1.0f ? 1.0f : low;
  }
  const float not_y = sub_rn(1.0f, y_t);
  const float likelihood = fabsf(sub_rn(not_y, prior));  // p^y_t (1 - p)^(1 - y_t) for binary y_t
  const float mix = mul_rn(sub_rn(1.0f, a), likelihood);
  const float one_minus_b = sub_rn(1.0f, b);
  const float prior1 = add_rn(mul_rn(b, y0_hat), mul_rn(one_minus_b, prior));
  const float prior0 = add_rn(mul_rn(b, sub_rn(1.0f, y0_hat)), mul_rn(one_minus_b, sub_rn(1.0f, prior)));
  const float theta1 = mul_rn(add_rn(mul_rn(a, y_t), mix), prior1);
  const float theta0 = mul_rn(add_rn(mul_rn(a, not_y), mix), prior0);
  const float sum = add_rn(theta0, theta1);
  return div_rn(theta1, sum < kPosteriorEps ? kPosteriorEps : sum);
}

// The sample of one element: 1 where the uniform of counter offset + i is below the mean.
HIDIFF_HD float bernoulli_sample(float y_t, float eps_hat, float prior, float a, float b, BernoulliMode mode,
                                 uint64_t seed, uint64_t index) {
  return counter_uniform(seed, index) < bernoulli_mean(y_t, eps_hat, prior, a, b, mode) ? 1.0f : 0.0f;
}

}  // namespace hidiff::cuda
