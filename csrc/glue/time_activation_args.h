// Argument checks of time_activation, shared by the CPU and the CUDA glue (ATen only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

#include "devices.h"

namespace hidiff::glue {

// Checks u, a floating (N, C, ...) tensor on `backend`, and its floating parameters on the same
// device: gamma and zeta of shape (N, C), beta of shape (C,).
inline void check_time_activation_args(const at::Tensor& u, const at::Tensor& gamma, const at::Tensor& zeta,
                                       const at::Tensor& beta, at::DeviceType backend) {
  check_backend(u, "u", backend);
  TORCH_CHECK_TYPE(at::isFloatingType(u.scalar_type()), "u must be a floating tensor, got ", u.scalar_type());
  TORCH_CHECK_VALUE(u.dim() >= 2, "u must be (N, C, ...) with at least 2 dims, got shape ", u.sizes());
  const int64_t N = u.size(0), C = u.size(1);
  const auto check_parameter = [&](const at::Tensor& t, const char* name) {
    check_same_device(t, name, u, "u");
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
  };
  for (const auto& [t, name] : {std::pair{&gamma, "gamma"}, std::pair{&zeta, "zeta"}}) {
    check_parameter(*t, name);
    TORCH_CHECK_VALUE(t->dim() == 2 && t->size(0) == N && t->size(1) == C, name, " must have shape (N, C) = (", N,
                      ", ", C, "), got ", t->sizes());
  }
  check_parameter(beta, "beta");
  TORCH_CHECK_VALUE(beta.dim() == 1 && beta.size(0) == C, "beta must have shape (C,) = (", C, ",), got ",
                    beta.sizes());
}

}  // namespace hidiff::glue
