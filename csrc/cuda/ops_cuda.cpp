// ATen glue of the CUDA kernels: memory layout, device guard, current stream and launch checks
// around the torch-free launchers of kernels.h, registered as the CUDA kernels of the hidiff:: ops
// (schemas live in hidiff_kernels/ops.py). The argument checks are those of csrc/glue, shared with
// the CPU glue; they repeat the Python ones (same messages and exception types) because the
// kernels read raw memory.
//
// Only c10/cuda headers are used (stream, guard, launch check): they need nothing from the CUDA
// toolkit beyond the runtime API.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../common/packed_bits.h"
#include "../glue/bernoulli_args.h"
#include "../glue/binarize_args.h"
#include "../glue/conv_args.h"
#include "../glue/cuda_limits.h"
#include "../glue/float64_signs.h"
#include "../glue/time_activation_args.h"
#include "kernels.h"

namespace hidiff {
namespace {

using common::packed_words;

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const uint32_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>()); }
uint32_t* words_of(at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

at::Tensor binarize_pack_cuda(const at::Tensor& x, const std::optional<at::Tensor>& threshold) {
  const glue::BinarizeThreshold thr = glue::check_binarize_args(x, threshold, at::kCUDA);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  glue::check_cuda_binarize_channels(C);
  const c10::cuda::CUDAGuard guard(x.device());
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
  cuda::launch_binarize_pack(xc.data_ptr(), type, channels_last, N, static_cast<int>(C), H, W, thr.data(),
                             thr.stride_n, words_of(out), current_stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor pack_weight_cuda(const at::Tensor& w) {
  glue::check_pack_weight_args(w, at::kCUDA);
  // (O, I, KH, KW) has the memory order of an NCHW batch, and (O, KH, KW, words) is its packing.
  return binarize_pack_cuda(w.contiguous(), std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> binary_conv2d_fused_cuda(
    const at::Tensor& x_packed, const at::Tensor& w_packed, int64_t in_channels, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& zeta,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& threshold, bool pack) {
  const common::ConvShape<int64_t> s =
      glue::check_conv_args(x_packed, w_packed, in_channels, stride, padding, dilation, at::kCUDA);
  const cuda::ConvGeometry g = glue::cuda_conv_shape(s);
  const int64_t N = s.N, O = s.O, Ho = s.out_h(), Wo = s.out_w();

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
  glue::check_time_activation_args(u, gamma, zeta, beta, at::kCUDA);
  const int64_t N = u.size(0), C = u.size(1);
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
  const common::BernoulliMode kernel_mode =
      glue::check_bernoulli_step_args(y_t, eps_hat, prior, coef, mode, offset, at::kCUDA);
  const int64_t N = y_t.size(0);

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
