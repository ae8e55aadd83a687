// Argument checks of the binary convolution ops, shared by the CPU and the CUDA glue (ATen only).
//
// x_packed must be on the backend's device and every other tensor on the device of x_packed.
// Messages name the argument and what was expected, the same on every backend.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "../common/conv_epilogue.h"
#include "../common/conv_shape.h"
#include "../common/packed_bits.h"
#include "devices.h"

namespace hidiff::glue {

inline void check_packed_operand(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, " must be int32 packed bits, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be 4-D ", layout, ", got shape ", t.sizes());
}

// Checks the packed operands (x_packed on `backend`) and the geometry; returns the shape of the call.
inline common::ConvShape<int64_t> check_conv_args(const at::Tensor& x_packed, const at::Tensor& w_packed,
                                                  int64_t in_channels, at::IntArrayRef stride,
                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                  at::DeviceType backend) {
  check_backend(x_packed, "x_packed", backend);
  check_packed_operand(x_packed, "x_packed", "(N, H, W, words)");
  check_packed_operand(w_packed, "w_packed", "(O, KH, KW, words)");
  check_same_device(w_packed, "w_packed", x_packed, "x_packed");
  TORCH_CHECK_VALUE(in_channels > 0, "in_channels must be positive, got ", in_channels);
  const int64_t words = common::packed_words(in_channels);
  TORCH_CHECK_VALUE(x_packed.size(3) == words, "x_packed has ", x_packed.size(3), " words per pixel but in_channels=",
                    in_channels, " needs ", words);
  TORCH_CHECK_VALUE(w_packed.size(3) == words, "w_packed has ", w_packed.size(3), " words per tap but in_channels=",
                    in_channels, " needs ", words);
  // Bounded so that the output size below cannot overflow int64 (the same limits as ops.MAX_GEOMETRY).
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  const auto within = [&](at::IntArrayRef pair, int64_t low) {
    return pair.size() == 2 && pair[0] >= low && pair[1] >= low && pair[0] <= kMax && pair[1] <= kMax;
  };
  TORCH_CHECK_VALUE(within(stride, 1), "stride must be two positive ints in [1, ", kMax, "], got ", stride);
  TORCH_CHECK_VALUE(within(padding, 0), "padding must be two non-negative ints in [0, ", kMax, "], got ", padding);
  TORCH_CHECK_VALUE(within(dilation, 1), "dilation must be two positive ints in [1, ", kMax, "], got ", dilation);
  TORCH_CHECK_VALUE(in_channels <= kMax, "in_channels must be positive and at most ", kMax, ", got ", in_channels);
  TORCH_CHECK_VALUE(w_packed.size(1) > 0 && w_packed.size(2) > 0, "w_packed must have a non-empty kernel, got shape ",
                    w_packed.sizes());
  const common::ConvShape<int64_t> s{x_packed.size(0), x_packed.size(1), x_packed.size(2), in_channels,
                                     w_packed.size(0), w_packed.size(1), w_packed.size(2),
                                     stride[0],        stride[1],        padding[0],       padding[1],
                                     dilation[0],      dilation[1]};
  TORCH_CHECK_VALUE(s.out_h() <= kMax && s.out_w() <= kMax, "binary_conv2d output would be ", s.out_h(), "x",
                    s.out_w(), ", more than ", kMax, " rows or columns: input ", s.H, "x", s.W, ", padding ", padding,
                    ", stride ", stride);
  TORCH_CHECK_VALUE(s.out_h() > 0 && s.out_w() > 0, "binary_conv2d output would be empty: input ", s.H, "x", s.W,
                    ", kernel ", s.KH, "x", s.KW, ", padding ", padding, ", dilation ", dilation);
  TORCH_CHECK_VALUE(in_channels * s.KH * s.KW < (int64_t{1} << 31), "in_channels * KH * KW must be below 2^31, got ",
                    in_channels, " * ", s.KH, " * ", s.KW);
  return s;
}

// The optional tensors of the fused epilogue, checked and made contiguous float32.
struct EpilogueTensors {
  std::optional<at::Tensor> scale, bias, residual, gamma, zeta, beta, threshold;
  int64_t threshold_stride_n = 0;  // elements between samples of threshold: 0 (shared) or O
};

