// Torch-free tests of csrc/core: packing and the XNOR-popcount convolution on every instruction
// set the CPU supports, against a naive +-1 convolution. Integer results must match exactly.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "../binary_conv.h"
#include "../bitpack.h"
#include "../cpu_features.h"
#include "../time_activation.h"

using namespace hidiff::core;
using hidiff::common::packed_words;

namespace {

int failures = 0;

#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      ++failures;                                           \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);      \
      std::printf(__VA_ARGS__);                             \
      std::printf("\n");                                    \
    }                                                       \
  } while (0)

int sign_of_bit(const std::vector<uint32_t>& packed, int64_t pixel, int64_t words, int64_t c) {
  return (packed[pixel * words + c / 32] >> (c % 32)) & 1u ? -1 : 1;
}

void test_pack_layouts() {
  std::mt19937 rng(1);
  std::normal_distribution<float> dist;
  const int64_t N = 2, C = 37, H = 3, W = 5, words = packed_words(C);
  std::vector<float> nchw(N * C * H * W), nhwc(N * H * W * C), thr(N * C);
  for (auto& v : nchw) v = dist(rng);
  for (auto& v : thr) v = 0.5f * dist(rng);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) nhwc[((n * H + h) * W + w) * C + c] = nchw[((n * C + c) * H + h) * W + w];
  std::vector<uint32_t> a(N * H * W * words, 0xdeadbeef), b(N * H * W * words, 0xdeadbeef);
  binarize_pack_nchw(nchw.data(), thr.data(), C, C, H, W, a.data(), 0, N * H);
  binarize_pack_nhwc(nhwc.data(), thr.data(), C, C, H, W, b.data(), 0, N * H * W);
  EXPECT(a == b, "NCHW and NHWC packing differ");
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const int expected = nchw[((n * C + c) * H + h) * W + w] > thr[n * C + c] ? 1 : -1;
          EXPECT(sign_of_bit(a, (n * H + h) * W + w, words, c) == expected, "bit n=%ld c=%ld", (long)n, (long)c);
        }
  for (int64_t p = 0; p < N * H * W; ++p) EXPECT((a[p * words + words - 1] >> (C % 32)) == 0u, "pad bits not zero");
}

void test_conv_case(Isa isa, const ConvShape& s, std::mt19937& rng) {
  const int64_t words = s.words();
  std::vector<float> x(s.N * s.C * s.H * s.W), w(s.O * s.C * s.KH * s.KW);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& v : x) v = dist(rng);
  for (auto& v : w) v = dist(rng);
  std::vector<uint32_t> xp(s.N * s.H * s.W * words), wp(s.O * s.KH * s.KW * words);
  binarize_pack_nchw(x.data(), nullptr, 0, s.C, s.H, s.W, xp.data(), 0, s.N * s.H);
  binarize_pack_nchw(w.data(), nullptr, 0, s.C, s.KH, s.KW, wp.data(), 0, s.O * s.KH);
  const int64_t Ho = s.out_h(), Wo = s.out_w();
  std::vector<float> out(s.N * s.O * Ho * Wo, NAN);
  set_active_isa(isa);
  binary_conv2d(s, xp.data(), wp.data(), ConvEpilogue{}, out.data());
  // The affine epilogue: out * scale + bias, multiply and add rounded separately.
  std::vector<float> scale(s.O), bias(s.O), affine(out.size(), NAN);
  for (int64_t o = 0; o < s.O; ++o) {
    scale[o] = dist(rng) + 1.5f;
    bias[o] = dist(rng);
  }
  ConvEpilogue epilogue;
  epilogue.scale = scale.data();
  epilogue.bias = bias.data();
  binary_conv2d(s, xp.data(), wp.data(), epilogue, affine.data());
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t o = (static_cast<int64_t>(i) / (Ho * Wo)) % s.O;
    const float product = out[i] * scale[o];
    EXPECT(affine[i] == product + bias[o], "%s affine epilogue at %zu", isa_name(isa), i);
  }
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t o = 0; o < s.O; ++o)
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          int64_t expected = 0;
          for (int64_t kh = 0; kh < s.KH; ++kh)
            for (int64_t kw = 0; kw < s.KW; ++kw) {
              const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
              const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
              if (ih < 0 || ih >= s.H || iw < 0 || iw >= s.W) continue;
              for (int64_t c = 0; c < s.C; ++c) {
                const int xs = x[((n * s.C + c) * s.H + ih) * s.W + iw] > 0 ? 1 : -1;
                const int ws = w[((o * s.C + c) * s.KH + kh) * s.KW + kw] > 0 ? 1 : -1;
                expected += xs * ws;
              }
            }
          const float got = out[((n * s.O + o) * Ho + oh) * Wo + ow];
          EXPECT(got == static_cast<float>(expected), "%s C=%ld O=%ld k=%ldx%ld s=%ld p=%ld d=%ld at (%ld,%ld,%ld,%ld): %f vs %ld",
                 isa_name(isa), (long)s.C, (long)s.O, (long)s.KH, (long)s.KW, (long)s.stride_h, (long)s.pad_h,
                 (long)s.dil_h, (long)n, (long)o, (long)oh, (long)ow, got, (long)expected);
        }
}

