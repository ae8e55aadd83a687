// Fused time-dependent activation TA (paper Eq. 16), an RPReLU whose shifts depend on t:
//   TA(u) = u - gamma + zeta            if u > gamma
//           beta * (u - gamma) + zeta   otherwise
// with gamma, zeta per (sample, channel) and beta per channel.
#pragma once

#include <cstdint>

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
    for (int64_t i = 0; i < inner; ++i) {
      const T shifted = src[i] - g;
      dst[i] = src[i] > g ? shifted + z : b * shifted + z;
    }
  }
}

}  // namespace hidiff::core
