// AVX-512 VPOPCNTDQ micro-kernel: 32 lanes (two 512-bit vectors of 16 pixels) x 8 output channels.
//
// Each step loads the two lane vectors once and XORs them with 8 broadcast weight words:
// 16 XOR + VPOPCNTD + ADD triples per 10 loads, all counts in 16 registers. With a native
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
  static constexpr int64_t kLanes = 32;
  static constexpr int kChannels = 8;

  template <int Q>
  static void run(const uint32_t* x, const int64_t* offsets, const uint32_t* w, int64_t steps, int32_t* D) {
    __m512i acc[2][Q];
    for (int p = 0; p < 2; ++p)
      for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
    for (int64_t k = 0; k < steps; ++k) {
      const uint32_t* a = x + offsets[k];
      const __m512i a0 = _mm512_loadu_si512(a);
      const __m512i a1 = _mm512_loadu_si512(a + 16);
      for (int q = 0; q < Q; ++q) {
        const __m512i wv = _mm512_set1_epi32(static_cast<int>(w[q * steps + k]));
        acc[0][q] = _mm512_add_epi32(acc[0][q], _mm512_popcnt_epi32(_mm512_xor_si512(a0, wv)));
        acc[1][q] = _mm512_add_epi32(acc[1][q], _mm512_popcnt_epi32(_mm512_xor_si512(a1, wv)));
      }
    }
    for (int q = 0; q < Q; ++q) {
      _mm512_store_si512(D + q * kLanes, acc[0][q]);
      _mm512_store_si512(D + q * kLanes + 16, acc[1][q]);
    }
  }
};

}  // namespace

void conv_tiles_avx512(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w, const ConvEpilogue& epilogue,
                       float* out, int64_t tile_begin, int64_t tile_end) {
  detail::conv_tiles<Avx512Kernel>(plan, planes, w, epilogue, out, tile_begin, tile_end);
}

}  // namespace hidiff::core
HIDIFF_TARGET_END

#else

namespace hidiff::core {
void conv_tiles_avx512(const ConvPlan& plan, const uint32_t* planes, const uint32_t* w, const ConvEpilogue& epilogue,
                       float* out, int64_t tile_begin, int64_t tile_end) {
  conv_tiles_portable(plan, planes, w, epilogue, out, tile_begin, tile_end);
}
}  // namespace hidiff::core

#endif
