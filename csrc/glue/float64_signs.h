// float64 input of the binarisation, shared by the CPU and the CUDA glue (ATen only).
//
// The packing kernels compare in float32. For float64 input that would be wrong: rounding to
// float32 turns 1e-300 into 0 (so -1 instead of +1) and merges values closer than float32's
// resolution with their threshold. Such input is compared with its threshold in float64 here; the
// +-1 float32 result then packs to the same bits with threshold 0.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace hidiff::glue {

// +1 where x > threshold (compared in float64) else -1, as float32 in x's memory layout.
// `threshold` (None, (C,) or (N, C)) must already be checked.
inline at::Tensor float64_signs(const at::Tensor& x, const std::optional<at::Tensor>& threshold) {
  at::Tensor above;
  if (!threshold.has_value()) {
    above = x.gt(0);
  } else {
    const at::Tensor t = threshold->to(at::kDouble);
    above = x.gt(t.dim() == 1 ? t.view({1, -1, 1, 1}) : t.view({t.size(0), t.size(1), 1, 1}));
  }
  const auto options = x.options().dtype(at::kFloat);
  return at::where(above, at::scalar_tensor(1.0, options), at::scalar_tensor(-1.0, options));
}

}  // namespace hidiff::glue
