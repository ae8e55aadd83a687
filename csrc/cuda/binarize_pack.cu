// Fused TB (paper Eq. 15) + sign + packing on the GPU.
//
// NCHW input: one thread per (pixel, word) reads its 32 channels one plane apart, so the threads
// of a warp (consecutive pixels) read consecutive addresses of each plane. Channels-last input:
// one warp per (pixel, word), lane = channel, and the word is the warp's ballot.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels.h"

namespace hidiff::cuda {
namespace {

constexpr int kThreads = 256;
// Grid-stride loops cover the rest; this bounds the grid of very large tensors.
constexpr int64_t kMaxBlocks = 1 << 20;

// Conversions to float32 with round-to-nearest, as torch's .float() does.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(double v) { return __double2float_rn(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    binarize_pack_nchw_kernel(const T* __restrict__ x, int64_t pixels, int C, int64_t plane,
                              const float* __restrict__ threshold, int64_t threshold_stride_n,
                              uint32_t* __restrict__ out, int words) {
  const int word = blockIdx.y;
  const int first = word * 32;
  const int count = min(32, C - first);
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pixels;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = p / plane;
    const T* src = x + (n * C + first) * plane + (p - n * plane);
    const float* thr = threshold ? threshold + n * threshold_stride_n + first : nullptr;
    uint32_t bits = 0;
    for (int b = 0; b < count; ++b) {
      const float v = to_float(src[b * plane]);
      if (common::packed_bit(v, thr ? thr[b] : 0.0f)) bits |= 1u << b;
    }
    out[p * words + word] = bits;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    binarize_pack_nhwc_kernel(const T* __restrict__ x, int64_t pixels, int C, int64_t plane,
                              const float* __restrict__ threshold, int64_t threshold_stride_n,
                              uint32_t* __restrict__ out, int words) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  const int64_t items = pixels * words;
  // `item` is uniform across the warp, so every lane reaches the ballot.
  for (int64_t item = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; item < items;
       item += warps) {
    const int64_t p = item / words;
    const int c = static_cast<int>(item - p * words) * 32 + lane;
    bool minus_one = false;
    if (c < C) {
      const float v = to_float(x[p * C + c]);
      const float t = threshold ? threshold[(p / plane) * threshold_stride_n + c] : 0.0f;
      minus_one = common::packed_bit(v, t);
    }
    const uint32_t bits = __ballot_sync(0xFFFFFFFFu, minus_one);
    if (lane == 0) out[item] = bits;
  }
}

template <typename T>
void launch_typed(const T* x, bool channels_last, int64_t N, int C, int64_t plane, const float* threshold,
                  int64_t threshold_stride_n, uint32_t* out, cudaStream_t stream) {
  const int64_t pixels = N * plane;
  const int words = common::packed_words(C);
  if (channels_last) {
    const int64_t blocks = std::min(kMaxBlocks, ceil_div(pixels * words, kThreads / 32));
    binarize_pack_nhwc_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        x, pixels, C, plane, threshold, threshold_stride_n, out, words);
  } else {
    const int64_t blocks = std::min(kMaxBlocks, ceil_div(pixels, kThreads));
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(words));
    binarize_pack_nchw_kernel<T><<<grid, kThreads, 0, stream>>>(x, pixels, C, plane, threshold, threshold_stride_n,
                                                                out, words);
  }
}

}  // namespace

void launch_binarize_pack(const void* x, FloatType type, bool channels_last, int64_t N, int C, int64_t H, int64_t W,
                          const float* threshold, int64_t threshold_stride_n, uint32_t* out, cudaStream_t stream) {
  const int64_t plane = H * W;
  if (N * plane == 0) return;
  switch (type) {
    case FloatType::Float32:
      launch_typed(static_cast<const float*>(x), channels_last, N, C, plane, threshold, threshold_stride_n, out,
                   stream);
      break;
    case FloatType::Float64:
      launch_typed(static_cast<const double*>(x), channels_last, N, C, plane, threshold, threshold_stride_n, out,
                   stream);
      break;
    case FloatType::Float16:
      launch_typed(static_cast<const __half*>(x), channels_last, N, C, plane, threshold, threshold_stride_n, out,
                   stream);
      break;
    case FloatType::BFloat16:
      launch_typed(static_cast<const __nv_bfloat16*>(x), channels_last, N, C, plane, threshold, threshold_stride_n,
                   out, stream);
      break;
  }
}

}  // namespace hidiff::cuda
