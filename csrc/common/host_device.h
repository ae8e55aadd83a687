// Lets one definition serve both the C++ compiler and nvcc.
//
// The headers of csrc/common hold what every backend must compute identically, to the last bit:
// the bit layout, the convolution's sizes, the fused epilogue, TA, Philox and the Bernoulli mean.
// They are plain C++17 without torch, included by the CPU kernels (csrc/core) and the CUDA kernels
// (csrc/cuda); under nvcc their functions are compiled for the device as well as the host.
#pragma once

#if defined(__CUDACC__)
#define HIDIFF_HOST_DEVICE __host__ __device__
// Forced under nvcc: these helpers sit in the kernels' inner loops.
#define HIDIFF_INLINE __forceinline__
#else
#define HIDIFF_HOST_DEVICE
#define HIDIFF_INLINE inline
#endif
