// The calibrated mean of the fused Bernoulli step (paper Eq. 7 / Eq. 10, or DDIM Alg. 2) and the
// draw of one sample, shared by every backend (reference.bernoulli_mean and bernoulli_step).
//
// The mean is computed in float32 with the reference's operations in its order, each rounded
// (rounded_math.h), so a seed gives the same sample on every backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"
#include "philox.h"
#include "rounded_math.h"

namespace hidiff::common {

// How the step's two coefficients (a, b) of each sample are read; the glue maps the op's `mode`
// string to it once.
enum class BernoulliMode : int { Posterior = 0, Ddim = 1 };

// Denominator guard of the posterior: 0/0 happens when the prior and y0_hat saturate to 0 or 1.
inline constexpr float kPosteriorEps = 1e-12f;

// Mean of y_{t-1} for one element with y0_hat = |y_t - eps_hat|:
//   Posterior, (a, b) = (alpha_t, abar_{t-1}):  theta1 / max(theta0 + theta1, 1e-12)  (Eq. 7)
//   Ddim, (a, b) = (sigma_t, abar_{t-1} - sigma_t * abar_t):  clip(a * y_t + b * y0_hat, 0, 1)
// The clamps are written as comparisons so that NaN propagates (and then never draws a 1), as in
// the reference.
HIDIFF_HOST_DEVICE HIDIFF_INLINE float bernoulli_mean(float y_t, float eps_hat, float prior, float a, float b,
                                                      BernoulliMode mode) {
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

// The sample of one element: 1 where the uniform of counter index `index` is below the mean.
HIDIFF_HOST_DEVICE HIDIFF_INLINE float bernoulli_sample(float y_t, float eps_hat, float prior, float a, float b,
                                                        BernoulliMode mode, uint64_t seed, uint64_t index) {
  return counter_uniform(seed, index) < bernoulli_mean(y_t, eps_hat, prior, a, b, mode) ? 1.0f : 0.0f;
}

}  // namespace hidiff::common
