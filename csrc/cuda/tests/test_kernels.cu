// Device tests of the CUDA kernels (kernels.h) against host references, bit for bit: csrc/core for
// packing, TA and the Bernoulli step, and a naive +-1 convolution with the epilogue written out in
// the reference's order for binary_conv2d. Exits with 77 (CTest's "skipped") without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/bernoulli.h"
#include "core/bitpack.h"
#include "core/time_activation.h"
#include "cuda/kernels.h"

namespace cm = hidiff::common;
namespace cu = hidiff::cuda;

namespace {

int failures = 0;

#define EXPECT(cond, ...)                              \
  do {                                                 \
    if (!(cond)) {                                     \
      ++failures;                                      \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    std::printf("CUDA error in %s: %s\n", what, cudaGetErrorString(status));
    std::exit(1);
  }
}

// A device copy of a host vector, copied back with download().
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(const std::vector<T>& host) : size_(host.size()) {
    check_cuda(cudaMalloc(&data_, bytes()), "cudaMalloc");
    if (size_) check_cuda(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice), "upload");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(data_); }
  T* get() const { return data_; }
  std::vector<T> download() const {
    std::vector<T> host(size_);
    check_cuda(cudaDeviceSynchronize(), "kernel");
    if (size_) check_cuda(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  size_t bytes() const { return size_ * sizeof(T) + 1; }  // +1: a valid allocation when empty
  T* data_ = nullptr;
  size_t size_;
};

uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

void test_binarize_pack(std::mt19937& rng) {
  std::normal_distribution<float> dist;
  for (int C : {1, 3, 31, 33, 63, 65, 96, 193}) {
    const int64_t N = 2, H = 3, W = 5, words = cm::packed_words<int64_t>(C);
    std::vector<float> nchw(N * C * H * W), thr(N * C);
    for (auto& v : nchw) v = dist(rng);
    for (auto& v : thr) v = 0.3f * dist(rng);
    nchw[0] = std::nanf("");
    nchw[1] = 0.0f;
    // Multiples of 1/16 below 2^4 in magnitude need at most 8 significant bits, so they are exact
    // in float16 and bfloat16 too: every element type must pack to the same bits.
    for (auto& v : nchw) v = std::isnan(v) ? v : std::round(v * 16.0f) / 16.0f;
    std::vector<float> nhwc(nchw.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t p = 0; p < H * W; ++p) nhwc[(n * H * W + p) * C + c] = nchw[(n * C + c) * H * W + p];
    for (const bool per_sample : {false, true}) {
      std::vector<uint32_t> expected(N * H * W * words);
      hidiff::core::binarize_pack_nchw(nchw.data(), thr.data(), per_sample ? C : 0, C, H, W, expected.data(), 0,
                                       N * H);
      DeviceBuffer<float> d_thr(thr);
      const auto run = [&](const void* x, cu::FloatType type, bool channels_last) {
        DeviceBuffer<uint32_t> out(std::vector<uint32_t>(expected.size(), 0xDEADBEEFu));
        cu::launch_binarize_pack(x, type, channels_last, N, C, H, W, d_thr.get(), per_sample ? C : 0, out.get(),
                                 nullptr);
        check_cuda(cudaGetLastError(), "launch_binarize_pack");
        EXPECT(out.download() == expected, "binarize_pack C=%d type=%d channels_last=%d", C, static_cast<int>(type),
               channels_last);
      };
      for (const bool channels_last : {false, true}) {
        const std::vector<float>& src = channels_last ? nhwc : nchw;
        DeviceBuffer<float> f32(src);
        run(f32.get(), cu::FloatType::Float32, channels_last);
        DeviceBuffer<double> f64(std::vector<double>(src.begin(), src.end()));
        run(f64.get(), cu::FloatType::Float64, channels_last);
        std::vector<__half> half(src.size());
        std::vector<__nv_bfloat16> bf16(src.size());
        for (size_t i = 0; i < src.size(); ++i) {
          half[i] = __float2half(src[i]);
          bf16[i] = __float2bfloat16(src[i]);
        }
        DeviceBuffer<__half> f16(half);
        run(f16.get(), cu::FloatType::Float16, channels_last);
        DeviceBuffer<__nv_bfloat16> b16(bf16);
        run(b16.get(), cu::FloatType::BFloat16, channels_last);
      }
    }
  }
}

// Geometry fields: N, H, W, C, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w.
const cu::ConvGeometry kShapes[] = {
    {2, 5, 5, 1, 3, 3, 3, 1, 1, 1, 1, 1, 1},    {2, 7, 9, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1},
    {2, 6, 5, 31, 9, 3, 3, 2, 2, 1, 1, 1, 1},   {1, 5, 7, 33, 17, 3, 3, 1, 1, 2, 2, 2, 2},
    {1, 4, 4, 63, 40, 1, 1, 1, 1, 0, 0, 1, 1},  {2, 9, 11, 65, 70, 3, 3, 2, 2, 2, 2, 1, 1},
    {2, 1, 1, 96, 16, 3, 3, 1, 1, 1, 1, 1, 1},  {1, 5, 6, 193, 10, 3, 3, 1, 1, 1, 1, 2, 2},
    {1, 9, 10, 45, 6, 3, 2, 2, 1, 2, 0, 1, 3},  {1, 2, 2, 33, 4, 1, 1, 1, 1, 2, 2, 1, 1},
    {1, 6, 6, 512, 3, 5, 5, 1, 1, 2, 2, 1, 1},  {3, 17, 19, 96, 130, 3, 3, 1, 1, 1, 1, 1, 1},
    {1, 32, 32, 128, 64, 3, 3, 1, 1, 1, 1, 1, 1},
};

void test_binary_conv2d(const cu::ConvGeometry& g, std::mt19937& rng, bool full_epilogue) {
  const int words = g.words(), ktot = g.reduction_words(), Ho = g.out_h(), Wo = g.out_w();
  const int64_t plane = static_cast<int64_t>(Ho) * Wo;
  std::vector<uint32_t> x(g.N * g.H * g.W * words), w(static_cast<size_t>(g.O) * ktot);
  const auto random_packed = [&](std::vector<uint32_t>& t) {
    for (size_t i = 0; i < t.size(); ++i) {
      t[i] = static_cast<uint32_t>(rng()) & cm::channel_mask(static_cast<int>(i % words), g.C);
    }
  };
  random_packed(x);
  random_packed(w);
  std::normal_distribution<float> dist;
  std::vector<float> scale(g.O), bias(g.O), beta(g.O), gamma(g.N * g.O), zeta(g.N * g.O), thr(g.N * g.O);
  std::vector<float> residual(g.N * g.O * plane);
  for (auto* v : {&scale, &bias, &beta, &gamma, &zeta, &thr, &residual})
    for (auto& e : *v) e = dist(rng);

  // Host: naive +-1 convolution and the epilogue in the reference's order.
  const int out_words = cm::packed_words(g.O);
  std::vector<float> expected(g.N * g.O * plane);
  std::vector<uint32_t> expected_packed(g.N * plane * out_words, 0u);
  const auto sign = [](const std::vector<uint32_t>& t, int64_t base, int c) {
    return (t[base + c / 32] >> (c % 32)) & 1u ? -1 : 1;
  };
  for (int64_t n = 0; n < g.N; ++n)
    for (int oh = 0; oh < Ho; ++oh)
      for (int ow = 0; ow < Wo; ++ow)
        for (int o = 0; o < g.O; ++o) {
          int32_t count = 0;
          for (int kh = 0; kh < g.KH; ++kh)
            for (int kw = 0; kw < g.KW; ++kw) {
              const int ih = oh * g.stride_h - g.pad_h + kh * g.dil_h, iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
              if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
              const int64_t xb = ((n * g.H + ih) * g.W + iw) * words;
              const int64_t wb = static_cast<int64_t>(o) * ktot + (kh * g.KW + kw) * words;
              for (int c = 0; c < g.C; ++c) count += sign(x, xb, c) * sign(w, wb, c);
            }
          const int64_t index = (n * g.O + o) * plane + oh * Wo + ow;
          float u = static_cast<float>(count);
          if (full_epilogue) {
            u = u * scale[o];
            u = u + bias[o];
            u = u + residual[index];
            const float gm = gamma[n * g.O + o], shifted = u - gm;
            u = u > gm ? shifted + zeta[n * g.O + o] : beta[o] * shifted + zeta[n * g.O + o];
          }
          expected[index] = u;
          const float threshold = full_epilogue ? thr[n * g.O + o] : 0.0f;
          if (!(u > threshold)) expected_packed[((n * Ho + oh) * Wo + ow) * out_words + o / 32] |= 1u << (o % 32);
        }

  DeviceBuffer<uint32_t> d_x(x), d_w(w);
  DeviceBuffer<float> d_scale(scale), d_bias(bias), d_res(residual), d_gamma(gamma), d_zeta(zeta), d_beta(beta),
      d_thr(thr), d_out(std::vector<float>(expected.size(), std::nanf("")));
  DeviceBuffer<uint32_t> d_packed(std::vector<uint32_t>(expected_packed.size(), 0xDEADBEEFu));
  DeviceBuffer<int32_t> workspace(std::vector<int32_t>(cu::sat_elements(g)));
  cm::ConvEpilogue e{};
  if (full_epilogue) {
    e = {d_scale.get(), d_bias.get(), d_res.get(), d_gamma.get(), d_zeta.get(), d_beta.get(), d_thr.get(), g.O};
  }
  e.packed = d_packed.get();
  cu::launch_binary_conv2d(g, d_x.get(), d_w.get(), workspace.get(), e, d_out.get(), nullptr);
  check_cuda(cudaGetLastError(), "launch_binary_conv2d");
  const std::vector<float> out = d_out.download();
  const std::vector<uint32_t> packed = d_packed.download();
  int mismatches = 0;
  for (size_t i = 0; i < out.size(); ++i) mismatches += bits_of(out[i]) != bits_of(expected[i]);
  EXPECT(mismatches == 0, "binary_conv2d C=%d O=%d %dx%d k%dx%d epilogue=%d: %d of %zu outputs differ", g.C, g.O, g.H,
         g.W, g.KH, g.KW, full_epilogue, mismatches, out.size());
  EXPECT(packed == expected_packed, "binary_conv2d packing C=%d O=%d epilogue=%d", g.C, g.O, full_epilogue);
}

template <typename T>
void test_time_activation(std::mt19937& rng) {
  std::normal_distribution<double> dist;
  const int64_t N = 3, C = 65, inner = 77;
  std::vector<T> u(N * C * inner), g(N * C), z(N * C), b(C), expected(u.size());
  for (auto* v : {&u, &g, &z, &b})
    for (auto& e : *v) e = static_cast<T>(dist(rng));
  hidiff::core::time_activation_rows<T>(u.data(), g.data(), z.data(), b.data(), expected.data(), C, inner, 0, N * C);
  DeviceBuffer<T> du(u), dg(g), dz(z), db(b), dout(std::vector<T>(u.size()));
  cu::launch_time_activation(du.get(), dg.get(), dz.get(), db.get(), dout.get(), N * C, inner, C, nullptr);
  check_cuda(cudaGetLastError(), "launch_time_activation");
  const std::vector<T> out = dout.download();
  EXPECT(std::memcmp(out.data(), expected.data(), out.size() * sizeof(T)) == 0, "time_activation (%zu-byte)",
         sizeof(T));
}

void test_bernoulli_step(std::mt19937& rng) {
  std::uniform_real_distribution<float> unit(0.0f, 1.0f), wide(-0.5f, 1.5f);
  const int64_t N = 3, inner = 4099;
  std::vector<float> y(N * inner), e(y.size()), p(y.size()), coef(2 * N);
  for (size_t i = 0; i < y.size(); ++i) {
    y[i] = static_cast<float>(rng() % 2);
    e[i] = unit(rng);
    p[i] = unit(rng);
  }
  e[5] = std::nanf("");
  p[6] = 0.0f;
  p[7] = 1.0f;
  for (int64_t n = 0; n < N; ++n) {
    coef[2 * n] = unit(rng);
    coef[2 * n + 1] = wide(rng);
  }
  DeviceBuffer<float> dy(y), de(e), dp(p), dc(coef), dout(std::vector<float>(y.size()));
  const uint64_t cases[][2] = {{0, 0}, {123, 17}, {(1ull << 40) + 3, (1ull << 33) - 5}, {~2ull, (1ull << 32) - 100}};
  for (const auto& [seed, offset] : cases)
    for (const auto mode : {cm::BernoulliMode::Posterior, cm::BernoulliMode::Ddim}) {
      std::vector<float> expected(y.size());
      hidiff::core::bernoulli_step(y.data(), e.data(), p.data(), coef.data(), inner, mode, seed, offset,
                                   expected.data(), 0, N * inner);
      cu::launch_bernoulli_step(dy.get(), de.get(), dp.get(), dc.get(), N, inner, mode, seed, offset, dout.get(),
                                nullptr);
      check_cuda(cudaGetLastError(), "launch_bernoulli_step");
      EXPECT(dout.download() == expected, "bernoulli_step seed=%llu offset=%llu mode=%d", (unsigned long long)seed,
             (unsigned long long)offset, static_cast<int>(mode));
    }
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  std::mt19937 rng(11);
  test_binarize_pack(rng);
  for (const cu::ConvGeometry& g : kShapes) {
    test_binary_conv2d(g, rng, false);
    test_binary_conv2d(g, rng, true);
  }
  test_time_activation<float>(rng);
  test_time_activation<double>(rng);
  test_bernoulli_step(rng);
  if (failures) {
    std::printf("%d failed\n", failures);
    return 1;
  }
  std::printf("all CUDA kernel checks passed\n");
  return 0;
}
