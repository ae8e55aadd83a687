// ATen glue of the CUDA kernels: argument checks, memory layout, device guard, current stream and
// launch checks around the torch-free launchers of kernels.h, registered as the CUDA kernels of
// the hidiff:: ops (schemas live in hidiff_kernels/ops.py). The checks repeat the Python ones
// (same messages and exception types) because the kernels read raw memory.
//
// Only c10/cuda headers are used (stream, guard, launch check): they need nothing from the CUDA
// toolkit beyond the runtime API.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <optional>
#include <string>
#include <tuple>

#include "../common/packed_bits.h"
#include "../glue/conv_args.h"
#include "../glue/float64_signs.h"
#include "kernels.h"

namespace hidiff {
namespace {

// Grid dimension y holds output words (binarize_pack) and output channel tiles (binary_conv2d).
constexpr int64_t kMaxGridY = 65535;

using common::packed_words;

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const uint32_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>()); }
uint32_t* words_of(at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor for this kernel, got device ", t.device());
}

void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " must be on the device of ", like_name, " (", like.device(),
                    "), got ", t.device());
}

void check_fits_int(int64_t value, const char* what) {
  TORCH_CHECK_VALUE(value >= 0 && value <= INT_MAX, what, " must be below 2^31 for the CUDA kernels, got ", value);
}

// The threshold as contiguous float32 and its stride between samples (0 if shared by the batch).
// `channels` names the channel dimension in messages: C for an input, O for a convolution output.
std::pair<std::optional<at::Tensor>, int64_t> prepare_threshold(const std::optional<at::Tensor>& threshold,
                                                                const at::Tensor& like, const char* like_name,
                                                                int64_t N, int64_t C, const char* channels) {
  if (!threshold.has_value()) return {std::nullopt, 0};
  const at::Tensor& t = *threshold;
  check_same_device(t, "threshold", like, like_name);
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "threshold must be a floating tensor, got ",
                   t.scalar_type());
  const bool per_channel = t.dim() == 1 && t.size(0) == C;
  const bool per_sample = t.dim() == 2 && t.size(0) == N && t.size(1) == C;
  TORCH_CHECK_VALUE(per_channel || per_sample, "threshold must have shape (", channels, ",) = (", C, ",) or (N, ",
                    channels, ") = (", N, ", ", C, "), got ", t.sizes());
  return {t.to(at::kFloat).contiguous(), per_sample ? C : 0};
}

