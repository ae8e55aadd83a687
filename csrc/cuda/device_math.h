// Integer helpers of the CUDA kernels that their host-side tests run too (torch-free). The float
// arithmetic shared with the CPU kernels is in csrc/common.
#pragma once

#include <cstdint>

#include "../common/host_device.h"

namespace hidiff::cuda {

HIDIFF_HOST_DEVICE HIDIFF_INLINE int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

HIDIFF_HOST_DEVICE HIDIFF_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace hidiff::cuda
