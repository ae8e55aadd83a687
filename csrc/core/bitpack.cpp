#include "bitpack.h"

#include <algorithm>

namespace hidiff::core {
namespace {

// Pixels packed per pass over the channels of a row: the word buffer stays in L1 and the inner
// loop over pixels is contiguous, so the compiler vectorises the compare-shift-or.
constexpr int64_t kPixelBlock = 256;

}  // namespace

// The NCHW packer streams whole maps (a 128 x 256 x 256 block input is 32 MiB): GCC compiles it once
// per instruction set and the loader picks the clone the CPU runs (function multi-versioning), so its
// compare-shift-or uses 16 lanes on AVX-512 instead of the 4 of the baseline x86-64 target. Every clone
// computes the same bits; helpers it calls out of line stay baseline code.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HIDIFF_PACK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HIDIFF_PACK_CLONES
#endif

HIDIFF_PACK_CLONES

void binarize_pack_nchw(const float* x, const float* threshold, int64_t threshold_stride_n, int64_t C,
                        int64_t H, int64_t W, uint32_t* out, int64_t row_begin, int64_t row_end) {
  const int64_t words = common::packed_words(C);
  uint32_t block[kPixelBlock];
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / H;
    const int64_t h = row % H;
    const float* thr_n = threshold ? threshold + n * threshold_stride_n : nullptr;
    uint32_t* out_row = out + row * W * words;
    for (int64_t w0 = 0; w0 < W; w0 += kPixelBlock) {
      const int64_t pixels = std::min(kPixelBlock, W - w0);
      for (int64_t j = 0; j < words; ++j) {
        std::fill(block, block + pixels, 0u);
        const int64_t c_end = std::min(C, 32 * j + 32);
        for (int64_t c = 32 * j; c < c_end; ++c) {
          const float t = thr_n ? thr_n[c] : 0.0f;
          const float* src = x + ((n * C + c) * H + h) * W + w0;
          const uint32_t shift = static_cast<uint32_t>(c - 32 * j);
          for (int64_t p = 0; p < pixels; ++p) {
            block[p] |= static_cast<uint32_t>(common::packed_bit(src[p], t)) << shift;
          }
        }
        for (int64_t p = 0; p < pixels; ++p) out_row[(w0 + p) * words + j] = block[p];
      }
    }
  }
}

void binarize_pack_nhwc(const float* x, const float* threshold, int64_t threshold_stride_n, int64_t C,
                        int64_t H, int64_t W, uint32_t* out, int64_t pixel_begin,
                        int64_t pixel_end) {
  const int64_t words = common::packed_words(C);
  for (int64_t pixel = pixel_begin; pixel < pixel_end; ++pixel) {
    const int64_t n = pixel / (H * W);
    const float* thr_n = threshold ? threshold + n * threshold_stride_n : nullptr;
    const float* src = x + pixel * C;
    uint32_t* dst = out + pixel * words;
    for (int64_t j = 0; j < words; ++j) {
      const int64_t c_end = std::min(C, 32 * j + 32);
      uint32_t word = 0;
      for (int64_t c = 32 * j; c < c_end; ++c) {
        const float t = thr_n ? thr_n[c] : 0.0f;
        word |= static_cast<uint32_t>(common::packed_bit(src[c], t)) << static_cast<uint32_t>(c - 32 * j);
      }
      dst[j] = word;
    }
  }
}

}  // namespace hidiff::core
