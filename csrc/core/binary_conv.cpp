#include "binary_conv.h"

#include "cpu_features.h"

namespace hidiff::core {

void binary_conv2d_tiles(const ConvShape& s, const uint32_t* x, const uint32_t* w, const float* scale,
                         const float* bias, float* out, int64_t tile_begin, int64_t tile_end) {
  switch (active_isa()) {
    case Isa::Avx512:
      binary_conv2d_tiles_avx512(s, x, w, scale, bias, out, tile_begin, tile_end);
      return;
    case Isa::Avx2:
      binary_conv2d_tiles_avx2(s, x, w, scale, bias, out, tile_begin, tile_end);
      return;
    case Isa::Portable:
      binary_conv2d_tiles_portable(s, x, w, scale, bias, out, tile_begin, tile_end);
      return;
  }
}

}  // namespace hidiff::core