void test_conv_all_isas() {
  std::mt19937 rng(7);
  struct Case { int64_t C, O, H, W, K, stride, pad, dil; };
  const Case cases[] = {
      {1, 3, 5, 5, 3, 1, 1, 1},    {3, 8, 7, 9, 3, 1, 1, 1},   {31, 9, 6, 5, 3, 2, 1, 1},
      {33, 17, 5, 7, 3, 1, 2, 2},  {63, 8, 4, 4, 1, 1, 0, 1},  {65, 70, 9, 11, 3, 2, 2, 1},
      {96, 16, 1, 1, 3, 1, 1, 1},  {193, 10, 5, 6, 3, 1, 1, 2}, {128, 64, 8, 8, 3, 1, 1, 1},
      {512, 8, 3, 3, 3, 1, 0, 1},  {40, 5, 6, 6, 5, 1, 2, 1},  {7, 4, 3, 3, 3, 1, 2, 1},
      {512, 3, 6, 6, 5, 1, 2, 1},  // 50 Harley-Seal groups per output: exercises the byte-counter flush
      {32, 70, 20, 30, 3, 1, 1, 1},  // several lane tiles and a partial channel tile
      {64, 9, 17, 40, 3, 2, 1, 1},   // stride 2 over several lane tiles
  };
  for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) {
      std::printf("skip %s: not supported by this CPU\n", isa_name(isa));
      continue;
    }
    for (const Case& c : cases) {
      ConvShape s{2, c.H, c.W, c.C, c.O, c.K, c.K, c.stride, c.stride, c.pad, c.pad, c.dil, c.dil};
      test_conv_case(isa, s, rng);
    }
    // Rectangular kernel with unequal strides, padding and dilation per axis.
    ConvShape s{1, 9, 10, 45, 6, 3, 2, 2, 1, 1, 0, 1, 3};
    test_conv_case(isa, s, rng);
  }
  set_active_isa(best_supported_isa());
}

void test_time_activation() {
  const float u[4] = {-1.f, 0.5f, 2.f, 0.25f};
  const float gamma[2] = {0.5f, 0.f}, zeta[2] = {1.f, -1.f}, beta[2] = {0.25f, 2.f};
  float out[4];
  time_activation_rows<float>(u, gamma, zeta, beta, out, 2, 2, 0, 2);
  EXPECT(out[0] == 0.25f * (-1.5f) + 1.f, "TA below gamma");
  EXPECT(out[1] == 1.f, "TA at gamma uses the slope branch");
  EXPECT(out[2] == 2.f - 1.f, "TA above gamma");
  EXPECT(out[3] == 0.25f - 1.f, "TA above gamma, channel 1");
}

