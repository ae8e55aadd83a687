// AVX2 path: 256-bit XOR, nibble-table popcount with pshufb, byte sums folded by psadbw.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "binary_conv.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "isa_target.h"

HIDIFF_TARGET_BEGIN("avx2,popcnt")
#include "conv_driver.h"

namespace hidiff::core {
namespace {

using detail::Segment;

inline __m256i popcount_epi64(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low_nibble);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
  const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
  return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
}

inline int64_t horizontal_sum(__m256i v) {
  const __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(sum) + _mm_extract_epi64(sum, 1);
}

struct Avx2Kernel {
  static constexpr int kPixels = 2;
  static constexpr int kChannels = 4;

  template <int P, int Q>
  static void run(const uint32_t* const* xp, const uint32_t* const* wp, const Segment* segs, int64_t nseg,
                  int64_t* D) {
    __m256i acc[P][Q];
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) acc[p][q] = _mm256_setzero_si256();
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t s = 0; s < nseg; ++s) {
      const Segment seg = segs[s];
      for (int64_t i = 0; i < seg.len; i += 8) {
        const int64_t left = seg.len - i;
        __m256i a[P];
        if (left >= 8) {
          for (int p = 0; p < P; ++p)
            a[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp[p] + seg.x_off + i));
          for (int q = 0; q < Q; ++q) {
            const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp[q] + seg.w_off + i));
            for (int p = 0; p < P; ++p)
              acc[p][q] = _mm256_add_epi64(acc[p][q], popcount_epi64(_mm256_xor_si256(a[p], wv)));
          }
        } else {
          const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane_index);
          for (int p = 0; p < P; ++p)
            a[p] = _mm256_maskload_epi32(reinterpret_cast<const int*>(xp[p] + seg.x_off + i), mask);
          for (int q = 0; q < Q; ++q) {
            const __m256i wv = _mm256_maskload_epi32(reinterpret_cast<const int*>(wp[q] + seg.w_off + i), mask);
            for (int p = 0; p < P; ++p)
              acc[p][q] = _mm256_add_epi64(acc[p][q], popcount_epi64(_mm256_xor_si256(a[p], wv)));
          }
        }
      }
    }
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) D[p * Q + q] = horizontal_sum(acc[p][q]);
  }
};

}  // namespace

void binary_conv2d_tiles_avx2(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                              const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  detail::conv_tiles<Avx2Kernel>(s, x, w, scale, bias, out, tile_begin, tile_end);
}

}  // namespace hidiff::core
HIDIFF_TARGET_END

#else

namespace hidiff::core {
void binary_conv2d_tiles_avx2(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                              const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  binary_conv2d_tiles_portable(s, x, w, scale, bias, out, tile_begin, tile_end);
}
}  // namespace hidiff::core

#endif
