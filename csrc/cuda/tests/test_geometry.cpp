// Host-side tests of the index math the CUDA kernels share with the host (csrc/cuda/*.h, and the
// csrc/common headers they use), compiled with the plain C++ compiler: no GPU and no CUDA toolkit
// needed. Philox, the Bernoulli mean and TA of csrc/common are tested by the csrc/core tests.
//
// - tap ranges, channel masks and the reduction index against brute force;
// - the binary_conv2d algorithm (implicit-GEMM gather, popc(a), the tap-popcount summed-area
//   table, the count formula, the fused epilogue and its packing), run on the host with the
//   kernel's own helpers, against a naive +-1 convolution, with garbage in the pad bits;
// - the register mapping of the m16n8k256 fragments, fed to an emulation of the instruction
//   written from the PTX ISA's element formulas.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "common/conv_epilogue.h"
#include "common/packed_bits.h"
#include "cuda/conv_geometry.h"

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

uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

void test_tap_range() {
  for (int origin = -12; origin <= 12; ++origin)
    for (int size = 1; size <= 9; ++size)
      for (int dilation = 1; dilation <= 3; ++dilation)
        for (int taps = 1; taps <= 6; ++taps) {
          int lo = -1, hi = -1, count = 0;
          for (int k = 0; k < taps; ++k) {
            const int i = origin + k * dilation;
            if (i < 0 || i >= size) continue;
            if (lo < 0) lo = k;
            hi = k + 1;
            ++count;
          }
          const cu::TapRange r = cu::tap_range(origin, size, dilation, taps);
          EXPECT(r.count() == count, "count origin=%d size=%d dil=%d taps=%d", origin, size, dilation, taps);
          EXPECT(count == 0 || (r.lo == lo && r.hi == hi), "range origin=%d size=%d dil=%d", origin, size, dilation);
          EXPECT(r.lo >= 0 && r.hi <= taps && r.lo <= r.hi, "bounds origin=%d size=%d", origin, size);
        }
}

void test_channel_mask_and_reduction_index() {
  for (int C = 1; C <= 130; ++C) {
    const int words = (C + 31) / 32;
    int total = 0;
    for (int j = 0; j < words + 1; ++j) total += __builtin_popcount(cm::channel_mask(j, C));
    EXPECT(total == C, "channel_mask C=%d covers %d channels", C, total);
  }
  const cu::ConvGeometry g{1, 5, 5, 70, 3, 3, 2, 1, 1, 0, 0, 1, 1};
  const int words = g.words();
  for (int k = 0; k < g.reduction_words() + 20; ++k) {
    const cu::ReductionIndex r = cu::reduction_index(k, g);
    if (k >= g.reduction_words()) {
      EXPECT(r.mask == 0u, "k=%d past the end must be masked", k);
      continue;
    }
    EXPECT((r.kh * g.KW + r.kw) * words + r.word == k, "k=%d does not round-trip", k);
    EXPECT(r.mask == cm::channel_mask(r.word, g.C), "k=%d mask", k);
  }
}

// Geometry fields: N, H, W, C, O, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w.
const cu::ConvGeometry kShapes[] = {
    {2, 5, 5, 1, 3, 3, 3, 1, 1, 1, 1, 1, 1},   {2, 7, 9, 3, 8, 3, 3, 1, 1, 1, 1, 1, 1},
    {2, 6, 5, 31, 9, 3, 3, 2, 2, 1, 1, 1, 1},  {1, 5, 7, 33, 17, 3, 3, 1, 1, 2, 2, 2, 2},
    {1, 4, 4, 63, 40, 1, 1, 1, 1, 0, 0, 1, 1}, {1, 9, 11, 65, 70, 3, 3, 2, 2, 2, 2, 1, 1},
    {2, 1, 1, 96, 16, 3, 3, 1, 1, 1, 1, 1, 1}, {1, 5, 6, 193, 10, 3, 3, 1, 1, 1, 1, 2, 2},
    {1, 9, 10, 45, 6, 3, 2, 2, 1, 2, 0, 1, 3}, {1, 2, 2, 33, 4, 1, 1, 1, 1, 2, 2, 1, 1},
    {1, 6, 6, 300, 5, 5, 5, 1, 1, 2, 2, 1, 1},
};

