// CPU kernels of Anderson acceleration; see anderson.h for the contract.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"
#include "solver_common.h"

namespace ldeq {
namespace {

// Task bodies: one chunk [j0, j1) of one sample, one entry point per ISA (see solver_common.h).
template <cpu::Isa isa, typename scalar_t>
LDEQ_INLINE void update_task_body(const scalar_t* x, scalar_t* g, scalar_t* fo, const scalar_t* fzb, const scalar_t* Gb,
                                   const scalar_t* Xb, int64_t stride, int64_t n, bool cross, int64_t j0, int64_t j1,
                                   double* out) {
  double gbuf[kBlock], xbuf[kBlock];
  double* hrow = out;          // n: <g, G_i>
  double* fsq_out = out + n;   // 1: ||fz||^2
  double* xg = out + n + 1;    // n (cross): <x, G_i>
  double* Xg = out + 2 * n + 1;  // n (cross): <X_i, g>
  for (int64_t s0 = j0; s0 < j1; s0 += kBlock) {
    const int64_t len = std::min(j1, s0 + kBlock) - s0;
    double fsq = 0.0;
#pragma omp simd reduction(+ : fsq)
    for (int64_t j = 0; j < len; ++j) {
      const scalar_t fv = fzb[s0 + j];
      const scalar_t xv = x[s0 + j];
      const scalar_t gv = fv - xv;  // rounded to the state dtype, as stored
      g[s0 + j] = gv;
      fo[s0 + j] = fv;
      gbuf[j] = static_cast<double>(gv);
      xbuf[j] = static_cast<double>(xv);
      const double f64 = static_cast<double>(fv);
      fsq += f64 * f64;
    }
    *fsq_out += fsq;
    if (cross) {  // type-I Anderson: the cross Gram row and column too, G read once for both
      block_dots2(Gb + s0, stride, n, gbuf, xbuf, len, hrow, xg);
      block_dots(Xb + s0, stride, n, gbuf, len, Xg);
    } else {
      block_dots(Gb + s0, stride, n, gbuf, len, hrow);  // row `slot` is g itself: its squared norm
    }
  }
}
LDEQ_CPU_KERNEL(update_task, update_task_body)

// One new Gram row (and with C the cross Gram row and column) + squared norms, per (sample, chunk)
// task (see for_each_active_chunk_sum).
std::tuple<at::Tensor, at::Tensor> anderson_update_cpu(const at::Tensor& X, at::Tensor G, at::Tensor F,
                                                       const at::Tensor& fz, at::Tensor H,
                                                       const std::optional<at::Tensor>& C, int64_t slot, int64_t n,
                                                       const at::Tensor& active) {
  check_anderson_update(X, G, F, fz, H, C, slot, n, active);
  const int64_t m = X.size(0), B = X.size(1), d = X.size(2);
  const bool cross = C.has_value() && C->defined();
  // n Gram entries, ||fz||^2 (||g||^2 is the slot entry), then with C: <x, G_i> and <X_i, g>
  const int64_t nout = cross ? 3 * n + 1 : n + 1;
  std::vector<double> sums(B * nout);
  const bool* act = active.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "anderson_update_cpu", [&] {
    const scalar_t* Xp = X.data_ptr<scalar_t>();
    scalar_t* Gp = G.data_ptr<scalar_t>();
    scalar_t* Fp = F.data_ptr<scalar_t>();
    const scalar_t* fzp = fz.data_ptr<scalar_t>();
    for_each_active_chunk_sum(B, d, nout, act, sums.data(), [&](int64_t b, int64_t j0, int64_t j1, double* out) {
      const int64_t o = (slot * B + b) * d;
      update_task(Xp + o, Gp + o, Fp + o, fzp + b * d, Gp + b * d, Xp + b * d, B * d, n, cross, j0, j1, out);
    });
  });
  auto opts = X.options().dtype(at::kDouble);
  at::Tensor res_sq = at::zeros({B}, opts), fz_sq = at::zeros({B}, opts);
  double* Hp = H.data_ptr<double>();
  double* Cp = cross ? C->data_ptr<double>() : nullptr;
  double* rp = res_sq.data_ptr<double>();
  double* fp = fz_sq.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    if (!act[b]) continue;
    const double* row = sums.data() + b * nout;
    double* Hb = Hp + b * m * m;
    for (int64_t i = 0; i < n; ++i) { Hb[slot * m + i] = row[i]; Hb[i * m + slot] = row[i]; }
    if (cross) {
      double* Cb = Cp + b * m * m;
      for (int64_t i = 0; i < n; ++i) { Cb[slot * m + i] = row[n + 1 + i]; Cb[i * m + slot] = row[2 * n + 1 + i]; }
    }
    rp[b] = row[slot];
    fp[b] = row[n];
  }
  return {res_sq, fz_sq};
}

