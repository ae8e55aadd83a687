// The time-dependent activation TA (paper Eq. 16), an RPReLU whose shifts depend on t:
//   TA(u) = u - gamma + zeta            if u > gamma
//           beta * (u - gamma) + zeta   otherwise
// with gamma, zeta per (sample, channel) and beta per channel; shared by every backend.
#pragma once

#include "host_device.h"
#include "rounded_math.h"

namespace hidiff::common {

// TA of one element, in the reference's order of rounded operations: s = u - gamma, then s + zeta
// or beta * s + zeta. The slope 1 of the upper branch is multiplied in: 1 * s is exactly s, so the
// result equals both branches bit for bit, and a loop over elements selects a slope instead of one
// of two results, which the CPU compilers vectorise.
template <typename T>
HIDIFF_HOST_DEVICE HIDIFF_INLINE T time_activation(T u, T gamma, T zeta, T beta) {
  const T shifted = sub_rn(u, gamma);
  const T slope = u > gamma ? T(1) : beta;
  return add_rn(mul_rn(slope, shifted), zeta);
}

}  // namespace hidiff::common
