// The fused epilogue of binary_conv2d_fused, shared by every backend: its operands, which optional
// steps a call has, and its float32 operations in the reference's order:
//   u = count * scale[o] + bias[o] + residual[n, o, oh, ow]   (each step only when given)
//   out = TA(u) with gamma[n, o], zeta[n, o], beta[o]         (when gamma is given)
//   packed bit of (n, oh, ow, o) = packed_bit(out, threshold)  (when packed is given)
// A skipped step is skipped, not replaced by * 1 or + 0: adding 0 would turn a -0 result into +0.
#pragma once

#include <cstdint>

#include "host_device.h"
#include "rounded_math.h"
#include "time_activation.h"

namespace hidiff::common {

// The operands; every pointer is optional (nullptr).
struct ConvEpilogue {
  const float* scale = nullptr;      // (O,)
  const float* bias = nullptr;       // (O,)
  const float* residual = nullptr;   // (N, O, Ho, Wo)
  const float* gamma = nullptr;      // (N, O); zeta and beta are given with it
  const float* zeta = nullptr;       // (N, O)
  const float* beta = nullptr;       // (O,)
  const float* threshold = nullptr;  // threshold[n * threshold_stride_n + o]; nullptr means 0
  int64_t threshold_stride_n = 0;    // 0 (one threshold per channel) or O (one per sample and channel)
  uint32_t* packed = nullptr;        // (N, Ho, Wo, ceil(O / 32)) binarised output, or nullptr
};

// Which optional steps a call has. Kernels that specialise their loops on the steps pass
// compile-time constants here, which fold the branches of epilogue_value() away.
struct EpilogueSteps {
  bool scale, bias, residual, activation;
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE EpilogueSteps epilogue_steps(const ConvEpilogue& e) {
  return {e.scale != nullptr, e.bias != nullptr, e.residual != nullptr, e.gamma != nullptr};
}

// The operands of output channel o of sample n, the same for all its pixels (so a loop over pixels
// reads them once); those of the steps a call does not have are not read.
struct ChannelOperands {
  float scale, bias, gamma, zeta, beta;
};

HIDIFF_HOST_DEVICE HIDIFF_INLINE ChannelOperands channel_operands(const ConvEpilogue& e, EpilogueSteps steps,
                                                                  int64_t n, int64_t o, int64_t O) {
  ChannelOperands c{1.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  if (steps.scale) c.scale = e.scale[o];
  if (steps.bias) c.bias = e.bias[o];
  if (steps.activation) {
    c.gamma = e.gamma[n * O + o];
    c.zeta = e.zeta[n * O + o];
    c.beta = e.beta[o];
  }
  return c;
}

// The output of one element from its +-1 count; `residual` is read only when steps.residual.
HIDIFF_HOST_DEVICE HIDIFF_INLINE float epilogue_value(int32_t count, EpilogueSteps steps, const ChannelOperands& c,
                                                      float residual) {
  float u = static_cast<float>(count);
  if (steps.scale) u = mul_rn(u, c.scale);
  if (steps.bias) u = add_rn(u, c.bias);
  if (steps.residual) u = add_rn(u, residual);
  if (steps.activation) u = time_activation(u, c.gamma, c.zeta, c.beta);
  return u;
}

// The threshold that binarises output channel o of sample n (0 when none is given).
HIDIFF_HOST_DEVICE HIDIFF_INLINE float output_threshold(const ConvEpilogue& e, int64_t n, int64_t o) {
  return e.threshold ? e.threshold[n * e.threshold_stride_n + o] : 0.0f;
}

}  // namespace hidiff::common