at::Tensor binarize_pack_cuda(const at::Tensor& x, const std::optional<at::Tensor>& threshold) {
  check_cuda(x, "x");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "x must be a floating tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be 4-D (N, C, H, W), got shape ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK_VALUE(C > 0, "x must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK_VALUE(packed_words(C) <= kMaxGridY, "x has ", C, " channels, more than the CUDA kernel's ",
                    kMaxGridY * 32);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [thr, thr_stride] = prepare_threshold(threshold, x, "x", N, C, "C");
  if (x.scalar_type() == at::kDouble) return binarize_pack_cuda(glue::float64_signs(x, threshold), std::nullopt);

  at::Tensor out = at::empty({N, H, W, packed_words(C)}, x.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  // The kernels read float32, float64, float16 and bfloat16 directly; other floating types are
  // converted to float32 first, as the reference compares them (float64 never gets here: see above).
  cuda::FloatType type;
  at::ScalarType read_as = x.scalar_type();
  switch (read_as) {
    case at::kFloat:
      type = cuda::FloatType::Float32;
      break;
    case at::kDouble:
      type = cuda::FloatType::Float64;
      break;
    case at::kHalf:
      type = cuda::FloatType::Float16;
      break;
    case at::kBFloat16:
      type = cuda::FloatType::BFloat16;
      break;
    default:
      type = cuda::FloatType::Float32;
      read_as = at::kFloat;
  }
  // Channels-last input is packed straight from its memory order; anything else goes through NCHW.
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const at::Tensor xc = x.to(read_as).contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                                                : at::MemoryFormat::Contiguous);
  cuda::launch_binarize_pack(xc.data_ptr(), type, channels_last, N, static_cast<int>(C), H, W,
                             thr ? thr->data_ptr<float>() : nullptr, thr_stride, words_of(out), current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor pack_weight_cuda(const at::Tensor& w) {
  check_cuda(w, "w");
  TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), "w must be a floating tensor, got ", w.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 4, "w must be 4-D (O, I, KH, KW), got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.size(1) > 0, "w must have at least one input channel, got shape ", w.sizes());
  // (O, I, KH, KW) has the memory order of an NCHW batch, and (O, KH, KW, words) is its packing.
  return binarize_pack_cuda(w.contiguous(), std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> binary_conv2d_fused_cuda(
    const at::Tensor& x_packed, const at::Tensor& w_packed, int64_t in_channels, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& zeta,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& threshold, bool pack) {
  check_cuda(x_packed, "x_packed");
  const common::ConvShape<int64_t> s =
      glue::check_conv_args(x_packed, w_packed, in_channels, stride, padding, dilation);
  for (int64_t size : {x_packed.size(1), x_packed.size(2), w_packed.size(0), stride[0], stride[1], padding[0],
                       padding[1], dilation[0], dilation[1]}) {
    check_fits_int(size, "every size, stride, padding and dilation");
  }
  check_fits_int(x_packed.size(1) + 2 * padding[0], "H + 2 * padding");
  check_fits_int(x_packed.size(2) + 2 * padding[1], "W + 2 * padding");

  cuda::ConvGeometry g{};
  g.N = x_packed.size(0);
  g.H = static_cast<int>(x_packed.size(1));
  g.W = static_cast<int>(x_packed.size(2));
  g.C = static_cast<int>(in_channels);
  g.O = static_cast<int>(w_packed.size(0));
  g.KH = static_cast<int>(w_packed.size(1));
  g.KW = static_cast<int>(w_packed.size(2));
  g.stride_h = static_cast<int>(stride[0]);
  g.stride_w = static_cast<int>(stride[1]);
  g.pad_h = static_cast<int>(padding[0]);
  g.pad_w = static_cast<int>(padding[1]);
  g.dil_h = static_cast<int>(dilation[0]);
  g.dil_w = static_cast<int>(dilation[1]);
  const int64_t N = s.N, O = s.O, Ho = s.out_h(), Wo = s.out_w();
  check_fits_int(Ho * Wo, "Ho * Wo");
  TORCH_CHECK_VALUE(packed_words(O) <= kMaxGridY * 2, "w_packed has ", O, " output channels, more than the CUDA "
                    "kernel's ", kMaxGridY * 64);

  const glue::EpilogueTensors epilogue =
      glue::check_epilogue_args(s, x_packed, scale, bias, residual, gamma, zeta, beta, threshold, pack);

  const c10::cuda::CUDAGuard guard(x_packed.device());
  const at::Tensor x = x_packed.contiguous();
  const at::Tensor w = w_packed.contiguous();
  at::Tensor out = at::empty({N, O, Ho, Wo}, x.options().dtype(at::kFloat));
  at::Tensor packed = pack ? at::empty({N, Ho, Wo, packed_words(O)}, x.options().dtype(at::kInt))
                           : at::empty({0}, x.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, packed};
  at::Tensor workspace = at::empty({cuda::sat_elements(g)}, x.options().dtype(at::kInt));
  const common::ConvEpilogue e = glue::epilogue_of(epilogue, pack ? words_of(packed) : nullptr);
  cuda::launch_binary_conv2d(g, words_of(x), words_of(w), workspace.data_ptr<int32_t>(), e, out.data_ptr<float>(),
                             current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, packed};
}

at::Tensor binary_conv2d_cuda(const at::Tensor& x_packed, const at::Tensor& w_packed, int64_t in_channels,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias) {
  return std::get<0>(binary_conv2d_fused_cuda(x_packed, w_packed, in_channels, stride, padding, dilation, scale, bias,
                                              std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
                                              false));
}

at::Tensor time_activation_cuda(const at::Tensor& u, const at::Tensor& gamma, const at::Tensor& zeta,
                                const at::Tensor& beta) {
  check_cuda(u, "u");
  TORCH_CHECK_TYPE(at::isFloatingType(u.scalar_type()), "u must be a floating tensor, got ", u.scalar_type());
  TORCH_CHECK_VALUE(u.dim() >= 2, "u must be (N, C, ...) with at least 2 dims, got shape ", u.sizes());
  const int64_t N = u.size(0), C = u.size(1);
  const auto check_shift = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
    check_same_device(t, name, u, "u");
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == N && t.size(1) == C, name, " must have shape (N, C) = (", N, ", ",
                      C, "), got ", t.sizes());
  };
  check_shift(gamma, "gamma");
  check_shift(zeta, "zeta");
  TORCH_CHECK_TYPE(at::isFloatingType(beta.scalar_type()), "beta must be a floating tensor, got ",
                   beta.scalar_type());
  check_same_device(beta, "beta", u, "u");
  TORCH_CHECK_VALUE(beta.dim() == 1 && beta.size(0) == C, "beta must have shape (C,) = (", C, ",), got ",
                    beta.sizes());
  const c10::cuda::CUDAGuard guard(u.device());
  // Half-precision inputs are computed in float32 and returned in their own dtype.
  const at::ScalarType compute = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor uc = u.to(compute).contiguous();
  const at::Tensor g = gamma.to(compute).contiguous();
  const at::Tensor z = zeta.to(compute).contiguous();
  const at::Tensor b = beta.to(compute).contiguous();
  at::Tensor out = at::empty_like(uc, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out.to(u.scalar_type());
  const int64_t rows = N * C;
  const int64_t inner = uc.numel() / rows;
  if (compute == at::kDouble) {
    cuda::launch_time_activation(uc.data_ptr<double>(), g.data_ptr<double>(), z.data_ptr<double>(),
                                 b.data_ptr<double>(), out.data_ptr<double>(), rows, inner, C, current_stream());
  } else {
    cuda::launch_time_activation(uc.data_ptr<float>(), g.data_ptr<float>(), z.data_ptr<float>(), b.data_ptr<float>(),
                                 out.data_ptr<float>(), rows, inner, C, current_stream());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.to(u.scalar_type());
}

at::Tensor bernoulli_step_cuda(const at::Tensor& y_t, const at::Tensor& eps_hat, const at::Tensor& prior,
                               const at::Tensor& coef, c10::string_view mode, int64_t seed, int64_t offset) {
  check_cuda(y_t, "y_t");
  const auto check_state = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
    check_same_device(t, name, y_t, "y_t");
    TORCH_CHECK_VALUE(t.sizes() == y_t.sizes(), name, " must have the shape of y_t ", y_t.sizes(), ", got ",
                      t.sizes());
  };
  check_state(y_t, "y_t");
  check_state(eps_hat, "eps_hat");
  check_state(prior, "prior");
  TORCH_CHECK_VALUE(y_t.dim() >= 1, "y_t must have a batch dimension (N, ...), got a 0-d tensor");
  TORCH_CHECK_TYPE(coef.scalar_type() == at::kFloat, "coef must be float32, got ", coef.scalar_type());
  check_same_device(coef, "coef", y_t, "y_t");
  const int64_t N = y_t.size(0);
  TORCH_CHECK_VALUE(coef.dim() == 2 && coef.size(0) == N && coef.size(1) == 2, "coef must have shape (N, 2) = (", N,
                    ", 2), got ", coef.sizes());
  common::BernoulliMode kernel_mode;
  if (mode == "posterior") {
    kernel_mode = common::BernoulliMode::Posterior;
  } else if (mode == "ddim") {
    kernel_mode = common::BernoulliMode::Ddim;
  } else {
    TORCH_CHECK_VALUE(false, "mode must be one of ('posterior', 'ddim'), got '", std::string(mode), "'");
  }
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);

  const c10::cuda::CUDAGuard guard(y_t.device());
  // Element i of the flattened (row-major) tensor uses counter offset + i, so any memory layout
  // of the inputs is first brought to the logical order.
  const at::Tensor y = y_t.contiguous(), e = eps_hat.contiguous(), p = prior.contiguous(), c = coef.contiguous();
  at::Tensor out = at::empty(y_t.sizes(), y_t.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  // The seed is taken modulo 2^64 (two's complement), as the reference does.
  cuda::launch_bernoulli_step(y.data_ptr<float>(), e.data_ptr<float>(), p.data_ptr<float>(), c.data_ptr<float>(), N,
                              out.numel() / N, kernel_mode, static_cast<uint64_t>(seed),
                              static_cast<uint64_t>(offset), out.data_ptr<float>(), current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace hidiff

TORCH_LIBRARY_IMPL(hidiff, CUDA, m) {
  m.impl("binarize_pack", &hidiff::binarize_pack_cuda);
  m.impl("pack_weight", &hidiff::pack_weight_cuda);
  m.impl("binary_conv2d", &hidiff::binary_conv2d_cuda);
  m.impl("binary_conv2d_fused", &hidiff::binary_conv2d_fused_cuda);
  m.impl("time_activation", &hidiff::time_activation_cuda);
  m.impl("bernoulli_step", &hidiff::bernoulli_step_cuda);
}
