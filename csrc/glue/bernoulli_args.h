// Argument checks of bernoulli_step and the parsing of its mode, shared by the CPU and the CUDA
// glue (ATen only).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <string>
#include <utility>

#include "../common/bernoulli_mean.h"
#include "devices.h"

namespace hidiff::glue {

// The op's `mode` string as the kernels' enum; the only place that reads the string.
inline common::BernoulliMode parse_bernoulli_mode(c10::string_view mode) {
  if (mode == "posterior") return common::BernoulliMode::Posterior;
  TORCH_CHECK_VALUE(mode == "ddim", "mode must be one of ('posterior', 'ddim'), got '", std::string(mode), "'");
  return common::BernoulliMode::Ddim;
}

// Checks y_t, a float32 (N, ...) tensor on `backend`, eps_hat and prior of its shape and coef of
// shape (N, 2), all float32 on its device, and the counter offset; returns the mode.
inline common::BernoulliMode check_bernoulli_step_args(const at::Tensor& y_t, const at::Tensor& eps_hat,
                                                       const at::Tensor& prior, const at::Tensor& coef,
                                                       c10::string_view mode, int64_t offset,
                                                       at::DeviceType backend) {
  check_backend(y_t, "y_t", backend);
  for (const auto& [t, name] : {std::pair{&y_t, "y_t"}, std::pair{&eps_hat, "eps_hat"}, std::pair{&prior, "prior"}}) {
    check_same_device(*t, name, y_t, "y_t");
    TORCH_CHECK_TYPE(t->scalar_type() == at::kFloat, name, " must be float32, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->sizes() == y_t.sizes(), name, " must have the shape of y_t ", y_t.sizes(), ", got ",
                      t->sizes());
  }
  TORCH_CHECK_VALUE(y_t.dim() >= 1, "y_t must have a batch dimension (N, ...), got a 0-d tensor");
  check_same_device(coef, "coef", y_t, "y_t");
  TORCH_CHECK_TYPE(coef.scalar_type() == at::kFloat, "coef must be float32, got ", coef.scalar_type());
  const int64_t N = y_t.size(0);
  TORCH_CHECK_VALUE(coef.dim() == 2 && coef.size(0) == N && coef.size(1) == 2, "coef must have shape (N, 2) = (", N,
                    ", 2), got ", coef.sizes());
  const common::BernoulliMode parsed = parse_bernoulli_mode(mode);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
  return parsed;
}

// Like torch.bernoulli, a NaN probability is an error, not a silent 0: a NaN in y_t, eps_hat or prior
// makes the mean NaN, and "uniform < NaN" is false. One read of each input (a few percent of a step).
inline void check_bernoulli_step_finite(const at::Tensor& y_t, const at::Tensor& eps_hat, const at::Tensor& prior) {
  for (const auto& [t, name] : {std::pair{&y_t, "y_t"}, std::pair{&eps_hat, "eps_hat"}, std::pair{&prior, "prior"}}) {
    TORCH_CHECK_VALUE(!t->isnan().any().item<bool>(), "bernoulli_step: ", name,
                      " holds NaN (a probability must be a number; torch.bernoulli refuses NaN too)");
  }
}

}  // namespace hidiff::glue
