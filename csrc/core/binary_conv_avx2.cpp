// AVX2 micro-kernel: 8 lanes (one 256-bit vector of 32-bit words) x 1 output channel, with
// Harley-Seal carry-save accumulation.
//
// AVX2 has no per-lane popcount: the nibble-table popcount (PSHUFB) costs six instructions per
// vector. Carry-save adders (five bitwise instructions each, spread over three ports) fold eight
// XOR results into ones/twos/fours/eights bit planes, so the table popcount runs once per eight
// steps on the eights plane; byte counters are widened to 32-bit lanes every 31 groups, before
// they can overflow, and once at the end for the low planes.
#include <cstdint>

#include "binary_conv.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "isa_target.h"

HIDIFF_TARGET_BEGIN("avx2,popcnt")
#include "conv_driver.h"

namespace hidiff::core {
namespace {

// Per-byte popcount of v (0..8 in each byte).
inline __m256i popcount_bytes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_add_epi8(lo, hi);
}

// Sums the four byte counters of each 32-bit lane.
inline __m256i widen_bytes(__m256i bytes) {
  const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi8(1));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Carry-save adder: (high, low) = a + b + c, bit by bit.
inline void csa(__m256i& high, __m256i& low, __m256i a, __m256i b, __m256i c) {
  const __m256i u = _mm256_xor_si256(a, b);
  high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u, c));
  low = _mm256_xor_si256(u, c);
}

struct Avx2Kernel {
  static constexpr int kVectors = 1;
  static constexpr int64_t kLanes = 8;
  static constexpr int kChannels = 1;

  template <int Q, int P>
  static void run(const uint32_t* x, const int64_t* offsets, const uint32_t* w, int64_t steps, int32_t* D) {
    static_assert(Q == 1 && P == 1, "the AVX2 kernel computes one vector of one output channel per call");
    const auto word = [&](int64_t k) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + offsets[k]));
      return _mm256_xor_si256(a, _mm256_set1_epi32(static_cast<int>(w[k])));
    };
    __m256i ones = _mm256_setzero_si256(), twos = ones, fours = ones;
    __m256i eights_bytes = ones, total = ones;
    int64_t k = 0;
    int groups = 0;
    for (; k + 8 <= steps; k += 8) {
      __m256i twos_a, twos_b, fours_a, fours_b, eights;
      csa(twos_a, ones, ones, word(k), word(k + 1));
      csa(twos_b, ones, ones, word(k + 2), word(k + 3));
      csa(fours_a, twos, twos, twos_a, twos_b);
      csa(twos_a, ones, ones, word(k + 4), word(k + 5));
      csa(twos_b, ones, ones, word(k + 6), word(k + 7));
      csa(fours_b, twos, twos, twos_a, twos_b);
      csa(eights, fours, fours, fours_a, fours_b);
      eights_bytes = _mm256_add_epi8(eights_bytes, popcount_bytes(eights));
      if (++groups == 31) {  // 31 * 8 = 248 fits a byte
        total = _mm256_add_epi32(total, _mm256_slli_epi32(widen_bytes(eights_bytes), 3));
        eights_bytes = _mm256_setzero_si256();
        groups = 0;
      }
    }
    total = _mm256_add_epi32(total, _mm256_slli_epi32(widen_bytes(eights_bytes), 3));
    // The low bit planes (at most 8 + 2 * 8 + 4 * 8 = 56 per byte) and the last (fewer than 8) steps.
    __m256i rest = popcount_bytes(ones);
    rest = _mm256_add_epi8(rest, _mm256_add_epi8(popcount_bytes(twos), popcount_bytes(twos)));
    const __m256i f = popcount_bytes(fours);
    rest = _mm256_add_epi8(rest, _mm256_add_epi8(_mm256_add_epi8(f, f), _mm256_add_epi8(f, f)));
    total = _mm256_add_epi32(total, widen_bytes(rest));
    __m256i tail = _mm256_setzero_si256();
    for (; k < steps; ++k) tail = _mm256_add_epi8(tail, popcount_bytes(word(k)));
    total = _mm256_add_epi32(total, widen_bytes(tail));
    _mm256_store_si256(reinterpret_cast<__m256i*>(D), total);
  }
};

}  // namespace

HIDIFF_DEFINE_CONV_ENTRY_POINTS(avx2, Avx2Kernel)

}  // namespace hidiff::core
HIDIFF_TARGET_END

#else

namespace hidiff::core {
void conv_tap_popcount_avx2(const ConvPlan& plan, const uint32_t* w, int32_t* tap_popcount) {
  conv_tap_popcount_portable(plan, w, tap_popcount);
}
void conv_tiles_avx2(const ConvPlan& plan, const ConvWeights& weights, const uint32_t* planes,
                  const ConvEpilogue& epilogue, float* out, int64_t tile_begin, int64_t tile_end) {
  conv_tiles_portable(plan, weights, planes, epilogue, out, tile_begin, tile_end);
}
}  // namespace hidiff::core

#endif
