// Helpers shared by the solver kernels (csrc/anderson, csrc/broyden): argument checks and the
// (sample, chunk) work split of the CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "common/cpu_dispatch.h"

#include <algorithm>
#include <vector>

namespace ldeq {

// Elements per CPU task and per cache block: a task is one chunk of one sample (so B=1 still
// uses every core); inside it, blocks of kBlock elements keep the history rows' slices in L1.
// The per-task bodies are compiled for default / AVX2 / AVX-512 and picked at run time by the one
// CPU dispatch of ldeq (common/cpu_dispatch.h, LDEQ_CPU_KERNEL), so the memory-bound passes are not
// limited by 128-bit SSE2 arithmetic in a portable build.
constexpr int64_t kChunk = 32768;
constexpr int64_t kBlock = 512;

// The CPU work split: fn(b, j0, j1, task) for every active sample b and chunk [j0, j1) of at most
// kChunk elements of its d, in parallel; task (b * chunks + chunk) indexes per-task scratch.
template <typename Fn>
void for_each_active_chunk(int64_t B, int64_t d, const bool* active, const Fn& fn) {
  const int64_t nchunks = (d + kChunk - 1) / kChunk;
  at::parallel_for(0, B * nchunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nchunks, c = t % nchunks;
      if (!active[b]) continue;
      const int64_t j0 = c * kChunk;
      fn(b, j0, std::min(d, j0 + kChunk), t);
    }
  });
}

// Per-sample sums of nout values over the chunks of d: fn(b, j0, j1, out) adds its chunk's share
// into out[0..nout). Each task has its own partials, reduced in chunk order afterwards, so the sums
// do not depend on the thread count. sums: (B, nout), zero for inactive samples.
template <typename Fn>
void for_each_active_chunk_sum(int64_t B, int64_t d, int64_t nout, const bool* active, double* sums, const Fn& fn) {
  const int64_t nchunks = (d + kChunk - 1) / kChunk;
  std::vector<double> partial(B * nchunks * nout, 0.0);
  for_each_active_chunk(B, d, active, [&](int64_t b, int64_t j0, int64_t j1, int64_t task) {
    fn(b, j0, j1, partial.data() + task * nout);
  });
  std::fill(sums, sums + B * nout, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    if (!active[b]) continue;
    for (int64_t c = 0; c < nchunks; ++c)
      for (int64_t k = 0; k < nout; ++k) sums[b * nout + k] += partial[(b * nchunks + c) * nout + k];
  }
}

// out[i] += <rows[i], w> over one cache block (len elements), for the n rows rows + i * stride, in
// float64; w is a float64 copy of the block (in L1). Four rows per sweep: four independent
// accumulator chains (one chain per row is bound by the FMA latency, not by memory: 2-3x slower on
// the dev machine's EPYC) and one load of w per four rows. Per row the summation order is that of
// a single-row loop, so the results do not depend on the grouping.
template <typename scalar_t>
LDEQ_INLINE void block_dots(const scalar_t* rows, int64_t stride, int64_t n, const double* w, int64_t len,
                            double* out) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const scalar_t* r0 = rows + i * stride;
    const scalar_t *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (int64_t j = 0; j < len; ++j) {
      const double wj = w[j];
      a0 += wj * static_cast<double>(r0[j]);
      a1 += wj * static_cast<double>(r1[j]);
      a2 += wj * static_cast<double>(r2[j]);
      a3 += wj * static_cast<double>(r3[j]);
    }
    out[i] += a0; out[i + 1] += a1; out[i + 2] += a2; out[i + 3] += a3;
  }
  for (; i + 2 <= n; i += 2) {
    const scalar_t* r0 = rows + i * stride;
    const scalar_t* r1 = r0 + stride;
    double a0 = 0, a1 = 0;
#pragma omp simd reduction(+ : a0, a1)
    for (int64_t j = 0; j < len; ++j) {
      a0 += w[j] * static_cast<double>(r0[j]);
      a1 += w[j] * static_cast<double>(r1[j]);
    }
    out[i] += a0; out[i + 1] += a1;
  }
  for (; i < n; ++i) {
    const scalar_t* r0 = rows + i * stride;
    double a0 = 0;
#pragma omp simd reduction(+ : a0)
    for (int64_t j = 0; j < len; ++j) a0 += w[j] * static_cast<double>(r0[j]);
    out[i] += a0;
  }
}

