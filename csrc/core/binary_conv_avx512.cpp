// AVX-512 VPOPCNTDQ micro-kernel: 48 lanes (three 512-bit vectors of 16 pixels) x 8 output channels;
// the last block of a small map runs with one or two vectors when the rest would be past its grid.
//
// Each step loads the three lane vectors once and XORs them with 8 broadcast weight words:
// 24 XOR + VPOPCNTD + ADD triples per 11 loads, the counts in 24 of the 32 vector registers
// (of the blockings tried, 2x8, 2x12, 4x4, 4x6 and 3x8, the last ran fastest here). With a native
// per-lane popcount a carry-save (Harley-Seal) stage would cost more instructions than the
// popcounts it saves, so it is only used on AVX2.
#include <cstdint>

#include "binary_conv.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "isa_target.h"

HIDIFF_TARGET_BEGIN("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#include "conv_driver.h"

namespace hidiff::core {
namespace {

struct Avx512Kernel {
  static constexpr int kVectors = 3;
  static constexpr int64_t kLanes = 16 * kVectors;
  static constexpr int kChannels = 8;

  template <int Q, int P>
  static void run(const uint32_t* x, const int64_t* offsets, const uint32_t* w, int64_t steps, int32_t* D) {
    __m512i acc[P][Q];
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
    for (int64_t k = 0; k < steps; ++k) {
      const uint32_t* a = x + offsets[k];
      __m512i av[P];
      for (int p = 0; p < P; ++p) av[p] = _mm512_loadu_si512(a + 16 * p);
      for (int q = 0; q < Q; ++q) {
        const __m512i wv = _mm512_set1_epi32(static_cast<int>(w[q * steps + k]));
        for (int p = 0; p < P; ++p)
          acc[p][q] = _mm512_add_epi32(acc[p][q], _mm512_popcnt_epi32(_mm512_xor_si512(av[p], wv)));
      }
    }
    for (int q = 0; q < Q; ++q)
      for (int p = 0; p < P; ++p) _mm512_store_si512(D + q * kLanes + 16 * p, acc[p][q]);
  }
};

}  // namespace

HIDIFF_DEFINE_CONV_ENTRY_POINTS(avx512, Avx512Kernel)

}  // namespace hidiff::core
HIDIFF_TARGET_END

#else

namespace hidiff::core {
void conv_tap_popcount_avx512(const ConvPlan& plan, const uint32_t* w, int32_t* tap_popcount) {
  conv_tap_popcount_portable(plan, w, tap_popcount);
}
void conv_tiles_avx512(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,
                  const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end) {
  conv_tiles_portable(plan, weights, planes, epilogue, out, tile_begin, tile_end);
}
}  // namespace hidiff::core

#endif