std::tuple<at::Tensor, at::Tensor> anderson_solve_cpu(const at::Tensor& H, int64_t n, double lam, int64_t newest) {
  check_anderson_solve(H, n, lam, newest);
  const int64_t B = H.size(0), m = H.size(1);
  auto alpha = at::empty({B, n}, H.options());
  auto fallback = at::empty({B}, H.options().dtype(at::kBool));
  const double* Hp = H.data_ptr<double>();
  double* ap = alpha.data_ptr<double>();
  bool* fb = fallback.data_ptr<bool>();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    std::vector<double> work((n + 1) * (n + 2));
    for (int64_t b = b0; b < b1; ++b)
      fb[b] = anderson_solve_one(Hp + b * m * m, (int)m, (int)n, lam, (int)newest, ap + b * n, work.data());
  });
  return {alpha, fallback};
}

template <cpu::Isa isa, typename scalar_t>
LDEQ_INLINE void mix_task_body(scalar_t* Xb, const scalar_t* Fb, const scalar_t* Gb, int64_t stride, const double* alpha,
                                double beta, int64_t slot, int64_t n, int64_t j0, int64_t j1, scalar_t* zbest) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t acc[kBlock];
  const bool damped = beta != 1.0;  // undamped: the residual history is not read at all
  for (int64_t s0 = j0; s0 < j1; s0 += kBlock) {
    const int64_t len = std::min(j1, s0 + kBlock) - s0;
    scalar_t* out = Xb + slot * stride + s0;
    if (zbest != nullptr) {  // this sample's lowest iterate lives in X[slot]: save it before the overwrite
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) zbest[s0 + j] = out[j];
    }
    for (int64_t j = 0; j < len; ++j) acc[j] = acc_t(0);
    for (int64_t i = 0; i < n; ++i) {
      const acc_t ca = static_cast<acc_t>(alpha[i]);
      const scalar_t* fi = Fb + i * stride + s0;
      if (damped) {
        const acc_t cg = static_cast<acc_t>(alpha[i] * (beta - 1.0));
        const scalar_t* gi = Gb + i * stride + s0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] += ca * static_cast<acc_t>(fi[j]) + cg * static_cast<acc_t>(gi[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] += ca * static_cast<acc_t>(fi[j]);
      }
    }
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) out[j] = static_cast<scalar_t>(acc[j]);
  }
}
LDEQ_CPU_KERNEL(mix_task, mix_task_body)

void anderson_mix_cpu(at::Tensor X, const at::Tensor& F, const at::Tensor& G, const at::Tensor& alpha, double beta,
                      int64_t slot, int64_t n, const at::Tensor& active, at::Tensor z_best,
                      const at::Tensor& best_key) {
  check_anderson_mix(X, F, G, alpha, slot, n, active, z_best, best_key);
  const int64_t B = X.size(1), d = X.size(2);
  const bool* act = active.data_ptr<bool>();
  const double* ap = alpha.data_ptr<double>();
  const int64_t* keys = best_key.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "anderson_mix_cpu", [&] {
    scalar_t* Xp = X.data_ptr<scalar_t>();
    const scalar_t* Fp = F.data_ptr<scalar_t>();
    const scalar_t* Gp = G.data_ptr<scalar_t>();
    scalar_t* zb = z_best.data_ptr<scalar_t>();
    for_each_active_chunk(B, d, act, [&](int64_t b, int64_t j0, int64_t j1, int64_t) {
      mix_task(Xp + b * d, Fp + b * d, Gp + b * d, B * d, ap + b * n, beta, slot, n, j0, j1,
               keys[b] == slot ? zb + b * d : static_cast<scalar_t*>(nullptr));
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CPU, m) {
  m.impl("anderson_update", &anderson_update_cpu);
  m.impl("anderson_solve", &anderson_solve_cpu);
  m.impl("anderson_mix", &anderson_mix_cpu);
}

}  // namespace ldeq