// block_dots with two weight vectors: out1[i] += <rows[i], w1>, out2[i] += <rows[i], w2> (each row
// is read once for both); four rows per sweep (eight chains), then two, then one.
template <typename scalar_t>
LDEQ_INLINE void block_dots2(const scalar_t* rows, int64_t stride, int64_t n, const double* w1, const double* w2,
                             int64_t len, double* out1, double* out2) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const scalar_t* r0 = rows + i * stride;
    const scalar_t *r1 = r0 + stride, *r2 = r1 + stride, *r3 = r2 + stride;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, b0, b1, b2, b3)
    for (int64_t j = 0; j < len; ++j) {
      const double u = w1[j], v = w2[j];
      const double x0 = static_cast<double>(r0[j]), x1 = static_cast<double>(r1[j]);
      const double x2 = static_cast<double>(r2[j]), x3 = static_cast<double>(r3[j]);
      a0 += x0 * u; b0 += x0 * v;
      a1 += x1 * u; b1 += x1 * v;
      a2 += x2 * u; b2 += x2 * v;
      a3 += x3 * u; b3 += x3 * v;
    }
    out1[i] += a0; out1[i + 1] += a1; out1[i + 2] += a2; out1[i + 3] += a3;
    out2[i] += b0; out2[i + 1] += b1; out2[i + 2] += b2; out2[i + 3] += b3;
  }
  for (; i + 2 <= n; i += 2) {
    const scalar_t* r0 = rows + i * stride;
    const scalar_t* r1 = r0 + stride;
    double a0 = 0, a1 = 0, b0 = 0, b1 = 0;
#pragma omp simd reduction(+ : a0, a1, b0, b1)
    for (int64_t j = 0; j < len; ++j) {
      const double x0 = static_cast<double>(r0[j]), x1 = static_cast<double>(r1[j]);
      a0 += x0 * w1[j]; b0 += x0 * w2[j];
      a1 += x1 * w1[j]; b1 += x1 * w2[j];
    }
    out1[i] += a0; out1[i + 1] += a1; out2[i] += b0; out2[i + 1] += b1;
  }
  for (; i < n; ++i) {
    const scalar_t* r0 = rows + i * stride;
    double a0 = 0, b0 = 0;
#pragma omp simd reduction(+ : a0, b0)
    for (int64_t j = 0; j < len; ++j) {
      const double x0 = static_cast<double>(r0[j]);
      a0 += x0 * w1[j]; b0 += x0 * w2[j];
    }
    out1[i] += a0; out2[i] += b0;
  }
}

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

// best_key (B,) int64: where each sample's lowest-residual iterate lives (the solver's buffer key).
inline void check_key(const at::Tensor& best_key, int64_t B, const at::Tensor& like) {
  TORCH_CHECK(best_key.dim() == 1 && best_key.size(0) == B && best_key.scalar_type() == at::kLong,
              "best_key must be a (B=", B, ",) int64 tensor, got ", best_key.sizes(), " ", best_key.scalar_type());
  TORCH_CHECK(best_key.device() == like.device(), "best_key must be on ", like.device(), ", got ", best_key.device());
  TORCH_CHECK(best_key.is_contiguous(), "best_key must be contiguous");
}

inline void check_f64(const at::Tensor& t, const char* name, at::IntArrayRef shape, const at::Tensor& like) {
  TORCH_CHECK(t.scalar_type() == at::kDouble, name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

}  // namespace ldeq
