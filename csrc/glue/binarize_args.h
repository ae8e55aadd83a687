// Argument checks of binarize_pack and pack_weight, shared by the CPU and the CUDA glue (ATen only).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "devices.h"

namespace hidiff::glue {

// The threshold of a binarisation as the kernels read it: float32 at data()[n * stride_n + c].
struct BinarizeThreshold {
  std::optional<at::Tensor> values;  // contiguous float32 (C,) or (N, C); none means 0
  int64_t stride_n = 0;              // 0 (one threshold per channel) or C (one per sample and channel)

  const float* data() const { return values ? values->data_ptr<float>() : nullptr; }
};

// Checks x, a floating (N, C, H, W) tensor on `backend` with C >= 1, and its optional threshold of
// shape (C,) or (N, C) on the same device; returns the threshold as the kernels read it.
inline BinarizeThreshold check_binarize_args(const at::Tensor& x, const std::optional<at::Tensor>& threshold,
                                             at::DeviceType backend) {
  check_backend(x, "x", backend);
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK_VALUE(C > 0, "x must have at least one channel, got shape ", x.sizes());
  if (!threshold.has_value()) return {};
  const at::Tensor& t = *threshold;
  check_same_device(t, "threshold", x, "x");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "threshold must be a floating tensor, got ",
                   t.scalar_type());
  const bool per_channel = t.dim() == 1 && t.size(0) == C;
  const bool per_sample = t.dim() == 2 && t.size(0) == N && t.size(1) == C;
  TORCH_CHECK_VALUE(per_channel || per_sample, "threshold must have shape (C,) = (", C, ",) or (N, C) = (", N, ", ",
                    C, "), got ", t.sizes());
  return {t.to(at::kFloat).contiguous(), per_sample ? C : 0};
}

// Checks w, a floating (O, I, KH, KW) tensor on `backend` with I >= 1.
inline void check_pack_weight_args(const at::Tensor& w, at::DeviceType backend) {
  check_backend(w, "w", backend);
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "w must be a floating tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D (O, I, KH, KW), got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(1) > 0, "w must have at least one input channel, got shape ", w.sizes());
}

}  // namespace hidiff::glue
