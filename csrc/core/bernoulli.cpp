// Bernoulli step kernels: portable C++, and AVX2 (8 lanes) / AVX-512 (16 lanes) versions of the
// same arithmetic. The vector paths evaluate Philox with 32x32->64-bit multiplies of the even and
// odd lanes, and the mean with the float operations of common::bernoulli_mean() in the same order
// (the build uses -ffp-contract=off, so no multiply-add is fused); the clamps keep the constant as
// the first operand of min/max, which returns the second operand when either is NaN, so a NaN mean
// propagates and draws 0 exactly as in the scalar code.
#include "bernoulli.h"

#include <algorithm>
#include <cstdint>

#include "cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include "isa_target.h"
#endif

namespace hidiff::core {
namespace {

using common::BernoulliMode;
using common::kPhiloxM0;
using common::kPhiloxM1;
using common::kPhiloxRounds;
using common::kPosteriorEps;

// Philox round keys: key[r] = (lo32(seed) + r * W0, hi32(seed) + r * W1) modulo 2^32.
struct RoundKeys {
  uint32_t k0[kPhiloxRounds];
  uint32_t k1[kPhiloxRounds];
  explicit RoundKeys(uint64_t seed) {
    uint32_t a = static_cast<uint32_t>(seed), b = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < kPhiloxRounds; ++r, a += common::kPhiloxW0, b += common::kPhiloxW1) {
      k0[r] = a;
      k1[r] = b;
    }
  }
};

// Calls body(n, a, b, first, last) for each sample n overlapping [begin, end), with its coefficients
// and the part [first, last) of the range that belongs to it.
template <typename Body>
void for_each_sample_segment(const float* coef, int64_t inner_size, int64_t begin, int64_t end, Body&& body) {
  for (int64_t i = begin; i < end;) {
    const int64_t n = i / inner_size;
    const int64_t last = std::min(end, (n + 1) * inner_size);
    body(coef[2 * n], coef[2 * n + 1], i, last);
    i = last;
  }
}

void step_scalar(const float* y_t, const float* eps_hat, const float* prior, float a, float b, BernoulliMode mode,
                 uint64_t seed, uint64_t offset, float* out, int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) {
    const uint64_t index = offset + static_cast<uint64_t>(i);
    out[i] = common::bernoulli_sample(y_t[i], eps_hat[i], prior[i], a, b, mode, seed, index);
  }
}

void bernoulli_step_portable(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                             int64_t inner_size, BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                             int64_t begin, int64_t end) {
  for_each_sample_segment(coef, inner_size, begin, end, [&](float a, float b, int64_t first, int64_t last) {
    step_scalar(y_t, eps_hat, prior, a, b, mode, seed, offset, out, first, last);
  });
}

}  // namespace
}  // namespace hidiff::core

#if defined(__x86_64__)

HIDIFF_TARGET_BEGIN("avx2")
namespace hidiff::core {
namespace {

// High and low 32 bits of m * x in each of the 8 lanes.
inline void mulhilo8(__m256i m, __m256i x, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(x, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// First output word of Philox4x32-10 for counters (c0, c1, 0, 0).
inline __m256i philox_r0_8(__m256i c0, __m256i c1, const RoundKeys& keys) {
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  for (int r = 0; r < kPhiloxRounds; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(m0, c0, &hi0, &lo0);
    mulhilo8(m1, c2, &hi1, &lo1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(keys.k0[r])));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(keys.k1[r])));
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return c0;
}

inline __m256 abs8(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// bernoulli_mean() on 8 lanes, operation for operation.
inline __m256 mean8(__m256 y, __m256 e, __m256 p, __m256 a, __m256 b, BernoulliMode mode) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 y0_hat = abs8(_mm256_sub_ps(y, e));
  if (mode == BernoulliMode::Ddim) {
    const __m256 m = _mm256_add_ps(_mm256_mul_ps(a, y), _mm256_mul_ps(b, y0_hat));
    return _mm256_min_ps(one, _mm256_max_ps(_mm256_setzero_ps(), m));
  }
  const __m256 not_y = _mm256_sub_ps(one, y);
  const __m256 mix = _mm256_mul_ps(_mm256_sub_ps(one, a), abs8(_mm256_sub_ps(not_y, p)));
  const __m256 one_minus_b = _mm256_sub_ps(one, b);
  const __m256 prior1 = _mm256_add_ps(_mm256_mul_ps(b, y0_hat), _mm256_mul_ps(one_minus_b, p));
  const __m256 prior0 =
      _mm256_add_ps(_mm256_mul_ps(b, _mm256_sub_ps(one, y0_hat)), _mm256_mul_ps(one_minus_b, _mm256_sub_ps(one, p)));
  const __m256 theta1 = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(a, y), mix), prior1);
  const __m256 theta0 = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(a, not_y), mix), prior0);
  const __m256 sum = _mm256_add_ps(theta0, theta1);
  return _mm256_div_ps(theta1, _mm256_max_ps(_mm256_set1_ps(kPosteriorEps), sum));
}

