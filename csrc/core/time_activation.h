// Fused time-dependent activation TA (paper Eq. 16) over rows of a tensor; the formula is the one
// of every backend (csrc/common/time_activation.h).
#pragma once

#include <cstdint>

#include "../common/time_activation.h"

namespace hidiff::core {

// Rows [row_begin, row_end) of u viewed as (N * C) rows of `inner` contiguous elements.
//   u, out: (N, C, inner); gamma, zeta: (N, C); beta: (C,)
template <typename T>
void time_activation_rows(const T* u, const T* gamma, const T* zeta, const T* beta, T* out, int64_t C,
                          int64_t inner, int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const T g = gamma[row];
    const T z = zeta[row];
    const T b = beta[row % C];
    const T* src = u + row * inner;
    T* dst = out + row * inner;
    for (int64_t i = 0; i < inner; ++i) dst[i] = common::time_activation(src[i], g, z, b);
  }
}

}  // namespace hidiff::core
