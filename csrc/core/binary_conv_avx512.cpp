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

  // Vectorised epilogue for full 2 x 8 blocks: convert, scale and bias 16 outputs at once and
  // store them as one (pixel, pixel + 1) pair per output channel. Same arithmetic as
  // ScalarEpilogue (separate multiply and add, round-to-nearest conversion), so same bits.
  template <int P, int Q>
  static void store(const detail::RowContext& r, const int64_t* D, int64_t ow, int64_t o, int64_t taps) {
    if constexpr (P == 2 && Q == 8) {
      const __m512i full = _mm512_set1_epi64(taps * r.s->C);
      __m256 v[2];
      for (int p = 0; p < 2; ++p) {
        const __m512i disagree = _mm512_loadu_si512(D + p * Q);
        // Counts fit in int32: the glue rejects in_channels * KH * KW >= 2^31.
        const __m512i count = _mm512_sub_epi64(full, _mm512_slli_epi64(disagree, 1));
        v[p] = _mm256_cvtepi32_ps(_mm512_cvtepi64_epi32(count));
        if (r.scale) v[p] = _mm256_mul_ps(v[p], _mm256_loadu_ps(r.scale + o));
        if (r.bias) v[p] = _mm256_add_ps(v[p], _mm256_loadu_ps(r.bias + o));
      }
      // Per 128-bit half, unpacklo gives channels (0, 1) | (4, 5) and unpackhi (2, 3) | (6, 7),
      // each as the pair (pixel ow, pixel ow + 1).
      const __m256 lo = _mm256_unpacklo_ps(v[0], v[1]);
      const __m256 hi = _mm256_unpackhi_ps(v[0], v[1]);
      const __m128 pairs[4] = {_mm256_castps256_ps128(lo), _mm256_castps256_ps128(hi), _mm256_extractf128_ps(lo, 1),
                               _mm256_extractf128_ps(hi, 1)};
      const int64_t plane = r.Ho * r.Wo;
      float* dst = r.out + ((r.n * r.s->O + o) * r.Ho + r.oh) * r.Wo + ow;
      for (int k = 0; k < 4; ++k) {
        _mm_storel_pi(reinterpret_cast<__m64*>(dst + (2 * k) * plane), pairs[k]);
        _mm_storeh_pi(reinterpret_cast<__m64*>(dst + (2 * k + 1) * plane), pairs[k]);
      }
    } else {
      detail::store_outputs<P, Q>(r, D, ow, o, taps);
    }
  }

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