// The kernel's algorithm on the host, with its own helpers, against a naive +-1 convolution.
void test_conv_algorithm(const cu::ConvGeometry& g, std::mt19937& rng) {
  const int words = g.words(), ktot = g.reduction_words(), Ho = g.out_h(), Wo = g.out_w();
  // Random words including the pad bits: the kernel must mask them off on both sides.
  std::vector<uint32_t> x(g.N * g.H * g.W * words), w(static_cast<size_t>(g.O) * ktot);
  for (auto& v : x) v = static_cast<uint32_t>(rng());
  for (auto& v : w) v = static_cast<uint32_t>(rng());
  const auto sign = [&](const std::vector<uint32_t>& t, int64_t base, int c) {
    return (t[base + c / 32] >> (c % 32)) & 1u ? -1 : 1;
  };

  std::vector<int32_t> sat(cu::sat_elements(g));
  for (int o = 0; o < g.O; ++o)
    cu::build_tap_sat(w.data(), g, o, sat.data() + static_cast<int64_t>(o) * cu::sat_stride(g));

  std::normal_distribution<float> dist;
  std::vector<float> scale(g.O), bias(g.O), beta(g.O), gamma(g.N * g.O), zeta(g.N * g.O), threshold(g.N * g.O);
  std::vector<float> residual(g.N * g.O * Ho * Wo);
  for (auto* v : {&scale, &bias, &beta, &gamma, &zeta, &threshold, &residual})
    for (auto& e : *v) e = dist(rng);
  const int out_words = cm::packed_words(g.O);
  std::vector<uint32_t> packed(g.N * Ho * Wo * out_words, 0u);
  const cm::ConvEpilogue e{scale.data(), bias.data(), residual.data(), gamma.data(),
                           zeta.data(),  beta.data(), threshold.data(), g.O};

  for (int64_t m = 0; m < g.pixels(); ++m) {
    const cu::GatherRow row = cu::gather_row(m, g);
    const cu::OutputPixel p = cu::output_pixel(m, g);
    const cu::TapRange rh = cu::tap_range(p.ih0, g.H, g.dil_h, g.KH), rw = cu::tap_range(p.iw0, g.W, g.dil_w, g.KW);
    // The gathered row of the implicit im2col matrix and its popcount.
    std::vector<uint32_t> a(ktot);
    int64_t popc_a = 0;
    for (int k = 0; k < ktot; ++k) {
      a[k] = cu::gather_activation(x.data(), g, row, cu::reduction_index(k, g));
      popc_a += __builtin_popcount(a[k]);
    }
    for (int o = 0; o < g.O; ++o) {
      int64_t popc_and = 0;
      for (int k = 0; k < ktot; ++k)
        popc_and += __builtin_popcount(a[k] & cu::gather_weight(w.data(), g, o, k, cu::reduction_index(k, g)));
      const int64_t popc_w = cu::sat_rectangle(sat.data() + static_cast<int64_t>(o) * cu::sat_stride(g), g.KW, rh, rw);
      const int32_t count = cu::pm1_dot(rh.count() * rw.count(), g.C, popc_a, popc_w, popc_and);

      int32_t naive = 0;
      const int oh = p.rest / Wo, ow = p.rest % Wo;
      for (int kh = 0; kh < g.KH; ++kh)
        for (int kw = 0; kw < g.KW; ++kw) {
          const int ih = oh * g.stride_h - g.pad_h + kh * g.dil_h, iw = ow * g.stride_w - g.pad_w + kw * g.dil_w;
          if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
          const int64_t xb = ((p.n * g.H + ih) * g.W + iw) * words;
          const int64_t wb = static_cast<int64_t>(o) * ktot + (kh * g.KW + kw) * words;
          for (int c = 0; c < g.C; ++c) naive += sign(x, xb, c) * sign(w, wb, c);
        }
      EXPECT(count == naive, "count C=%d O=%d m=%ld o=%d: %d != %d", g.C, g.O, (long)m, o, count, naive);

      const int64_t out_index = (p.n * g.O + o) * Ho * Wo + p.rest;
      const float value = cu::output_value(count, e, p.n, o, g.O, out_index);
      float u = static_cast<float>(naive) * scale[o];
      u = u + bias[o];
      u = u + residual[out_index];
      const float gm = gamma[p.n * g.O + o], shifted = u - gm;
      const float expected = u > gm ? shifted + zeta[p.n * g.O + o] : beta[o] * shifted + zeta[p.n * g.O + o];
      EXPECT(bits_of(value) == bits_of(expected), "epilogue m=%ld o=%d", (long)m, o);
      const bool bit = cm::packed_bit(value, cm::output_threshold(e, p.n, o));
      if (bit) packed[m * out_words + o / 32] |= 1u << (o % 32);
      EXPECT(bit == !(expected > threshold[p.n * g.O + o]), "packed bit m=%ld", (long)m);
    }
    EXPECT((packed[m * out_words + out_words - 1] >> 1 >> ((g.O - 1) % 32)) == 0u, "pad bits of the packed output");
  }
}

