// Run-time CPU feature detection and the choice of the popcount instruction set.
//
// The binary kernels are compiled three times (portable, AVX2, AVX-512 VPOPCNTDQ) in one binary;
// the best path the running CPU supports is chosen when the library loads, not at compile time,
// so one wheel serves every x86-64 machine. Tests force the weaker paths with set_isa().
#pragma once

#include <string>

namespace hidiff::core {

enum class Isa : int { Portable = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool popcnt = false;
  bool avx2 = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vpopcntdq = false;
};

// Features of the CPU this process runs on.
const CpuFeatures& cpu_features();

// Best instruction set the CPU supports.
Isa best_supported_isa();

// Whether the CPU can execute the given path.
bool isa_supported(Isa isa);

// Path used by the kernels now. Starts as best_supported_isa(), or as the environment variable
// HIDIFF_CPU_ISA (portable | avx2 | avx512) when it names a supported path.
Isa active_isa();

// Forces a path. Returns false (and changes nothing) when the CPU cannot run it.
bool set_active_isa(Isa isa);

const char* isa_name(Isa isa);

// Parses "portable", "avx2" or "avx512"; returns false for any other name.
bool parse_isa(const std::string& name, Isa* out);

}  // namespace hidiff::core
