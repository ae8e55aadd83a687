// Binary convolution on the 1-bit tensor cores: implicit GEMM with
// mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc and the fused epilogue.
//
// The counting scheme and the gather are in conv_geometry.h (shared with the host tests), the
// epilogue in csrc/common/conv_epilogue.h (shared with the CPU kernels). Tiling: a block of
// 4 warps computes 64 output pixels x 64 output channels; each warp owns a 32 x 32 sub-tile,
// i.e. 2 x 4 MMA tiles of 16 x 8. The reduction advances 16 words (512 bits, two MMA steps) at a
// time: the next step's words are gathered from global memory into registers while the tensor
// cores consume the current ones from shared memory.
//
// Epilogue: the popc(a & w) counts go through shared memory, where each thread turns one
// (pixel, channel) count into the +-1 result (with popc(a) of the pixel and popc(w) of the
// channel's valid taps), applies scale, bias, residual and TA, and writes the NCHW output with
// consecutive threads on consecutive pixels. With packing, each warp then binarises 32 channels
// of a pixel and writes their word (a ballot).
#include <algorithm>

#include "kernels.h"

namespace hidiff::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kBlockM = 64;                               // output pixels per block
constexpr int kBlockN = 64;                               // output channels per block (whole words)
constexpr int kBlockK = 16;                               // reduction words staged per iteration
constexpr int kStepWords = 8;                             // 256 bits: one m16n8k256 step
constexpr int kSmemStride = kBlockK + 4;                  // rows 20 words apart: conflict-free fragments
constexpr int kWarpM = 32, kWarpN = 32;                   // warp sub-tile (2 x 2 warps)
constexpr int kTilesM = kWarpM / 16, kTilesN = kWarpN / 8;
constexpr int kLoadRows = kBlockM * kBlockK / kThreads;   // gathered words per thread and operand
constexpr int kLoadRowStep = kThreads / kBlockK;
constexpr int kOutStride = kBlockN + 1;                   // epilogue tile row, padded against conflicts
constexpr int kSatThreads = 128;

static_assert(kBlockM == kBlockN, "the loaders share one row mapping for pixels and channels");
static_assert(kBlockN % 32 == 0, "a block must own whole output words for the packing");
static_assert(kBlockK % kStepWords == 0, "whole MMA steps per stage");
static_assert((kBlockM / kWarpM) * (kBlockN / kWarpN) * 32 == kThreads, "one warp per sub-tile");

__global__ void __launch_bounds__(kSatThreads) weight_tap_sat_kernel(ConvGeometry g, const uint32_t* __restrict__ w,
                                                                      int32_t* __restrict__ sat) {
  const int o = blockIdx.x * kSatThreads + threadIdx.x;
  if (o < g.O) build_tap_sat(w, g, o, sat + static_cast<int64_t>(o) * sat_stride(g));
}

// The 1-bit MMA with AND exists from sm_80 on; older targets (a TORCH_CUDA_ARCH_LIST with them)
// get the same counts from per-lane popcounts.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define HIDIFF_B1_AND_MMA 0
#else
#define HIDIFF_B1_AND_MMA 1
#endif

