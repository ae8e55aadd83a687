// Portable micro-kernel: 16 lanes x 4 output channels in plain C++ (any CPU, baseline ISA).
#include <cstdint>

#include "conv_driver.h"

namespace hidiff::core {
namespace {

inline int32_t popcount32(uint32_t v) {
  // Bit-slicing popcount: the baseline x86-64 ISA has no popcount instruction.
  v = v - ((v >> 1) & 0x55555555u);
  v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
  v = (v + (v >> 4)) & 0x0f0f0f0fu;
  return static_cast<int32_t>((v * 0x01010101u) >> 24);
}

struct PortableKernel {
  static constexpr int kVectors = 1;
  static constexpr int64_t kLanes = 16;
  static constexpr int kChannels = 4;

  template <int Q, int P>
  static void run(const uint32_t* x, const int64_t* offsets, const uint32_t* w, int64_t steps, int32_t* D) {
    static_assert(P == 1, "the portable kernel's block is one group of 16 lanes");
    int32_t acc[Q][kLanes] = {};
    for (int64_t k = 0; k < steps; ++k) {
      const uint32_t* a = x + offsets[k];
      for (int q = 0; q < Q; ++q) {
        const uint32_t wv = w[q * steps + k];
        for (int64_t i = 0; i < kLanes; ++i) acc[q][i] += popcount32(a[i] ^ wv);
      }
    }
    for (int q = 0; q < Q; ++q)
      for (int64_t i = 0; i < kLanes; ++i) D[q * kLanes + i] = acc[q][i];
  }
};

}  // namespace

HIDIFF_DEFINE_CONV_ENTRY_POINTS(portable, PortableKernel)

}  // namespace hidiff::core
