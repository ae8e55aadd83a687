// ATen glue: memory layout and threading around the torch-free kernels of csrc/core, registered as
// the CPU kernels of the hidiff:: ops (schemas live in hidiff_kernels/ops.py). The argument checks
// are those of csrc/glue, shared with the CUDA glue.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "../common/packed_bits.h"
#include "../core/bernoulli.h"
#include "../core/binary_conv.h"
#include "../core/bitpack.h"
#include "../core/time_activation.h"
#include "../glue/bernoulli_args.h"
#include "../glue/binarize_args.h"
#include "../glue/conv_args.h"
#include "../glue/float64_signs.h"
#include "../glue/time_activation_args.h"
#include "output_cache.h"

namespace hidiff {
namespace {

using common::packed_words;

const uint32_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>()); }

// Smallest share of work worth a thread of its own. Starting a parallel region costs about 1.5 us
// on the 2-core benchmark machine when the workers are spinning (binarize_pack of 2 rows, 2 threads
// against 1, python -m hidiff_kernels.overhead), and much more when they have to be woken or the
// host is busy; below a few times that, splitting the work is slower than doing it on the calling
// thread. So every chunk is at least this big: about 5 us of packing, and 8 us of convolution
// tiles at 1 T bit-MAC/s.
constexpr int64_t kParallelPackValues = 16384;   // float values binarised and packed
constexpr int64_t kParallelConvBits = 1 << 23;   // binary MACs (lanes computed x channels x bits)

// Grain for at::parallel_for over `items` items of `work` units in all, so that each chunk has at
// least `min_work` units (and a small call runs on the calling thread alone). The work is an
// estimate in floating point: products of a large call's sizes may not fit int64.
int64_t grain_for(int64_t items, double work, int64_t min_work) {
  const double per_item = std::max(1.0, work / static_cast<double>(std::max<int64_t>(items, 1)));
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(min_work) / per_item)));
}

at::Tensor binarize_pack_cpu(const at::Tensor& x, const std::optional<at::Tensor>& threshold) {
  const glue::BinarizeThreshold thr = glue::check_binarize_args(x, threshold, at::kCPU);
  if (x.scalar_type() == at::kDouble) return binarize_pack_cpu(glue::float64_signs(x, threshold), std::nullopt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const float* thr_ptr = thr.data();

  at::Tensor out = at::empty({N, H, W, packed_words(C)}, x.options().dtype(at::kInt));
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>());
  // Channels-last input is packed straight from its memory order; anything else goes through NCHW.
  const bool channels_last = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  const at::Tensor xf = x.to(at::kFloat).contiguous(channels_last ? at::MemoryFormat::ChannelsLast
                                                                    : at::MemoryFormat::Contiguous);
  const float* src = xf.data_ptr<float>();
  const double values = static_cast<double>(x.numel());
  if (channels_last) {
    const int64_t grain = grain_for(N * H * W, values, kParallelPackValues);
    at::parallel_for(0, N * H * W, grain, [&](int64_t begin, int64_t end) {
      core::binarize_pack_nhwc(src, thr_ptr, thr.stride_n, C, H, W, dst, begin, end);
    });
  } else {
    const int64_t grain = grain_for(N * H, values, kParallelPackValues);
    at::parallel_for(0, N * H, grain, [&](int64_t begin, int64_t end) {
      core::binarize_pack_nchw(src, thr_ptr, thr.stride_n, C, H, W, dst, begin, end);
    });
  }
  return out;
}

at::Tensor pack_weight_cpu(const at::Tensor& w) {
  glue::check_pack_weight_args(w, at::kCPU);
  // (O, I, KH, KW) has the memory order of an NCHW batch, and (O, KH, KW, words) is its packing.
  return binarize_pack_cpu(w.contiguous(), std::nullopt);
}

// Runs the convolution into out (N, O, Ho, Wo) float32: plan, weights, input planes, then the tiles.
void run_conv(const core::ConvShape& s, const at::Tensor& x_packed, const at::Tensor& w_packed,
              const core::ConvEpilogue& epilogue, at::Tensor& out) {
  if (out.numel() == 0) return;
  const at::Tensor x = x_packed.contiguous();
  const at::Tensor w = w_packed.contiguous();
  const std::shared_ptr<const core::ConvPlan> plan_ref = core::conv_plan_for(s);
  const core::ConvPlan& plan = *plan_ref;
  // The weight tables and the word planes are rebuilt by every call into grow-only buffers of the
  // calling thread: no allocation per call, and no first-touch page faults of fresh megabytes at
  // the refiner's resolutions. Calls never nest on one thread. (The workers must get the caller's
  // buffers through references: inside the lambdas the names would mean the workers' own.)
  static thread_local core::ConvWeights weights_of_thread;
  const core::ConvWeights& weights = weights_of_thread;
  core::conv_prepare_weights(plan, words_of(w), weights_of_thread);
  static thread_local std::vector<uint32_t> scratch;
  const auto scratch_words = static_cast<size_t>(plan.scratch_words());
  if (scratch.size() < scratch_words) scratch.resize(scratch_words);
  uint32_t* planes_ptr = scratch.data();
  at::parallel_for(0, static_cast<int64_t>(scratch_words), 1 << 16, [&](int64_t begin, int64_t end) {
    std::fill(planes_ptr + begin, planes_ptr + end, 0u);
  });
  at::parallel_for(0, s.N * s.H, 16, [&](int64_t begin, int64_t end) {
    core::conv_prepare_input(plan, words_of(x), planes_ptr, begin, end);
  });
  float* out_ptr = out.data_ptr<float>();
  const double bits = 32.0 * static_cast<double>(s.N * plan.Ho * plan.Wq) * static_cast<double>(s.O * plan.steps);
  const int64_t grain = grain_for(plan.num_tiles(), bits, kParallelConvBits);
  at::parallel_for(0, plan.num_tiles(), grain, [&](int64_t begin, int64_t end) {
    core::conv_tiles(plan, weights, planes_ptr, epilogue, out_ptr, begin, end);
  });
}

