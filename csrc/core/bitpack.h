// Fused binarisation (paper Eq. 15) and bit packing, with the bit layout and the rule of every
// backend (csrc/common/packed_bits.h). Activations are packed channels-last: (N, H, W, words) with
// words = ceil(C / 32).
#pragma once

#include <cstdint>

#include "../common/packed_bits.h"

namespace hidiff::core {

// Packs rows [row_begin, row_end) of an NCHW float tensor, a row being one (n, h) pair (row n * H + h;
// the batch size only bounds the range).
//   x:          (N, C, H, W) contiguous float32
//   threshold:  nullptr (threshold 0) or per-(n, c) values at threshold[n * threshold_stride_n + c]
//               (threshold_stride_n = 0 for a per-channel threshold shared by the batch)
//   out:        (N, H, W, words) int32, fully written for the rows in range
void binarize_pack_nchw(const float* x, const float* threshold, int64_t threshold_stride_n, int64_t C,
                        int64_t H, int64_t W, uint32_t* out, int64_t row_begin, int64_t row_end);

// Same contract for a channels-last float tensor (memory order N, H, W, C); a row is one pixel.
void binarize_pack_nhwc(const float* x, const float* threshold, int64_t threshold_stride_n, int64_t C,
                        int64_t H, int64_t W, uint32_t* out, int64_t pixel_begin,
                        int64_t pixel_end);

}  // namespace hidiff::core
