// The one CPU-capability dispatch of ldeq's CPU kernels (heatmap and solver kernels alike).
//
// The extension is built without -march flags (a portable wheel). Each hot kernel body is a
// template on the ISA it is compiled for (`Isa`), always inlined into three explicit entry points
// (LDEQ_CPU_KERNEL below):
//   NAME_default  baseline x86-64 / any CPU (no target attribute)
//   NAME_avx2     __attribute__((target("avx2,fma")))
//   NAME_avx512   __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
// and NAME(...) calls the one that `cpu_capability()` selects, through a three-entry table. The
// capability is the minimum of
//   * what the CPU supports (__builtin_cpu_supports, once),
//   * what this build compiled (only `default` when the compiler is not GCC/Clang or not x86-64),
//   * LDEQ_CPU_CAPABILITY=default|avx2|avx512 (read once; like PyTorch's ATEN_CPU_CAPABILITY),
//   * set_cpu_capability() (tests force every path from Python: ldeq._ext.set_cpu_capability).
// There is no other multiversioning in the CPU sources: no target_clones, no ifunc.
#pragma once

#include <cstdint>
#include <string>

namespace ldeq {
namespace cpu {

enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(__CUDACC__) && !defined(_MSC_VER)
#define LDEQ_HAVE_ISA_VARIANTS 1
#define LDEQ_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define LDEQ_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#else
#define LDEQ_HAVE_ISA_VARIANTS 0
#define LDEQ_TARGET_AVX2
#define LDEQ_TARGET_AVX512
#endif

// Bodies inlined into each ISA entry point (GCC does not inline functions this large on its own,
// and a call would run one shared baseline copy).
#if defined(__GNUC__) || defined(__clang__)
#define LDEQ_INLINE inline __attribute__((always_inline))
#define LDEQ_NOINLINE __attribute__((noinline))
#else
#define LDEQ_INLINE inline
#define LDEQ_NOINLINE
#endif

// Highest capability of this CPU that this build compiled a path for.
Isa max_capability();
// The capability the kernels use now (see above).
Isa capability();
// Force a capability; values above max_capability() are capped. Returns the capability in effect.
Isa set_capability(Isa isa);
const char* isa_name(Isa isa);
// "default" | "avx2" | "avx512" -> Isa; returns false for any other text.
bool parse_isa(const std::string& name, Isa* out);

// The entry points of one kernel, indexed by Isa.
template <typename Fn>
struct Kernel {
  Fn* fns[3];
  Fn* get() const { return fns[static_cast<int>(capability())]; }
};

}  // namespace cpu
}  // namespace ldeq

// Defines NAME_default / NAME_avx2 / NAME_avx512 (each the template BODY<Isa::k...>(args...)
// inlined) and a function template NAME_kernel<Fn>() -> Kernel<Fn> picking among them. BODY must be a
// function template whose first template parameter is `ldeq::cpu::Isa` and which is LDEQ_INLINE.
// Use: `LDEQ_CPU_KERNEL(mix, mix_body)` then `mix(args...)` runs the selected entry point.
#define LDEQ_CPU_KERNEL(NAME, BODY)                                                                  \
  template <typename... A>                                                                           \
  void NAME##_default(A... a) {                                                                      \
    BODY<::ldeq::cpu::Isa::kDefault>(a...);                                                          \
  }                                                                                                  \
  template <typename... A>                                                                           \
  LDEQ_TARGET_AVX2 void NAME##_avx2(A... a) {                                                        \
    if constexpr (LDEQ_HAVE_ISA_VARIANTS) BODY<::ldeq::cpu::Isa::kAvx2>(a...);                       \
    else BODY<::ldeq::cpu::Isa::kDefault>(a...);                                                     \
  }                                                                                                  \
  template <typename... A>                                                                           \
  LDEQ_TARGET_AVX512 void NAME##_avx512(A... a) {                                                    \
    if constexpr (LDEQ_HAVE_ISA_VARIANTS) BODY<::ldeq::cpu::Isa::kAvx512>(a...);                     \
    else BODY<::ldeq::cpu::Isa::kDefault>(a...);                                                     \
  }                                                                                                  \
  template <typename Fn>                                                                             \
  const ::ldeq::cpu::Kernel<Fn>& NAME##_kernel() {                                                   \
    static const ::ldeq::cpu::Kernel<Fn> k{{&NAME##_default, &NAME##_avx2, &NAME##_avx512}};         \
    return k;                                                                                        \
  }                                                                                                  \
  template <typename... A>                                                                           \
  inline void NAME(A... a) {                                                                         \
    NAME##_kernel<void(A...)>().get()(a...);                                                         \
  }