at::Tensor binary_conv2d_cpu(const at::Tensor& x_packed, const at::Tensor& w_packed, int64_t in_channels,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& bias) {
  const core::ConvShape s =
      glue::check_conv_args(x_packed, w_packed, in_channels, stride, padding, dilation, at::kCPU);
  const glue::EpilogueTensors e = glue::check_epilogue_args(s, x_packed, scale, bias, std::nullopt, std::nullopt,
                                                            std::nullopt, std::nullopt, std::nullopt, false);
  at::Tensor out = OutputCache::instance().empty_float({s.N, s.O, s.out_h(), s.out_w()});
  run_conv(s, x_packed, w_packed, glue::epilogue_of(e, nullptr), out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> binary_conv2d_fused_cpu(
    const at::Tensor& x_packed, const at::Tensor& w_packed, int64_t in_channels, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& zeta,
    const std::optional<at::Tensor>& beta, const std::optional<at::Tensor>& threshold, bool pack) {
  const core::ConvShape s =
      glue::check_conv_args(x_packed, w_packed, in_channels, stride, padding, dilation, at::kCPU);
  const glue::EpilogueTensors e =
      glue::check_epilogue_args(s, x_packed, scale, bias, residual, gamma, zeta, beta, threshold, pack);
  const int64_t Ho = s.out_h(), Wo = s.out_w();
  at::Tensor out = OutputCache::instance().empty_float({s.N, s.O, Ho, Wo});
  at::Tensor packed = pack ? at::empty({s.N, Ho, Wo, packed_words(s.O)}, x_packed.options())
                           : at::empty({0}, x_packed.options());
  uint32_t* packed_ptr = pack ? reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()) : nullptr;
  run_conv(s, x_packed, w_packed, glue::epilogue_of(e, packed_ptr), out);
  return {out, packed};
}

at::Tensor time_activation_cpu(const at::Tensor& u, const at::Tensor& gamma, const at::Tensor& zeta,
                               const at::Tensor& beta) {
  glue::check_time_activation_args(u, gamma, zeta, beta, at::kCPU);
  const int64_t N = u.size(0), C = u.size(1);
  // Half-precision inputs are computed in float32 and returned in their own dtype.
  const at::ScalarType compute = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor uc = u.to(compute).contiguous();
  const at::Tensor g = gamma.to(compute).contiguous();
  const at::Tensor z = zeta.to(compute).contiguous();
  const at::Tensor b = beta.to(compute).contiguous();
  at::Tensor out = compute == at::kFloat ? OutputCache::instance().empty_float(uc.sizes())
                                         : at::empty_like(uc, at::MemoryFormat::Contiguous);
  const int64_t inner = N * C > 0 ? uc.numel() / (N * C) : 0;
  AT_DISPATCH_FLOATING_TYPES(compute, "time_activation", [&] {
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1));
    at::parallel_for(0, N * C, grain, [&](int64_t begin, int64_t end) {
      core::time_activation_rows<scalar_t>(uc.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                           b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), C, inner, begin, end);
    });
  });
  return out.to(u.scalar_type());
}

at::Tensor bernoulli_step_cpu(const at::Tensor& y_t, const at::Tensor& eps_hat, const at::Tensor& prior,
                              const at::Tensor& coef, c10::string_view mode, int64_t seed, int64_t offset) {
  const common::BernoulliMode kernel_mode =
      glue::check_bernoulli_step_args(y_t, eps_hat, prior, coef, mode, offset, at::kCPU);
  glue::check_bernoulli_step_finite(y_t, eps_hat, prior);
  const int64_t N = y_t.size(0);

  // Element i of the flattened (row-major) tensor uses counter offset + i, so any memory layout of
  // the inputs is first brought to the logical order.
  const at::Tensor y = y_t.contiguous(), e = eps_hat.contiguous(), p = prior.contiguous(), c = coef.contiguous();
  at::Tensor out = at::empty(y_t.sizes(), y_t.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const int64_t inner = numel / N;
  const float *y_ptr = y.data_ptr<float>(), *e_ptr = e.data_ptr<float>(), *p_ptr = p.data_ptr<float>();
  const float* c_ptr = c.data_ptr<float>();
  float* out_ptr = out.data_ptr<float>();
  // The seed is taken modulo 2^64 (two's complement), as the reference does.
  const uint64_t key = static_cast<uint64_t>(seed);
  // Counters are per element, so the split over threads cannot change the result.
  at::parallel_for(0, numel, 16384, [&](int64_t begin, int64_t end) {
    core::bernoulli_step(y_ptr, e_ptr, p_ptr, c_ptr, inner, kernel_mode, key, static_cast<uint64_t>(offset), out_ptr,
                         begin, end);
  });
  return out;
}

}  // namespace
}  // namespace hidiff

TORCH_LIBRARY_IMPL(hidiff, CPU, m) {
  m.impl("binarize_pack", &hidiff::binarize_pack_cpu);
  m.impl("pack_weight", &hidiff::pack_weight_cpu);
  m.impl("binary_conv2d", &hidiff::binary_conv2d_cpu);
  m.impl("binary_conv2d_fused", &hidiff::binary_conv2d_fused_cpu);
  m.impl("time_activation", &hidiff::time_activation_cpu);
  m.impl("bernoulli_step", &hidiff::bernoulli_step_cpu);
}
