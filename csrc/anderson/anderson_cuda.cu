// CUDA kernels of Anderson acceleration; see anderson.h for the contract. Reductions: (sample,
// block) tasks flattened into gridDim.x, float64 block sums written to per-block partials and added
// in block order by reduce_partials (deterministic; solver_cuda_common.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "anderson/anderson.h"
#include "anderson/anderson_solve.h"
#include "solver_common.h"
#include "solver_cuda_common.cuh"

namespace ldeq {
namespace {

// partial (B, nblk, nout): per-block sums of the n Gram entries <g, G_i>, then ||fz||^2, then with
// `cross` (nout = 3n + 1) <x, G_i> and <X_i, g> (type-I Anderson's cross Gram row and column).
template <typename scalar_t>
__global__ void update_kernel(const scalar_t* __restrict__ X, scalar_t* __restrict__ G, scalar_t* __restrict__ F,
                              const scalar_t* __restrict__ fz, const bool* __restrict__ active, int64_t B, int64_t d,
                              int64_t slot, int64_t n, bool cross, int64_t nblk, double* __restrict__ partial) {
  __shared__ double sh[32];
  const int64_t nout = cross ? 3 * n + 1 : n + 1;
  for (int64_t t = blockIdx.x; t < B * nblk; t += gridDim.x) {
    const int64_t b = t / nblk, blk = t % nblk;
    if (!active[b]) continue;  // uniform over the block
    const int64_t stride = nblk * blockDim.x;
    const int64_t j0 = blk * blockDim.x + threadIdx.x;
    const scalar_t* x = X + (slot * B + b) * d;
    scalar_t* g = G + (slot * B + b) * d;
    scalar_t* fo = F + (slot * B + b) * d;
    const scalar_t* f = fz + b * d;
    double* out = partial + t * nout;
    double fsq = 0.0;
    for (int64_t j = j0; j < d; j += stride) {
      const scalar_t fj = f[j];
      const scalar_t gv = fj - x[j];
      g[j] = gv;  // read back below by this same thread only
      fo[j] = fj;
      const double fv = static_cast<double>(fj);
      fsq += fv * fv;
    }
    fsq = block_sum(fsq, sh);
    if (threadIdx.x == 0) out[n] = fsq;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* gi = G + (i * B + b) * d;
      double acc = 0.0, xacc = 0.0;
      for (int64_t j = j0; j < d; j += stride) {
        const double gij = static_cast<double>(gi[j]);
        acc += static_cast<double>(g[j]) * gij;
        if (cross) xacc += static_cast<double>(x[j]) * gij;
      }
      acc = block_sum(acc, sh);
      if (threadIdx.x == 0) out[i] = acc;
      if (cross) {
        const scalar_t* xi = X + (i * B + b) * d;
        double yacc = 0.0;
        for (int64_t j = j0; j < d; j += stride) yacc += static_cast<double>(xi[j]) * static_cast<double>(g[j]);
        xacc = block_sum(xacc, sh);
        yacc = block_sum(yacc, sh);
        if (threadIdx.x == 0) { out[n + 1 + i] = xacc; out[2 * n + 1 + i] = yacc; }
      }
    }
  }
}

__global__ void update_finish_kernel(const double* __restrict__ row, const bool* __restrict__ active, int64_t B,
                                     int64_t m, int64_t slot, int64_t n, int64_t nout, double* __restrict__ H,
                                     double* __restrict__ C, double* __restrict__ res_sq,
                                     double* __restrict__ fz_sq) {
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    if (!active[b]) continue;
    const double* r = row + b * nout;
    double* Hb = H + b * m * m;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      Hb[slot * m + i] = r[i];
      Hb[i * m + slot] = r[i];
      if (C != nullptr) {
        C[b * m * m + slot * m + i] = r[n + 1 + i];
        C[b * m * m + i * m + slot] = r[2 * n + 1 + i];
      }
    }
    if (threadIdx.x == 0) {
      res_sq[b] = r[slot];
      fz_sq[b] = r[n];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> anderson_update_cuda(const at::Tensor& X, at::Tensor G, at::Tensor F,
                                                        const at::Tensor& fz, at::Tensor H,
                                                        const std::optional<at::Tensor>& C, int64_t slot, int64_t n,
                                                        const at::Tensor& active) {
  check_anderson_update(X, G, F, fz, H, C, slot, n, active);
  const int64_t m = X.size(0), B = X.size(1), d = X.size(2);
  const bool cross = C.has_value() && C->defined();
  const int64_t nout = cross ? 3 * n + 1 : n + 1;
  const c10::cuda::CUDAGuard guard(X.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  auto opts = X.options().dtype(at::kDouble);
  at::Tensor row = at::zeros({B, nout}, opts);
  at::Tensor res_sq = at::zeros({B}, opts), fz_sq = at::zeros({B}, opts);
  if (B == 0 || d == 0) return {res_sq, fz_sq};
  const int64_t nblk = reduction_blocks(d, B);
  at::Tensor partial = at::zeros({B, nblk, nout}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "anderson_update_cuda", [&] {
    update_kernel<scalar_t><<<grid_for(B * nblk), kThreads, 0, stream>>>(
        X.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), F.data_ptr<scalar_t>(), fz.data_ptr<scalar_t>(),
        active.data_ptr<bool>(), B, d, slot, n, cross, nblk, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  reduce_partials(partial.data_ptr<double>(), active.data_ptr<bool>(), B, nblk, nout, row.data_ptr<double>(), stream);
  update_finish_kernel<<<grid_for(B), 32, 0, stream>>>(row.data_ptr<double>(), active.data_ptr<bool>(), B, m, slot, n,
                                             nout, H.data_ptr<double>(), cross ? C->data_ptr<double>() : nullptr,
                                             res_sq.data_ptr<double>(), fz_sq.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {res_sq, fz_sq};
}

__global__ void solve_kernel(const double* __restrict__ H, int64_t B, int64_t m, int64_t n, double lam,
                             int64_t newest, double* __restrict__ alpha, bool* __restrict__ fallback,
                             double* __restrict__ work) {
  for (int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; b < B; b += (int64_t)gridDim.x * blockDim.x)
    fallback[b] = anderson_solve_one(H + b * m * m, (int)m, (int)n, lam, (int)newest, alpha + b * n,
                                     work + b * (n + 1) * (n + 2));
}

std::tuple<at::Tensor, at::Tensor> anderson_solve_cuda(const at::Tensor& H, int64_t n, double lam, int64_t newest) {
  check_anderson_solve(H, n, lam, newest);
  const int64_t B = H.size(0), m = H.size(1);
  const c10::cuda::CUDAGuard guard(H.device());
  auto alpha = at::empty({B, n}, H.options());
  auto fallback = at::empty({B}, H.options().dtype(at::kBool));
  if (B == 0) return {alpha, fallback};
  auto work = at::empty({B, (n + 1) * (n + 2)}, H.options());
  const int threads = 64;
  solve_kernel<<<grid_for((B + threads - 1) / threads), threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      H.data_ptr<double>(), B, m, n, lam, newest, alpha.data_ptr<double>(), fallback.data_ptr<bool>(),
      work.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {alpha, fallback};
}

template <typename scalar_t>
__global__ void mix_kernel(scalar_t* __restrict__ X, const scalar_t* __restrict__ F, const scalar_t* __restrict__ G,
                           const double* __restrict__ alpha, const bool* __restrict__ active, double beta, int64_t B,
                           int64_t d, int64_t slot, int64_t n, int64_t nblk, scalar_t* __restrict__ z_best,
                           const int64_t* __restrict__ best_key) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool damped = beta != 1.0;  // undamped: the residual history is not read at all
  for (int64_t t = blockIdx.x; t < B * nblk; t += gridDim.x) {
    const int64_t b = t / nblk, blk = t % nblk;
    if (!active[b]) continue;
    const bool evict = best_key[b] == slot;  // this sample's lowest iterate lives in X[slot]
    const int64_t stride = nblk * blockDim.x;
    for (int64_t j = blk * blockDim.x + threadIdx.x; j < d; j += stride) {
      acc_t acc = acc_t(0);
      for (int64_t i = 0; i < n; ++i) {
        const double a = alpha[b * n + i];
        const int64_t o = (i * B + b) * d + j;
        acc += static_cast<acc_t>(a) * static_cast<acc_t>(F[o]);
        if (damped) acc += static_cast<acc_t>(a * (beta - 1.0)) * static_cast<acc_t>(G[o]);
      }
      const int64_t out = (slot * B + b) * d + j;
      if (evict) z_best[b * d + j] = X[out];
      X[out] = static_cast<scalar_t>(acc);  // every read of element j is done
    }
  }
}

void anderson_mix_cuda(at::Tensor X, const at::Tensor& F, const at::Tensor& G, const at::Tensor& alpha, double beta,
                       int64_t slot, int64_t n, const at::Tensor& active, at::Tensor z_best,
                       const at::Tensor& best_key) {
  check_anderson_mix(X, F, G, alpha, slot, n, active, z_best, best_key);
  const int64_t B = X.size(1), d = X.size(2);
  if (B == 0 || d == 0) return;
  const c10::cuda::CUDAGuard guard(X.device());
  const int64_t nblk = elementwise_blocks(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "anderson_mix_cuda", [&] {
    mix_kernel<scalar_t><<<grid_for(B * nblk), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        X.data_ptr<scalar_t>(), F.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), alpha.data_ptr<double>(),
        active.data_ptr<bool>(), beta, B, d, slot, n, nblk, z_best.data_ptr<scalar_t>(),
        best_key.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CUDA, m) {
  m.impl("anderson_update", &anderson_update_cuda);
  m.impl("anderson_solve", &anderson_solve_cuda);
  m.impl("anderson_mix", &anderson_mix_cuda);
}

}  // namespace ldeq
