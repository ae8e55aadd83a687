#include "cpu_features.h"

#include <atomic>
#include <cstdlib>

namespace hidiff::core {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.popcnt = __builtin_cpu_supports("popcnt");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
#endif
  return f;
}

Isa initial_isa() {
  Isa isa = best_supported_isa();
  if (const char* env = std::getenv("HIDIFF_CPU_ISA")) {
    Isa requested;
    if (parse_isa(env, &requested) && isa_supported(requested)) isa = requested;
  }
  return isa;
}

std::atomic<int>& active_isa_storage() {
  static std::atomic<int> value{static_cast<int>(initial_isa())};
  return value;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

bool isa_supported(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::Portable:
      return true;
    case Isa::Avx2:
      return f.avx2;
    case Isa::Avx512:
      return f.avx512f && f.avx512bw && f.avx512vpopcntdq;
  }
  return false;
}

Isa best_supported_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Portable;
}

Isa active_isa() { return static_cast<Isa>(active_isa_storage().load(std::memory_order_relaxed)); }

bool set_active_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  active_isa_storage().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Portable:
      return "portable";
    case Isa::Avx2:
      return "avx2";
    case Isa::Avx512:
      return "avx512";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::Portable, Isa::Avx2, Isa::Avx512}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

}  // namespace hidiff::core