inline std::optional<at::Tensor> affine_operand(const std::optional<at::Tensor>& t, const char* name, int64_t O,
                                                const at::Tensor& like) {
  if (!t.has_value()) return std::nullopt;
  check_same_device(*t, name, like, "x_packed");
  TORCH_CHECK_TYPE(at::isFloatingType(t->scalar_type()), name, " must be a floating tensor, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == O, name, " must have shape (O,) = (", O, ",), got ", t->sizes());
  return t->to(at::kFloat).contiguous();
}

inline at::Tensor float32_operand(const at::Tensor& t, const char* name, at::IntArrayRef shape, const char* layout,
                                  const at::Tensor& like) {
  check_same_device(t, name, like, "x_packed");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", layout, " = ", shape, ", got ", t.sizes());
  return t.contiguous();
}

// Checks scale, bias (any floating dtype, (O,)) and the fused epilogue's residual (N, O, Ho, Wo),
// TA gamma, zeta (N, O) and beta (O,) (all or none), threshold (O,) or (N, O) (only with pack),
// all float32 except scale and bias.
inline EpilogueTensors check_epilogue_args(const common::ConvShape<int64_t>& s, const at::Tensor& x_packed,
                                           const std::optional<at::Tensor>& scale,
                                           const std::optional<at::Tensor>& bias,
                                           const std::optional<at::Tensor>& residual,
                                           const std::optional<at::Tensor>& gamma,
                                           const std::optional<at::Tensor>& zeta,
                                           const std::optional<at::Tensor>& beta,
                                           const std::optional<at::Tensor>& threshold, bool pack) {
  EpilogueTensors e;
  e.scale = affine_operand(scale, "scale", s.O, x_packed);
  e.bias = affine_operand(bias, "bias", s.O, x_packed);
  if (residual) e.residual = float32_operand(*residual, "residual", {s.N, s.O, s.out_h(), s.out_w()},
                                             "(N, O, Ho, Wo)", x_packed);
  const int given = int(gamma.has_value()) + int(zeta.has_value()) + int(beta.has_value());
  TORCH_CHECK_VALUE(given == 0 || given == 3, "gamma, zeta and beta (the TA epilogue) must be given together");
  if (given == 3) {
    e.gamma = float32_operand(*gamma, "gamma", {s.N, s.O}, "(N, O)", x_packed);
    e.zeta = float32_operand(*zeta, "zeta", {s.N, s.O}, "(N, O)", x_packed);
    e.beta = float32_operand(*beta, "beta", {s.O}, "(O,)", x_packed);
  }
  if (threshold) {
    TORCH_CHECK_VALUE(pack, "threshold is only used with pack=True (it binarises the output for the next layer)");
    check_same_device(*threshold, "threshold", x_packed, "x_packed");
    TORCH_CHECK_TYPE(threshold->scalar_type() == at::kFloat, "threshold must be float32, got ",
                     threshold->scalar_type());
    const bool per_channel = threshold->dim() == 1 && threshold->size(0) == s.O;
    const bool per_sample = threshold->dim() == 2 && threshold->size(0) == s.N && threshold->size(1) == s.O;
    TORCH_CHECK_VALUE(per_channel || per_sample, "threshold must have shape (O,) = (", s.O, ",) or (N, O) = (", s.N,
                      ", ", s.O, "), got ", threshold->sizes());
    e.threshold = threshold->contiguous();
    e.threshold_stride_n = per_sample ? s.O : 0;
  }
  return e;
}

inline const float* data_or_null(const std::optional<at::Tensor>& t) { return t ? t->data_ptr<float>() : nullptr; }

// The kernels' view of the checked tensors, which must stay alive during the call; `packed` is the
// binarised output, or nullptr when not packing.
inline common::ConvEpilogue epilogue_of(const EpilogueTensors& e, uint32_t* packed) {
  common::ConvEpilogue epilogue;
  epilogue.scale = data_or_null(e.scale);
  epilogue.bias = data_or_null(e.bias);
  epilogue.residual = data_or_null(e.residual);
  epilogue.gamma = data_or_null(e.gamma);
  epilogue.zeta = data_or_null(e.zeta);
  epilogue.beta = data_or_null(e.beta);
  epilogue.threshold = data_or_null(e.threshold);
  epilogue.threshold_stride_n = e.threshold_stride_n;
  epilogue.packed = packed;
  return epilogue;
}

}  // namespace hidiff::glue
