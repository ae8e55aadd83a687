// Philox4x32-10 (Salmon et al., SC'11, the Random123 definition) and the counter-based uniform of
// the Bernoulli step, shared by every backend and by hidiff_kernels/reference.py.
//
// Element i of a step under (seed, offset) uses key (lo32(seed), hi32(seed)) and counter
// (lo32(offset + i), hi32(offset + i), 0, 0); its uniform is (r0 >> 8) * 2^-24. A sample thus
// depends only on (seed, offset + i), never on how the elements are split over threads or blocks.
#pragma once

#include <cstdint>

#include "host_device.h"
#include "rounded_math.h"

namespace hidiff::common {

inline constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
inline constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
inline constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
inline constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;
inline constexpr int kPhiloxRounds = 10;

// A counter or output block of four words, and a key of two.
struct PhiloxBlock {
  uint32_t word[4];
};
struct PhiloxKey {
  uint32_t word[2];
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE PhiloxBlock philox4x32_10(PhiloxBlock ctr, PhiloxKey key) {
  // The rounds work on scalars, which the compilers keep in registers.
  uint32_t c0 = ctr.word[0], c1 = ctr.word[1], c2 = ctr.word[2], c3 = ctr.word[3];
  uint32_t key0 = key.word[0], key1 = key.word[1];
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    // The two 32 x 32 -> 64-bit products, in each compiler's cheapest form.
#if defined(__CUDA_ARCH__)
    const uint32_t hi0 = __umulhi(kPhiloxM0, c0), lo0 = kPhiloxM0 * c0;
    const uint32_t hi1 = __umulhi(kPhiloxM1, c2), lo1 = kPhiloxM1 * c2;
#else
    const uint64_t product0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t product1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(product0 >> 32), lo0 = static_cast<uint32_t>(product0);
    const uint32_t hi1 = static_cast<uint32_t>(product1 >> 32), lo1 = static_cast<uint32_t>(product1);
#endif
    c0 = hi1 ^ c1 ^ key0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ key1;
    c3 = lo0;
    key0 += kPhiloxW0;
    key1 += kPhiloxW1;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in [0, 1) of counter index `index` (= offset + i, modulo 2^64) under `seed`: the top 24
// bits of the first output word, times 2^-24, which is exact in float32.
HIDIFF_HOST_DEVICE HIDIFF_INLINE float counter_uniform(uint64_t seed, uint64_t index) {
  const PhiloxBlock r = philox4x32_10({{static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u}},
                                      {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}});
  return mul_rn(static_cast<float>(r.word[0] >> 8), 0x1p-24f);
}

}  // namespace hidiff::common