#if HIDIFF_B1_AND_MMA
// acc += popc(a & b) over one 16 x 8 x 256 step, for the fragments of this lane.
__device__ __forceinline__ void mma_and_popc(int32_t (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

struct SharedTiles {
  uint32_t a[kBlockM][kSmemStride];  // gathered activations, [pixel][word]
  uint32_t b[kBlockN][kSmemStride];  // weights, [channel][word]
  int32_t out[kBlockM][kOutStride];  // popc(a & w), then the float results (bit patterns)
  int32_t popc_a[kBlockM];           // popc(a) of each pixel over its valid taps
  int64_t n[kBlockM];                // batch item of each pixel
  int32_t rest[kBlockM];             // oh * Wo + ow of each pixel
  TapRange rows[kBlockM], cols[kBlockM];  // valid taps of each pixel
};

// One stage of the reduction: kBlockK / kStepWords MMA steps over the tiles in shared memory.
__device__ __forceinline__ void multiply_stage(const SharedTiles& s, int warp_m, int warp_n, int lane,
                                               int32_t (&acc)[kTilesM][kTilesN][4]) {
#pragma unroll
  for (int step = 0; step < kBlockK / kStepWords; ++step) {
    const int word0 = step * kStepWords;
#if !HIDIFF_B1_AND_MMA
    // The same counts from the same tiles, with popc per lane.
#pragma unroll
    for (int tm = 0; tm < kTilesM; ++tm)
#pragma unroll
      for (int tn = 0; tn < kTilesN; ++tn)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const uint32_t* a = s.a[warp_m * kWarpM + tm * 16 + mma_c_row(lane, r)] + word0;
          const uint32_t* b = s.b[warp_n * kWarpN + tn * 8 + mma_c_col(lane, r)] + word0;
#pragma unroll
          for (int j = 0; j < kStepWords; ++j) acc[tm][tn][r] += __popc(a[j] & b[j]);
        }
#else
    uint32_t a[kTilesM][4], b[kTilesN][2];
#pragma unroll
    for (int tm = 0; tm < kTilesM; ++tm)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        a[tm][r] = s.a[warp_m * kWarpM + tm * 16 + mma_a_row(lane, r)][word0 + mma_a_word(lane, r)];
#pragma unroll
    for (int tn = 0; tn < kTilesN; ++tn)
#pragma unroll
      for (int r = 0; r < 2; ++r)
        b[tn][r] = s.b[warp_n * kWarpN + tn * 8 + mma_b_col(lane)][word0 + mma_b_word(lane, r)];
#pragma unroll
    for (int tm = 0; tm < kTilesM; ++tm)
#pragma unroll
      for (int tn = 0; tn < kTilesN; ++tn) mma_and_popc(acc[tm][tn], a[tm], b[tn]);
#endif
  }
}

__global__ void __launch_bounds__(kThreads)
    binary_conv2d_kernel(ConvGeometry g, const uint32_t* __restrict__ x, const uint32_t* __restrict__ w,
                         const int32_t* __restrict__ sat, common::ConvEpilogue e, float* __restrict__ out) {
  __shared__ SharedTiles s;
  const int tid = threadIdx.x;
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int warp_m = warp / (kBlockN / kWarpN);
  const int warp_n = warp % (kBlockN / kWarpN);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int o0 = blockIdx.y * kBlockN;
  const int64_t pixels = g.pixels();

  // Per-pixel geometry for the epilogue (read after the first barrier of the main loop).
  if (tid < kBlockM) {
    const int64_t m = m0 + tid;
    if (m < pixels) {
      const OutputPixel p = output_pixel(m, g);
      s.n[tid] = p.n;
      s.rest[tid] = p.rest;
      s.rows[tid] = tap_range(p.ih0, g.H, g.dil_h, g.KH);
      s.cols[tid] = tap_range(p.iw0, g.W, g.dil_w, g.KW);
    }
  }

  // Loader mapping: this thread gathers column `load_col` of rows load_row + i * kLoadRowStep,
  // for the pixels (A) and for the channels (B) alike.
  const int load_col = tid % kBlockK;
  const int load_row = tid / kBlockK;
  GatherRow rows[kLoadRows];
#pragma unroll
  for (int i = 0; i < kLoadRows; ++i) rows[i] = gather_row(m0 + load_row + i * kLoadRowStep, g);

  uint32_t a_next[kLoadRows], b_next[kLoadRows];
  const auto gather = [&](int stage) {
    const int k = stage * kBlockK + load_col;
    const ReductionIndex r = reduction_index(k, g);
#pragma unroll
    for (int i = 0; i < kLoadRows; ++i) {
      a_next[i] = gather_activation(x, g, rows[i], r);
      b_next[i] = gather_weight(w, g, o0 + load_row + i * kLoadRowStep, k, r);
    }
  };

  int32_t acc[kTilesM][kTilesN][4] = {};
  int32_t popc_a[kLoadRows] = {};
  const int stages = static_cast<int>(ceil_div(g.reduction_words(), kBlockK));
  gather(0);
  for (int stage = 0; stage < stages; ++stage) {
    __syncthreads();  // the previous stage's tiles are consumed
#pragma unroll
    for (int i = 0; i < kLoadRows; ++i) {
      s.a[load_row + i * kLoadRowStep][load_col] = a_next[i];
      s.b[load_row + i * kLoadRowStep][load_col] = b_next[i];
      popc_a[i] += __popc(a_next[i]);
    }
    __syncthreads();
    if (stage + 1 < stages) gather(stage + 1);  // in flight while the tensor cores run
    multiply_stage(s, warp_m, warp_n, lane, acc);
  }

  // popc(a) per pixel: the kBlockK threads of a row are 16 consecutive lanes of one warp.
#pragma unroll
  for (int i = 0; i < kLoadRows; ++i) {
    int total = popc_a[i];
#pragma unroll
    for (int offset = kBlockK / 2; offset > 0; offset /= 2) total += __shfl_xor_sync(0xFFFFFFFFu, total, offset);
    if (load_col == 0) s.popc_a[load_row + i * kLoadRowStep] = total;
  }
#pragma unroll
  for (int tm = 0; tm < kTilesM; ++tm)
#pragma unroll
    for (int tn = 0; tn < kTilesN; ++tn)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        s.out[warp_m * kWarpM + tm * 16 + mma_c_row(lane, r)][warp_n * kWarpN + tn * 8 + mma_c_col(lane, r)] =
            acc[tm][tn][r];
  __syncthreads();

  // Epilogue: consecutive threads take consecutive pixels of one channel (coalesced NCHW stores).
  const int plane = g.out_h() * g.out_w();
  for (int index = tid; index < kBlockM * kBlockN; index += kThreads) {
    const int row = index % kBlockM;
    const int col = index / kBlockM;
    const int o = o0 + col;
    if (m0 + row >= pixels || o >= g.O) continue;
    const int32_t* channel_sat = sat + static_cast<int64_t>(o) * sat_stride(g);
    const TapRange rh = s.rows[row], rw = s.cols[row];
    const int32_t count = pm1_dot(rh.count() * rw.count(), g.C, s.popc_a[row],
                                  sat_rectangle(channel_sat, g.KW, rh, rw), s.out[row][col]);
    const int64_t n = s.n[row];
    const int64_t out_index = (n * g.O + o) * plane + s.rest[row];
    const float value = output_value(count, e, n, o, g.O, out_index);
    out[out_index] = value;
    s.out[row][col] = __float_as_int(value);
  }
  if (e.packed == nullptr) return;  // uniform across the block
  __syncthreads();

  // Packing: one warp per (pixel, 32 channels); the ballot is the packed word.
  const int out_words = common::packed_words(g.O);
  for (int item = warp; item < kBlockM * (kBlockN / 32); item += kThreads / 32) {
    const int row = item % kBlockM;
    const int word = item / kBlockM;
    const int64_t m = m0 + row;
    const int o = o0 + word * 32 + lane;
    const bool valid = m < pixels && o < g.O;
    const bool bit = valid && common::packed_bit(__int_as_float(s.out[row][word * 32 + lane]),
                                                 common::output_threshold(e, s.n[row], o));
    const uint32_t packed = __ballot_sync(0xFFFFFFFFu, bit);
    const int out_word = o0 / 32 + word;
    if (lane == 0 && m < pixels && out_word < out_words) e.packed[m * out_words + out_word] = packed;
  }
}

}  // namespace

void launch_binary_conv2d(const ConvGeometry& g, const uint32_t* x, const uint32_t* w, int32_t* workspace,
                          const common::ConvEpilogue& e, float* out, cudaStream_t stream) {
  const int64_t pixels = g.pixels();
  if (pixels == 0 || g.O == 0) return;
  weight_tap_sat_kernel<<<static_cast<unsigned>(ceil_div(g.O, kSatThreads)), kSatThreads, 0, stream>>>(g, w,
                                                                                                    workspace);
  const dim3 grid(static_cast<unsigned>(ceil_div(pixels, kBlockM)), static_cast<unsigned>(ceil_div(g.O, kBlockN)));
  binary_conv2d_kernel<<<grid, kThreads, 0, stream>>>(g, x, w, workspace, e, out);
}

}  // namespace hidiff::cuda
