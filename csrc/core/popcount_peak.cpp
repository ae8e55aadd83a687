// Register-only loops of the three popcount paths (see popcount_peak.h). Each iteration mirrors
// one step of the matching convolution micro-kernel: the same lane vectors, accumulator count and
// popcount method; the weight word changes every iteration so nothing is loop-invariant.
#include "popcount_peak.h"

#include <cstdint>

#include "cpu_features.h"
#include "isa_target.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace hidiff::core {
namespace {

// Weight words broadcast from memory, as the micro-kernels do (an L1-resident table).
constexpr int kTable = 256;
struct WeightTable {
  uint32_t words[kTable];
  WeightTable() {
    for (int i = 0; i < kTable; ++i) words[i] = 0x85ebca6bu * static_cast<uint32_t>(i + 1);
  }
};
const WeightTable& weight_table() {
  static const WeightTable table;
  return table;
}

int64_t peak_portable(int64_t iterations, uint64_t* checksum) {
  uint32_t acc[4][16] = {};
  uint32_t lanes[16];
  for (int i = 0; i < 16; ++i) lanes[i] = 0x9e3779b9u * static_cast<uint32_t>(i + 1);
  for (int64_t it = 0; it < iterations; ++it) {
    for (int q = 0; q < 4; ++q) {
      const uint32_t w = weight_table().words[(it * 4 + q) % kTable];
      for (int i = 0; i < 16; ++i) {
        uint32_t v = lanes[i] ^ w;
        v = v - ((v >> 1) & 0x55555555u);
        v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
        acc[q][i] += (((v + (v >> 4)) & 0x0f0f0f0fu) * 0x01010101u) >> 24;
      }
    }
  }
  uint64_t sum = 0;
  for (auto& row : acc)
    for (uint32_t v : row) sum += v;
  *checksum = sum;
  return iterations * 4 * 16 * 32;
}

#if defined(__x86_64__)
HIDIFF_TARGET_BEGIN("avx2")
int64_t peak_avx2(int64_t iterations, uint64_t* checksum) {
  // The direct nibble-table popcount of one 256-bit vector per step (what Harley-Seal reduces).
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i a = _mm256_setr_epi32(1, 3, 5, 7, 11, 13, 17, 19);
  const uint32_t* table_words = weight_table().words;
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
  for (int64_t it = 0; it < iterations; ++it) {
    for (int q = 0; q < 4; ++q) {
      const int32_t w = static_cast<int32_t>(table_words[(it * 4 + q) % kTable]);
      const __m256i v = _mm256_xor_si256(a, _mm256_set1_epi32(w));
      const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
      const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
      // Byte counts summed per 64-bit lane: exact for any iteration count.
      acc[q] = _mm256_add_epi64(acc[q], _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256()));
    }
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3])));
  *checksum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  return iterations * 4 * 256;
}
HIDIFF_TARGET_END

HIDIFF_TARGET_BEGIN("avx512f,avx512bw,avx512vpopcntdq,avx2,popcnt")
int64_t peak_avx512(int64_t iterations, uint64_t* checksum) {
  // Three lane vectors against eight weight words: the 24 accumulators of the conv micro-kernel.
  __m512i acc[3][8];
  for (auto& row : acc)
    for (auto& v : row) v = _mm512_setzero_si512();
  const __m512i a[3] = {_mm512_set1_epi32(0x12345678), _mm512_set1_epi32(0x0f0f1234), _mm512_set1_epi32(0x70f0a5c3)};
  const uint32_t* table_words = weight_table().words;
  for (int64_t it = 0; it < iterations; ++it) {
    const uint32_t* row = table_words + (it * 8) % kTable;
    for (int q = 0; q < 8; ++q) {
      const __m512i w = _mm512_set1_epi32(static_cast<int32_t>(row[q]));
      for (int p = 0; p < 3; ++p) acc[p][q] = _mm512_add_epi32(acc[p][q], _mm512_popcnt_epi32(_mm512_xor_si512(a[p], w)));
    }
  }
  __m512i total = _mm512_setzero_si512();
  for (auto& row : acc)
    for (auto& v : row) total = _mm512_add_epi64(total, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(v)));
  *checksum = static_cast<uint64_t>(_mm512_reduce_add_epi64(total));
  return iterations * 24 * 512;
}
HIDIFF_TARGET_END
#endif

}  // namespace

int64_t popcount_peak(int64_t iterations, uint64_t* checksum) {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      return peak_avx512(iterations, checksum);
    case Isa::Avx2:
      return peak_avx2(iterations, checksum);
    case Isa::Portable:
      break;
  }
#endif
  return peak_portable(iterations, checksum);
}

}  // namespace hidiff::core
