// Helpers shared by the solver kernels (csrc/anderson, csrc/broyden): argument checks and the
// (sample, chunk) work split of the CPU kernels.
#pragma once
#include <ATen/ATen.h>

namespace ldeq {

// Elements per CPU task and per cache block: a task is one chunk of one sample (so B=1 still
// uses every core); inside it, blocks of kBlock elements keep the history rows' slices in L1.
constexpr int64_t kChunk = 32768;
// The extension is built without -march flags (portable wheels); the hot per-task loops are
// compiled for AVX-512, AVX2 and baseline and picked at load time (GCC/Clang function
// multiversioning), so the memory-bound passes are not limited by 128-bit SSE2 arithmetic.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__) && !defined(__APPLE__)
#define LDEQ_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LDEQ_MULTIVERSION
#endif
constexpr int64_t kBlock = 512;

inline void check_state(const at::Tensor& t, const char* name, int64_t B, int64_t d,
                        const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == d, name, " must have shape (B=", B,
              ", d=", d, "), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_history(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 3, name, " must have shape (m, B, d), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(),
              ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_active(const at::Tensor& active, int64_t B, const at::Tensor& like) {
  TORCH_CHECK(active.dim() == 1 && active.size(0) == B && active.scalar_type() == at::kBool,
              "active must be a (B=", B, ",) bool tensor, got ", active.sizes(), " ", active.scalar_type());
  TORCH_CHECK(active.device() == like.device(), "active must be on ", like.device());
  TORCH_CHECK(active.is_contiguous(), "active must be contiguous");
}

inline void check_f64(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kDouble, name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace ldeq
