// TA (paper Eq. 16) on the GPU: one row of the grid per (n, c) row of u, so the row's gamma, zeta
// and beta are loaded once and no element needs an integer division.
#include <algorithm>

#include "kernels.h"

namespace hidiff::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxRowBlocks = 65535;  // grid.y limit; rows beyond it are strided over
constexpr int64_t kMaxColumnBlocks = 1 << 16;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    time_activation_kernel(const T* __restrict__ u, const T* __restrict__ gamma, const T* __restrict__ zeta,
                           const T* __restrict__ beta, T* __restrict__ out, int64_t rows, int64_t inner, int64_t C) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T g = gamma[row], z = zeta[row], b = beta[row % C];
    const T* src = u + row * inner;
    T* dst = out + row * inner;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < inner;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      dst[i] = common::time_activation(src[i], g, z, b);
    }
  }
}

template <typename T>
void launch(const T* u, const T* gamma, const T* zeta, const T* beta, T* out, int64_t rows, int64_t inner, int64_t C,
            cudaStream_t stream) {
  if (rows * inner == 0) return;
  const dim3 grid(static_cast<unsigned>(std::min(kMaxColumnBlocks, ceil_div(inner, kThreads))),
                  static_cast<unsigned>(std::min(kMaxRowBlocks, rows)));
  time_activation_kernel<T><<<grid, kThreads, 0, stream>>>(u, gamma, zeta, beta, out, rows, inner, C);
}

}  // namespace

void launch_time_activation(const float* u, const float* gamma, const float* zeta, const float* beta, float* out,
                            int64_t rows, int64_t inner, int64_t C, cudaStream_t stream) {
  launch(u, gamma, zeta, beta, out, rows, inner, C, stream);
}

void launch_time_activation(const double* u, const double* gamma, const double* zeta, const double* beta,
                            double* out, int64_t rows, int64_t inner, int64_t C, cudaStream_t stream) {
  launch(u, gamma, zeta, beta, out, rows, inner, C, stream);
}

}  // namespace hidiff::cuda
