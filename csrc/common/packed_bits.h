// The packed bit layout and the binarisation rule (paper Eq. 15), shared by every backend.
//
// Channel c of a pixel lives in word c / 32, bit c % 32; bit 1 means -1 and bit 0 means +1; the
// unused high bits of the last word are 0. A value binarises to +1 if it is greater than its
// threshold, else to -1 (so a tie and NaN give -1).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace hidiff::common {

// Words that hold `channels` channels: ceil(channels / 32).
template <typename Int>
HIDIFF_HOST_DEVICE HIDIFF_INLINE Int packed_words(Int channels) {
  return (channels + 31) / 32;
}

// Bits of word `word` that hold channels < `channels` (all of them except in the last word).
template <typename Int>
HIDIFF_HOST_DEVICE HIDIFF_INLINE uint32_t channel_mask(Int word, Int channels) {
  const Int remaining = channels - word * 32;
  return remaining >= 32 ? 0xFFFFFFFFu : (remaining <= 0 ? 0u : (1u << remaining) - 1u);
}

// Bits of the last word that hold channels (all 32 when `channels` is a multiple of 32).
template <typename Int>
HIDIFF_HOST_DEVICE HIDIFF_INLINE uint32_t last_word_mask(Int channels) {
  return channel_mask(packed_words(channels) - 1, channels);
}

// The packed bit of `value`: 0 (+1) if it is greater than `threshold`, else 1 (-1). Written as a
// negated comparison so that NaN gives 1.
HIDIFF_HOST_DEVICE HIDIFF_INLINE bool packed_bit(float value, float threshold) { return !(value > threshold); }

}  // namespace hidiff::common
