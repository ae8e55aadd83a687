// Per-call time of each stage of the binary convolution on the calling thread (for the overhead
// tools: build/cmake/conv_breakdown and `python -m hidiff_kernels.overhead`), on random operands
// with the scale and bias epilogue, with the active instruction set.
#pragma once

#include <cstdint>

#include "binary_conv.h"

namespace hidiff::core {

// Microseconds per call, each the median over rounds of the mean of `reps` calls.
struct ConvStageTimes {
  double plan_build;   // make_conv_plan (a shape's first call)
  double plan_cached;  // conv_plan_for once the shape is cached (every later call)
  double weights;      // conv_prepare_weights
  double input;        // zero fill and conv_prepare_input
  double tiles;        // conv_tiles over every tile
};

ConvStageTimes time_conv_stages(const ConvShape& s, int reps, int rounds = 7);

}  // namespace hidiff::core
