// AVX-512 path: 512-bit XOR and VPOPCNTQ, masked loads for the tail of each span.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "binary_conv.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "isa_target.h"

HIDIFF_TARGET_BEGIN("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
#include "conv_driver.h"

namespace hidiff::core {
namespace {

using detail::Segment;

// Sums of the 8 lanes of each of a[0..7], as one vector (lane q = total of a[q]): a transpose-add
// tree of 21 instructions instead of 8 separate horizontal reductions.
inline __m512i reduce8(const __m512i* a) {
  __m512i pairs[4];
  for (int i = 0; i < 4; ++i) {
    pairs[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm512_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
  }
  // 128-bit lane k of pairs[i] holds partial sums of (a[2i], a[2i+1]); fold the lanes in two steps.
  const __m512i lo = _mm512_add_epi64(_mm512_shuffle_i64x2(pairs[0], pairs[1], 0x88),
                                      _mm512_shuffle_i64x2(pairs[0], pairs[1], 0xdd));
  const __m512i hi = _mm512_add_epi64(_mm512_shuffle_i64x2(pairs[2], pairs[3], 0x88),
                                      _mm512_shuffle_i64x2(pairs[2], pairs[3], 0xdd));
  return _mm512_add_epi64(_mm512_shuffle_i64x2(lo, hi, 0x88), _mm512_shuffle_i64x2(lo, hi, 0xdd));
}

struct Avx512Kernel {
  static constexpr int kPixels = 2;
  static constexpr int kChannels = 8;

  template <int P, int Q>
  static void run(const uint32_t* const* xp, const uint32_t* const* wp, const Segment* segs, int64_t nseg,
                  int64_t* D) {
    __m512i acc[P][Q];
    for (int p = 0; p < P; ++p)
      for (int q = 0; q < Q; ++q) acc[p][q] = _mm512_setzero_si512();
    for (int64_t s = 0; s < nseg; ++s) {
      const Segment seg = segs[s];
      for (int64_t i = 0; i < seg.len; i += 16) {
        const int64_t left = seg.len - i;
        // A full mask costs the same as a plain load, so one code path serves body and tail.
        const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
        __m512i a[P];
        for (int p = 0; p < P; ++p) a[p] = _mm512_maskz_loadu_epi32(mask, xp[p] + seg.x_off + i);
        for (int q = 0; q < Q; ++q) {
          const __m512i wv = _mm512_maskz_loadu_epi32(mask, wp[q] + seg.w_off + i);
          for (int p = 0; p < P; ++p)
            acc[p][q] = _mm512_add_epi64(acc[p][q], _mm512_popcnt_epi64(_mm512_xor_si512(a[p], wv)));
        }
      }
    }
    for (int p = 0; p < P; ++p) {
      if constexpr (Q == 8) {
        _mm512_storeu_si512(D + p * Q, reduce8(acc[p]));
      } else {
        for (int q = 0; q < Q; ++q) D[p * Q + q] = _mm512_reduce_add_epi64(acc[p][q]);
      }
    }
  }
};

}  // namespace

void binary_conv2d_tiles_avx512(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                                const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  detail::conv_tiles<Avx512Kernel>(s, x, w, scale, bias, out, tile_begin, tile_end);
}

}  // namespace hidiff::core
HIDIFF_TARGET_END

#else

namespace hidiff::core {
void binary_conv2d_tiles_avx512(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                                const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  binary_conv2d_tiles_portable(s, x, w, scale, bias, out, tile_begin, tile_end);
}
}  // namespace hidiff::core

#endif
