// Allocation of large CPU outputs that a kernel writes once, from scratch.
//
// A tensor of tens of MB is a fresh glibc mmap each time it is allocated (above the mmap
// threshold), and the first write to each 4 KiB page takes a page fault: about 10 ms for a
// 51 MB (32, 98, 64, 64) float32 tensor on the development machine, against ~1.5 ms for the
// write itself. Transparent huge pages on that one buffer (MADV_HUGEPAGE, a hint on this mapping
// only, nothing process-wide) take 2 MiB per fault: ~2.5 ms measured when memory is free. But with
// THP defrag=madvise such a fault may stop for memory compaction: on a loaded or fragmented host
// the hint gave the worst tails (issue 14: 158-198 ms runs against a steady 50 ms; 2026-11-30 on
// the dev machine, two runs: p95/median up to 2.05 for the fused op and 5.17 for the two ops, at
// most 1.31 for any path without it, though it lowered the fused op's mean). So the hint is
// opt-in: LDEQ_HUGE_PAGES=1 at load,
// or ldeq._ext.set_huge_pages(True). See docs/architecture.md and docs/benchmarks.md.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ldeq {

// The hint's switch: LDEQ_HUGE_PAGES=1 / LDEQ_NO_HUGE_PAGES=1 at load (the default is
// kHugePagesDefault), set_huge_pages() at run time (benchmarks and tests compare both in one process).
constexpr bool kHugePagesDefault = false;  // opt-in, see above

inline std::atomic<bool>& huge_pages_flag() {
  static std::atomic<bool> flag{[] {
    const auto set = [](const char* name) {
      const char* v = std::getenv(name);
      return v != nullptr && v[0] != '\0' && v[0] != '0';
    };
    if (set("LDEQ_NO_HUGE_PAGES")) return false;
    if (set("LDEQ_HUGE_PAGES")) return true;
    return kHugePagesDefault;
  }()};
  return flag;
}

inline bool huge_pages_enabled() { return huge_pages_flag().load(std::memory_order_relaxed); }

// Returns the previous setting.
inline bool set_huge_pages(bool on) { return huge_pages_flag().exchange(on); }

// Hint THP on the 2 MiB-aligned interior of t's storage (only memory t owns). Call before the
// first write. Small tensors and non-CPU tensors are left alone.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const std::uintptr_t nbytes = static_cast<std::uintptr_t>(t.numel()) * t.element_size();
  if (!t.is_cpu() || nbytes < 4 * kHuge || !huge_pages_enabled()) return;
  const auto p = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const std::uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + nbytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint only
#else
  (void)t;
#endif
}

// at::empty_like for an output the caller is about to overwrite entirely.
inline at::Tensor empty_output_like(const at::Tensor& like) {
  auto t = at::empty_like(like, at::MemoryFormat::Contiguous);
  advise_huge_pages(t);
  return t;
}

}  // namespace ldeq