void bernoulli_step_avx2(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                         int64_t inner_size, BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                         int64_t begin, int64_t end) {
  const RoundKeys keys(seed);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 scale = _mm256_set1_ps(0x1p-24f);
  for_each_sample_segment(coef, inner_size, begin, end, [&](float a_s, float b_s, int64_t first, int64_t last) {
    const __m256 a = _mm256_set1_ps(a_s), b = _mm256_set1_ps(b_s);
    int64_t i = first;
    for (; i + 8 <= last; i += 8) {
      const uint64_t index = offset + static_cast<uint64_t>(i);
      if (static_cast<uint32_t>(index) > 0xFFFFFFFFu - 7u) {
        // The low counter word wraps inside this block: the scalar code carries into the high word.
        step_scalar(y_t, eps_hat, prior, a_s, b_s, mode, seed, offset, out, i, i + 8);
        continue;
      }
      const __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(index))), lane);
      const __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(index >> 32)));
      const __m256i r0 = philox_r0_8(c0, c1, keys);
      const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(r0, 8)), scale);
      const __m256 mean = mean8(_mm256_loadu_ps(y_t + i), _mm256_loadu_ps(eps_hat + i), _mm256_loadu_ps(prior + i),
                                a, b, mode);
      _mm256_storeu_ps(out + i, _mm256_and_ps(_mm256_cmp_ps(u, mean, _CMP_LT_OQ), _mm256_set1_ps(1.0f)));
    }
    step_scalar(y_t, eps_hat, prior, a_s, b_s, mode, seed, offset, out, i, last);
  });
}

}  // namespace
}  // namespace hidiff::core
HIDIFF_TARGET_END

HIDIFF_TARGET_BEGIN("avx512f")
namespace hidiff::core {
namespace {

// High and low 32 bits of m * x in each of the 16 lanes.
inline void mulhilo16(__m512i m, __m512i x, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(x, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

inline __m512i philox_r0_16(__m512i c0, __m512i c1, const RoundKeys& keys) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kPhiloxM1));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  for (int r = 0; r < kPhiloxRounds; ++r) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(m0, c0, &hi0, &lo0);
    mulhilo16(m1, c2, &hi1, &lo1);
    // Three-way XOR in one instruction (truth table 0x96 = a ^ b ^ c).
    const __m512i n0 = _mm512_ternarylogic_epi32(hi1, c1, _mm512_set1_epi32(static_cast<int>(keys.k0[r])), 0x96);
    const __m512i n2 = _mm512_ternarylogic_epi32(hi0, c3, _mm512_set1_epi32(static_cast<int>(keys.k1[r])), 0x96);
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return c0;
}

inline __m512 abs16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF)));
}

