// Portable path: plain C++ with 64-bit popcounts, for CPUs without AVX2.
#include <cstring>

#include "conv_driver.h"

namespace hidiff::core {
namespace {

using detail::Segment;

// Without a popcount instruction (x86-64 baseline) GCC calls a library routine for
// __builtin_popcountll; the inline bit-slicing count below is several times faster. Elsewhere
// (e.g. AArch64) the builtin is a single instruction sequence.
inline int popcount64(uint64_t v) {
#if defined(__x86_64__) && !defined(__POPCNT__)
  v = v - ((v >> 1) & 0x5555555555555555ull);
  v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<int>((v * 0x0101010101010101ull) >> 56);
#else
  return __builtin_popcountll(v);
#endif
}

inline int64_t xor_popcount(const uint32_t* a, const uint32_t* b, int64_t len) {
  int64_t count = 0;
  int64_t i = 0;
  for (; i + 2 <= len; i += 2) {
    uint64_t wa, wb;
    std::memcpy(&wa, a + i, sizeof(wa));
    std::memcpy(&wb, b + i, sizeof(wb));
    count += popcount64(wa ^ wb);
  }
  if (i < len) count += popcount64(a[i] ^ b[i]);
  return count;
}

struct PortableKernel : detail::ScalarEpilogue {
  static constexpr int kPixels = 1;
  static constexpr int kChannels = 4;

  template <int P, int Q>
  static void run(const uint32_t* const* xp, const uint32_t* const* wp, const Segment* segs, int64_t nseg,
                  int64_t* D) {
    for (int k = 0; k < P * Q; ++k) D[k] = 0;
    for (int64_t s = 0; s < nseg; ++s) {
      for (int p = 0; p < P; ++p) {
        for (int q = 0; q < Q; ++q) {
          D[p * Q + q] += xor_popcount(xp[p] + segs[s].x_off, wp[q] + segs[s].w_off, segs[s].len);
        }
      }
    }
  }
};

}  // namespace

void binary_conv2d_tiles_portable(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                                  const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  detail::conv_tiles<PortableKernel>(s, x, w, scale, bias, out, tile_begin, tile_end);
}

}  // namespace hidiff::core
