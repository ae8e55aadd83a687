// The XOR + popcount + add throughput limit of one core, for the benchmarks: the binary
// convolution's inner step with every operand in registers (no loads, no epilogue), on the
// active instruction set. The convolution's speed divided by this limit (times the thread count)
// is the fraction of the machine's popcount throughput it reaches.
#pragma once

#include <cstdint>

namespace hidiff::core {

// Runs `iterations` iterations of the register-only step loop; returns the binary MACs
// performed (bits XORed and counted) and stores a checksum so that the work cannot be elided.
int64_t popcount_peak(int64_t iterations, uint64_t* checksum);

}  // namespace hidiff::core