// One mma.m16n8k256.and.popc as the PTX ISA defines its fragments, element by element: thread
// (groupID g, threadID_in_group t) holds A elements a_i (register i / 32, bit i % 32) at
// row g (+8 for 32 <= i < 64 and i >= 96), column 32 t + (i % 32) (+128 for i >= 64); B elements
// b_i at row 32 t + (i % 32) (+128 for i >= 32), column g; accumulators c_i at row g (+8 for
// i >= 2), column 2 t + (i % 2).
void emulate_mma(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], int32_t (&d)[32][4]) {
  bool A[16][256] = {}, B[256][8] = {};
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 128; ++i) {
      const int row = g + ((i >= 32 && i < 64) || i >= 96 ? 8 : 0);
      const int col = 32 * t + i % 32 + (i >= 64 ? 128 : 0);
      A[row][col] = (a[lane][i / 32] >> (i % 32)) & 1u;
    }
    for (int i = 0; i < 64; ++i) B[32 * t + i % 32 + (i >= 32 ? 128 : 0)][g] = (b[lane][i / 32] >> (i % 32)) & 1u;
  }
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + i % 2;
      int32_t sum = 0;
      for (int k = 0; k < 256; ++k) sum += A[row][k] && B[k][col];
      d[lane][i] = sum;
    }
  }
}

void test_mma_fragments(std::mt19937& rng) {
  // A 16 x 8-word tile of pixels and an 8 x 8-word tile of channels, as in shared memory.
  uint32_t tile_a[16][8], tile_b[8][8];
  for (auto& row : tile_a)
    for (auto& v : row) v = static_cast<uint32_t>(rng());
  for (auto& row : tile_b)
    for (auto& v : row) v = static_cast<uint32_t>(rng());
  // The registers every lane loads in the kernel.
  uint32_t a[32][4], b[32][2];
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < 4; ++r) a[lane][r] = tile_a[cu::mma_a_row(lane, r)][cu::mma_a_word(lane, r)];
    for (int r = 0; r < 2; ++r) b[lane][r] = tile_b[cu::mma_b_col(lane)][cu::mma_b_word(lane, r)];
  }
  int32_t d[32][4];
  emulate_mma(a, b, d);
  // Where the kernel stores each accumulator must hold popc(a & w) of that pixel and channel.
  int32_t seen[16][8] = {};
  for (int lane = 0; lane < 32; ++lane)
    for (int r = 0; r < 4; ++r) {
      const int row = cu::mma_c_row(lane, r), col = cu::mma_c_col(lane, r);
      int32_t expected = 0;
      for (int j = 0; j < 8; ++j) expected += __builtin_popcount(tile_a[row][j] & tile_b[col][j]);
      EXPECT(d[lane][r] == expected, "fragment lane=%d reg=%d: %d != %d", lane, r, d[lane][r], expected);
      ++seen[row][col];
    }
  for (auto& row : seen)
    for (int v : row) EXPECT(v == 1, "accumulator mapping is not a bijection");
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  test_tap_range();
  test_channel_mask_and_reduction_index();
  for (const cu::ConvGeometry& g : kShapes) test_conv_algorithm(g, rng);
  for (int i = 0; i < 20; ++i) test_mma_fragments(rng);
  if (failures) {
    std::printf("%d failed\n", failures);
    return 1;
  }
  std::printf("all CUDA host-side checks passed\n");
  return 0;
}
