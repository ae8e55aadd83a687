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

// Per-byte popcounts (0..8) of v, by two nibble lookups with pshufb.
inline __m256i popcount_bytes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibble = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low_nibble);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibble);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi));
}

// Sums of the 4 lanes of each of a[0..3], as one vector (lane q = total of a[q]).
inline __m256i reduce4(const __m256i* a) {
  const __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[0], a[1]), _mm256_unpackhi_epi64(a[0], a[1]));
  const __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(a[2], a[3]), _mm256_unpackhi_epi64(a[2], a[3]));
  return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
}

inline int64_t horizontal_sum(__m256i v) {
  const __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  return _mm_cvtsi128_si64(sum) + _mm_extract_epi64(sum, 1);
}

struct Avx2Kernel : detail::ScalarEpilogue {
  static constexpr int kPixels = 2;
  static constexpr int kChannels = 4;
  // Byte counters grow by at most 8 per chunk: fold them into 64-bit totals every 31 chunks.
  static constexpr int kChunksPerFold = 31;

  template <int P, int Q>
  static void run(const uint32_t* const* xp, const uint32_t* const* wp, const Segment* segs, int64_t nseg,
                  int64_t* D) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i bytes[P][Q];
    __m256i total[P][Q];
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) bytes[p][q] = total[p][q] = zero;
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    int chunks = 0;
    for (int64_t s = 0; s < nseg; ++s) {
      const Segment seg = segs[s];
      for (int64_t i = 0; i < seg.len; i += 8) {
        const int64_t left = seg.len - i;
        __m256i a[P];
        __m256i wv[Q];
        if (left >= 8) {
          for (int p = 0; p < P; ++p)
            a[p] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp[p] + seg.x_off + i));
          for (int q = 0; q < Q; ++q)
            wv[q] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp[q] + seg.w_off + i));
        } else {
          const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), lane_index);
          for (int p = 0; p < P; ++p)
            a[p] = _mm256_maskload_epi32(reinterpret_cast<const int*>(xp[p] + seg.x_off + i), mask);
          for (int q = 0; q < Q; ++q)
            wv[q] = _mm256_maskload_epi32(reinterpret_cast<const int*>(wp[q] + seg.w_off + i), mask);
        }
        for (int q = 0; q < Q; ++q)
          for (int p = 0; p < P; ++p)
            bytes[p][q] = _mm256_add_epi8(bytes[p][q], popcount_bytes(_mm256_xor_si256(a[p], wv[q])));
        if (++chunks == kChunksPerFold) {
          chunks = 0;
          for (int p = 0; p < P; ++p)
            for (int q = 0; q < Q; ++q) {
              total[p][q] = _mm256_add_epi64(total[p][q], _mm256_sad_epu8(bytes[p][q], zero));
              bytes[p][q] = zero;
            }
        }
      }
    }
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) total[p][q] = _mm256_add_epi64(total[p][q], _mm256_sad_epu8(bytes[p][q], zero));
    for (int p = 0; p < P; ++p) {
      if constexpr (Q == 4) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(D + p * Q), reduce4(total[p]));
      } else {
        for (int q = 0; q < Q; ++q) D[p * Q + q] = horizontal_sum(total[p][q]);
      }
    }
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
