// Fused reverse step of Bernoulli diffusion on the CPU: the calibrated mean and a Bernoulli draw
// from the counter-based RNG, in one pass over the elements. The RNG and the mean are those of
// every backend (csrc/common/philox.h, csrc/common/bernoulli_mean.h).
#pragma once

#include <cstdint>

#include "../common/bernoulli_mean.h"
#include "../common/philox.h"

namespace hidiff::core {

// Elements [begin, end) of the flattened (N, inner_size) inputs:
//   y_t, eps_hat, prior, out: N * inner_size contiguous float32
//   coef:                     (N, 2) contiguous float32, the (a, b) of sample n = element / inner_size
//   out[i] = counter_uniform(seed, offset + i) < mean[i] ? 1 : 0   (counter index wraps modulo 2^64)
// Uses the AVX-512 or AVX2 path when it is the active one (cpu_features.h), else portable C++; all
// paths give identical results.
void bernoulli_step(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                    int64_t inner_size, common::BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                    int64_t begin, int64_t end);

}  // namespace hidiff::core