// The shared TA multiplies the upper branch by a slope of 1; it must equal Eq. 16's two branches
// bit for bit, signed zeros, infinities and NaN included.
template <typename T>
void test_time_activation_matches_both_branches() {
  const T inf = std::numeric_limits<T>::infinity(), nan = std::numeric_limits<T>::quiet_NaN();
  const T values[] = {T(-2), T(-0.0), T(0), T(0.375), T(3), T(1e-30), -inf, inf, nan};
  for (T u : values)
    for (T g : values)
      for (T z : values)
        for (T b : values) {
          const T ours = hidiff::common::time_activation(u, g, z, b);
          const T shifted = u - g;
          const T branches = u > g ? shifted + z : b * shifted + z;
          EXPECT(std::memcmp(&ours, &branches, sizeof(T)) == 0 || (std::isnan(ours) && std::isnan(branches)),
                 "TA(%g, %g, %g, %g) = %g, expected %g", double(u), double(g), double(z), double(b), double(ours),
                 double(branches));
        }
}

}  // namespace

void test_environment_selects_initial_isa() {
  const char* env = std::getenv("HIDIFF_CPU_ISA");
  Isa wanted;
  if (env && parse_isa(env, &wanted) && isa_supported(wanted)) {
    EXPECT(active_isa() == wanted, "HIDIFF_CPU_ISA=%s but the active path is %s", env, isa_name(active_isa()));
  } else {
    EXPECT(active_isa() == best_supported_isa(), "default path %s is not the best supported %s",
           isa_name(active_isa()), isa_name(best_supported_isa()));
  }
}

// conv_plan_for keys on every field of the shape: the same shape gets the same plan, a shape that
// differs in any one field its own, and the border classes of the plan match its geometry.
void test_plan_cache() {
  const ConvShape s{2, 9, 7, 33, 5, 3, 3, 2, 1, 1, 2, 1, 2};
  const auto plan = conv_plan_for(s);
  EXPECT(conv_plan_for(s) == plan, "the same shape must reuse its plan");
  int64_t fields[13] = {s.N, s.H, s.W, s.C, s.O, s.KH, s.KW, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w};
  for (int f = 0; f < 13; ++f) {
    int64_t v[13];
    std::memcpy(v, fields, sizeof v);
    ++v[f];
    const ConvShape other{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12]};
    const auto other_plan = conv_plan_for(other);
    EXPECT(other_plan != plan, "field %d must be part of the plan's key", f);
    EXPECT(other_plan->s.H == other.H && other_plan->s.pad_w == other.pad_w && other_plan->s.N == other.N,
           "plan of field %d has another shape", f);
  }
  for (int64_t oh = 0; oh < plan->Ho; ++oh) {
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
      EXPECT(plan->class_row_valid[plan->row_class[oh] * s.KH + kh] == (ih >= 0 && ih < s.H), "row class of %ld",
             static_cast<long>(oh));
    }
  }
  for (int64_t ow = 0; ow < plan->Wo; ++ow) {
    for (int64_t kw = 0; kw < s.KW; ++kw) {
      const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
      EXPECT(plan->class_col_valid[plan->col_class[ow] * s.KW + kw] == (iw >= 0 && iw < s.W), "column class of %ld",
             static_cast<long>(ow));
    }
  }
}

int main() {
  std::printf("best instruction set: %s, active: %s\n", isa_name(best_supported_isa()), isa_name(active_isa()));
  test_environment_selects_initial_isa();
  test_pack_layouts();
  test_conv_all_isas();
  test_plan_cache();
  test_time_activation();
  test_time_activation_matches_both_branches<float>();
  test_time_activation_matches_both_branches<double>();
  if (failures) {
    std::printf("%d failed\n", failures);
    return 1;
  }
  std::printf("all core tests passed\n");
  return 0;
}
