// CPU capability detection and selection (see cpu_dispatch.h).
#include "common/cpu_dispatch.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace ldeq {
namespace cpu {
namespace {

Isa detect() {
#if LDEQ_HAVE_ISA_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

Isa from_env(Isa cap) {
  const char* v = std::getenv("LDEQ_CPU_CAPABILITY");
  Isa want;
  if (v == nullptr || v[0] == '\0' || !parse_isa(v, &want)) return cap;  // invalid text: ignored (Python warns)
  return std::min(want, cap);
}

std::atomic<int>& current() {
  static std::atomic<int> c{static_cast<int>(from_env(max_capability()))};
  return c;
}

}  // namespace

Isa max_capability() {
  static const Isa cap = detect();
  return cap;
}

Isa capability() { return static_cast<Isa>(current().load(std::memory_order_relaxed)); }

Isa set_capability(Isa isa) {
  const Isa v = std::min(isa, max_capability());
  current().store(static_cast<int>(v), std::memory_order_relaxed);
  return v;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

bool parse_isa(const std::string& name, Isa* out) {
  if (name == "default") *out = Isa::kDefault;
  else if (name == "avx2") *out = Isa::kAvx2;
  else if (name == "avx512") *out = Isa::kAvx512;
  else return false;
  return true;
}

}  // namespace cpu
}  // namespace ldeq
