// Fused Bernoulli step on the GPU: one grid row per sample (its two coefficients are loaded once),
// the counter of element i being offset + n * inner + j. Counters are per element, so the launch
// configuration cannot change a sample: the result equals the CPU kernel and the reference.
#include <algorithm>

#include "kernels.h"

namespace hidiff::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxRowBlocks = 65535;
constexpr int64_t kMaxColumnBlocks = 1 << 16;

__global__ void __launch_bounds__(kThreads)
    bernoulli_step_kernel(const float* __restrict__ y_t, const float* __restrict__ eps_hat,
                          const float* __restrict__ prior, const float* __restrict__ coef, int64_t N, int64_t inner,
                          common::BernoulliMode mode, uint64_t seed, uint64_t offset, float* __restrict__ out) {
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const float a = coef[2 * n], b = coef[2 * n + 1];
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < inner;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t i = n * inner + j;
      out[i] = common::bernoulli_sample(y_t[i], eps_hat[i], prior[i], a, b, mode, seed,
                                        offset + static_cast<uint64_t>(i));
    }
  }
}

}  // namespace

void launch_bernoulli_step(const float* y_t, const float* eps_hat, const float* prior, const float* coef, int64_t N,
                           int64_t inner, common::BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                           cudaStream_t stream) {
  if (N * inner == 0) return;
  const dim3 grid(static_cast<unsigned>(std::min(kMaxColumnBlocks, ceil_div(inner, kThreads))),
                  static_cast<unsigned>(std::min(kMaxRowBlocks, N)));
  bernoulli_step_kernel<<<grid, kThreads, 0, stream>>>(y_t, eps_hat, prior, coef, N, inner, mode, seed, offset, out);
}

}  // namespace hidiff::cuda
