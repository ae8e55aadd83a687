// Host entry points of the CUDA kernels (torch-free): raw device pointers in, the stream passed in.
//
// Every launcher only enqueues work on `stream` and returns; launch errors are left for the
// caller to read with cudaGetLastError() (the ATen glue uses C10_CUDA_KERNEL_LAUNCH_CHECK). All
// tensors are contiguous in the stated layout; sizes are validated by the caller. The bit layout
// and the arithmetic are those of every backend and of hidiff_kernels/reference.py (csrc/common,
// conv_geometry.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../common/bernoulli_mean.h"
#include "../common/conv_epilogue.h"
#include "conv_geometry.h"

namespace hidiff::cuda {

// Element type of a floating input.
enum class FloatType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

// Fused TB + sign + packing.
//   x:         (N, C, H, W) of `type`, NCHW contiguous, or NHWC contiguous when channels_last
//   threshold: null (0) or float32 at threshold[n * threshold_stride_n + c]
//   out:       (N, H, W, ceil(C / 32)) packed words; bit 1 where float32(x) <= threshold or NaN
void launch_binarize_pack(const void* x, FloatType type, bool channels_last, int64_t N, int C, int64_t H, int64_t W,
                          const float* threshold, int64_t threshold_stride_n, uint32_t* out, cudaStream_t stream);

// Binary convolution with the fused epilogue (csrc/common/conv_epilogue.h), on the 1-bit tensor cores.
//   x:         packed activations (N, H, W, words), w: packed weights (O, KH, KW, words)
//   workspace: sat_elements(g) int32 (the per-channel tap popcount tables, rebuilt on each call)
//   e:         epilogue operands; e.packed null skips the packing
//   out:       (N, O, Ho, Wo) float32
void launch_binary_conv2d(const ConvGeometry& g, const uint32_t* x, const uint32_t* w, int32_t* workspace,
                          const common::ConvEpilogue& e, float* out, cudaStream_t stream);

// TA (paper Eq. 16) on u viewed as (N * C, inner) rows; gamma, zeta (N, C); beta (C,).
void launch_time_activation(const float* u, const float* gamma, const float* zeta, const float* beta, float* out,
                            int64_t rows, int64_t inner, int64_t C, cudaStream_t stream);
void launch_time_activation(const double* u, const double* gamma, const double* zeta, const double* beta,
                            double* out, int64_t rows, int64_t inner, int64_t C, cudaStream_t stream);

// Fused Bernoulli step on (N, inner) float32 elements with coef (N, 2):
//   out[i] = counter_uniform(seed, offset + i) < bernoulli_mean(...) ? 1 : 0
void launch_bernoulli_step(const float* y_t, const float* eps_hat, const float* prior, const float* coef, int64_t N,
                           int64_t inner, common::BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                           cudaStream_t stream);

}  // namespace hidiff::cuda