inline __m512 mean16(__m512 y, __m512 e, __m512 p, __m512 a, __m512 b, BernoulliMode mode) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 y0_hat = abs16(_mm512_sub_ps(y, e));
  if (mode == BernoulliMode::Ddim) {
    const __m512 m = _mm512_add_ps(_mm512_mul_ps(a, y), _mm512_mul_ps(b, y0_hat));
    return _mm512_min_ps(one, _mm512_max_ps(_mm512_setzero_ps(), m));
  }
  const __m512 not_y = _mm512_sub_ps(one, y);
  const __m512 mix = _mm512_mul_ps(_mm512_sub_ps(one, a), abs16(_mm512_sub_ps(not_y, p)));
  const __m512 one_minus_b = _mm512_sub_ps(one, b);
  const __m512 prior1 = _mm512_add_ps(_mm512_mul_ps(b, y0_hat), _mm512_mul_ps(one_minus_b, p));
  const __m512 prior0 =
      _mm512_add_ps(_mm512_mul_ps(b, _mm512_sub_ps(one, y0_hat)), _mm512_mul_ps(one_minus_b, _mm512_sub_ps(one, p)));
  const __m512 theta1 = _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(a, y), mix), prior1);
  const __m512 theta0 = _mm512_mul_ps(_mm512_add_ps(_mm512_mul_ps(a, not_y), mix), prior0);
  const __m512 sum = _mm512_add_ps(theta0, theta1);
  return _mm512_div_ps(theta1, _mm512_max_ps(_mm512_set1_ps(kPosteriorEps), sum));
}

void bernoulli_step_avx512(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                           int64_t inner_size, BernoulliMode mode, uint64_t seed, uint64_t offset, float* out,
                           int64_t begin, int64_t end) {
  const RoundKeys keys(seed);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 scale = _mm512_set1_ps(0x1p-24f);
  const __m512 one = _mm512_set1_ps(1.0f);
  for_each_sample_segment(coef, inner_size, begin, end, [&](float a_s, float b_s, int64_t first, int64_t last) {
    const __m512 a = _mm512_set1_ps(a_s), b = _mm512_set1_ps(b_s);
    for (int64_t i = first; i < last; i += 16) {
      // Masked loads and stores cover the tail, so every element takes the vector path.
      const __mmask16 valid = last - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (last - i)) - 1u);
      const uint64_t index = offset + static_cast<uint64_t>(i);
      const __m512i base = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(index)));
      const __m512i c0 = _mm512_add_epi32(base, lane);
      // Lanes whose low word wrapped around 2^32 carry into the high word.
      const __mmask16 carry = _mm512_cmplt_epu32_mask(c0, base);
      const __m512i hi = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(index >> 32)));
      const __m512i c1 = _mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1));
      const __m512i r0 = philox_r0_16(c0, c1, keys);
      const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(r0, 8)), scale);
      const __m512 mean = mean16(_mm512_maskz_loadu_ps(valid, y_t + i), _mm512_maskz_loadu_ps(valid, eps_hat + i),
                                 _mm512_maskz_loadu_ps(valid, prior + i), a, b, mode);
      _mm512_mask_storeu_ps(out + i, valid, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(u, mean, _CMP_LT_OQ), one));
    }
  });
}

}  // namespace
}  // namespace hidiff::core
HIDIFF_TARGET_END

#endif  // __x86_64__

namespace hidiff::core {

void bernoulli_step(const float* y_t, const float* eps_hat, const float* prior, const float* coef,
                    int64_t inner_size, BernoulliMode mode, uint64_t seed, uint64_t offset, float* out, int64_t begin,
                    int64_t end) {
  if (begin >= end) return;
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::Avx512:
      bernoulli_step_avx512(y_t, eps_hat, prior, coef, inner_size, mode, seed, offset, out, begin, end);
      return;
    case Isa::Avx2:
      bernoulli_step_avx2(y_t, eps_hat, prior, coef, inner_size, mode, seed, offset, out, begin, end);
      return;
    case Isa::Portable:
      break;
  }
#endif
  bernoulli_step_portable(y_t, eps_hat, prior, coef, inner_size, mode, seed, offset, out, begin, end);
}

}  // namespace hidiff::core
