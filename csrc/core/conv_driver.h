// The loop nest shared by every instruction set: tiling, border handling and the epilogue.
//
// Included by each per-ISA source after its target pragma. Everything here sits in an anonymous
// namespace, so each source gets its own copy compiled for its own instruction set: an inline
// function shared by name between an AVX-512 and a portable source could otherwise be merged
// by the linker into one AVX-512 copy, which would crash the portable path on older CPUs.
//
// A Kernel provides kPixels (P) and kChannels (Q) and
//   template <int P, int Q> static void run(const uint32_t* const* xp, const uint32_t* const* wp,
//                                           const Segment* segs, int64_t nseg, int64_t* D);
// which sets D[p * Q + q] = sum over segments of popcount(xp[p][x_off + i] ^ wp[q][w_off + i]),
// i < len: the disagreeing bits of P pixels against Q output channels, and
//   template <int P, int Q> static void store(const RowContext& r, const int64_t* D, int64_t ow,
//                                             int64_t o, int64_t taps);
// which writes the outputs (ScalarEpilogue::store, or a vectorised equivalent).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "binary_conv.h"

namespace hidiff::core::detail {
namespace {

// A run of `len` words read at x_off from a pixel's base and at w_off from a channel's weights.
struct Segment {
  int64_t x_off;
  int64_t w_off;
  int64_t len;
};

struct RowContext {
  const ConvShape* s;
  const uint32_t* w;
  const float* scale;
  const float* bias;
  float* out;
  int64_t n, oh, Ho, Wo;
  int64_t weight_stride;  // words per output channel: KH * KW * words
};

template <int P, int Q>
inline void store_outputs(const RowContext& r, const int64_t* D, int64_t ow, int64_t o, int64_t taps) {
  const int64_t full = taps * r.s->C;
  for (int q = 0; q < Q; ++q) {
    float* dst = r.out + ((r.n * r.s->O + o + q) * r.Ho + r.oh) * r.Wo + ow;
    for (int p = 0; p < P; ++p) {
      float value = static_cast<float>(full - 2 * D[p * Q + q]);
      if (r.scale) value = value * r.scale[o + q];
      if (r.bias) value = value + r.bias[o + q];
      dst[p] = value;
    }
  }
}

// The epilogue in plain C++: out = (taps * C - 2 * D) * scale + bias, as float32.
struct ScalarEpilogue {
  template <int P, int Q>
  static void store(const RowContext& r, const int64_t* D, int64_t ow, int64_t o, int64_t taps) {
    store_outputs<P, Q>(r, D, ow, o, taps);
  }
};

// P pixels sharing one segment list against output channels [o_begin, o_end).
template <class Kernel, int P>
inline void run_channels(const RowContext& r, const uint32_t* const* xp, const Segment* segs, int64_t nseg,
                         int64_t taps, int64_t ow, int64_t o_begin, int64_t o_end) {
  constexpr int Q = Kernel::kChannels;
  int64_t D[P * Q];
  int64_t o = o_begin;
  for (; o + Q <= o_end; o += Q) {
    const uint32_t* wp[Q];
    for (int q = 0; q < Q; ++q) wp[q] = r.w + (o + q) * r.weight_stride;
    Kernel::template run<P, Q>(xp, wp, segs, nseg, D);
    Kernel::template store<P, Q>(r, D, ow, o, taps);
  }
  for (; o < o_end; ++o) {
    const uint32_t* wp = r.w + o * r.weight_stride;
    Kernel::template run<P, 1>(xp, &wp, segs, nseg, D);
    Kernel::template store<P, 1>(r, D, ow, o, taps);
  }
}

template <class Kernel>
void conv_tiles(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale, const float* bias,
                float* out, int64_t tile_begin, int64_t tile_end) {
  constexpr int PB = Kernel::kPixels;
  const int64_t words = s.words();
  const int64_t Ho = s.out_h();
  const int64_t Wo = s.out_w();
  const int64_t channel_tiles = (s.O + kChannelTile - 1) / kChannelTile;

  // Output columns whose receptive field lies entirely inside the image: [ow_lo, ow_hi).
  const int64_t reach = (s.KW - 1) * s.dil_w;
  const int64_t ow_lo = std::min(Wo, (s.pad_w + s.stride_w - 1) / s.stride_w);
  const int64_t last_start = s.W - 1 - reach + s.pad_w;
  const int64_t ow_hi = std::clamp(last_start >= 0 ? last_start / s.stride_w + 1 : int64_t{0}, ow_lo, Wo);

  std::vector<Segment> interior;
  std::vector<Segment> border;
  interior.reserve(s.KH * s.KW);
  border.reserve(s.KH * s.KW);
  std::vector<int64_t> valid_rows;
  valid_rows.reserve(s.KH);

  RowContext r{&s, w, scale, bias, out, 0, 0, Ho, Wo, s.KH * s.KW * words};
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t channel_tile = tile % channel_tiles;
    const int64_t row = tile / channel_tiles;
    r.n = row / Ho;
    r.oh = row % Ho;
    const int64_t o_begin = channel_tile * kChannelTile;
    const int64_t o_end = std::min(s.O, o_begin + kChannelTile);
    const uint32_t* xn = x + r.n * s.H * s.W * words;

    // Kernel rows inside the image are the same for the whole output row.
    valid_rows.clear();
    interior.clear();
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t ih = r.oh * s.stride_h - s.pad_h + kh * s.dil_h;
      if (ih < 0 || ih >= s.H) continue;
      valid_rows.push_back(kh);
      if (s.dil_w == 1) {
        interior.push_back({ih * s.W * words, kh * s.KW * words, s.KW * words});
      } else {
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          interior.push_back({(ih * s.W + kw * s.dil_w) * words, (kh * s.KW + kw) * words, words});
        }
      }
    }
    const int64_t kh_valid = static_cast<int64_t>(valid_rows.size());

    // Interior: every tap valid, PB pixels at a time.
    const int64_t interior_taps = kh_valid * s.KW;
    int64_t ow = ow_lo;
    for (; ow + PB <= ow_hi; ow += PB) {
      const uint32_t* xp[PB];
      for (int p = 0; p < PB; ++p) xp[p] = xn + ((ow + p) * s.stride_w - s.pad_w) * words;
      run_channels<Kernel, PB>(r, xp, interior.data(), static_cast<int64_t>(interior.size()), interior_taps, ow,
                               o_begin, o_end);
    }
    for (; ow < ow_hi; ++ow) {
      const uint32_t* xp = xn + (ow * s.stride_w - s.pad_w) * words;
      run_channels<Kernel, 1>(r, &xp, interior.data(), static_cast<int64_t>(interior.size()), interior_taps, ow,
                              o_begin, o_end);
    }

    // Border: only the taps inside the image, one pixel at a time.
    for (int64_t bw = 0; bw < Wo; ++bw) {
      if (bw == ow_lo) bw = std::max(ow_lo, ow_hi);
      if (bw >= Wo) break;
      const int64_t base = bw * s.stride_w - s.pad_w;
      const int64_t kw_lo = base < 0 ? std::min(s.KW, (-base + s.dil_w - 1) / s.dil_w) : 0;
      const int64_t kw_hi =
          (s.W - 1 - base) >= 0 ? std::clamp((s.W - 1 - base) / s.dil_w + 1, kw_lo, s.KW) : kw_lo;
      border.clear();
      for (int64_t kh : valid_rows) {
        const int64_t ih = r.oh * s.stride_h - s.pad_h + kh * s.dil_h;
        if (kw_hi <= kw_lo) break;
        if (s.dil_w == 1) {
          border.push_back({(ih * s.W + base + kw_lo) * words, (kh * s.KW + kw_lo) * words, (kw_hi - kw_lo) * words});
        } else {
          for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
            border.push_back({(ih * s.W + base + kw * s.dil_w) * words, (kh * s.KW + kw) * words, words});
          }
        }
      }
      const uint32_t* xp = xn;
      run_channels<Kernel, 1>(r, &xp, border.data(), static_cast<int64_t>(border.size()), kh_valid * (kw_hi - kw_lo),
                              bw, o_begin, o_end);
    }
  }
}

}  // namespace
}  // namespace hidiff::core::detail
