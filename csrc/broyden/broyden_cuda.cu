// CUDA kernels of limited-memory Broyden; see broyden.h for the contract. Reductions: per-block
// partials added in block order (deterministic), (sample, block) tasks flattened into gridDim.x
// (solver_cuda_common.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "broyden/broyden.h"
#include "solver_common.h"
#include "solver_cuda_common.cuh"

namespace ldeq {
namespace {

// partial (B, nblk, n + 3): per-block sums of [c | dx.g, g.g, fz.fz]
template <typename scalar_t>
__global__ void pass1_kernel(const scalar_t* __restrict__ V, const scalar_t* __restrict__ dx,
                             const scalar_t* __restrict__ fz, const scalar_t* __restrict__ z,
                             scalar_t* __restrict__ g_new, const bool* __restrict__ active, int64_t B, int64_t d,
                             int64_t n, int64_t nblk, double* __restrict__ partial) {
  __shared__ double sh[32];
  for (int64_t t = blockIdx.x; t < B * nblk; t += gridDim.x) {
    const int64_t b = t / nblk, blk = t % nblk;
    if (!active[b]) continue;  // uniform over the block
    const int64_t stride = nblk * blockDim.x;
    const int64_t j0 = blk * blockDim.x + threadIdx.x;
    const int64_t o = b * d;
    double* ob = partial + t * (n + 3);
    double dxg = 0, gg = 0, ff = 0;
    for (int64_t j = j0; j < d; j += stride) {
      const scalar_t gv = fz[o + j] - z[o + j];
      g_new[o + j] = gv;  // read back below by this same thread only
      const double g64 = static_cast<double>(gv), f64 = static_cast<double>(fz[o + j]);
      dxg += static_cast<double>(dx[o + j]) * g64; gg += g64 * g64; ff += f64 * f64;
    }
    double r;
    r = block_sum(dxg, sh); if (threadIdx.x == 0) ob[n] = r;
    r = block_sum(gg, sh);  if (threadIdx.x == 0) ob[n + 1] = r;
    r = block_sum(ff, sh);  if (threadIdx.x == 0) ob[n + 2] = r;
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* vi = V + i * B * d + o;
      double cc = 0;
      for (int64_t j = j0; j < d; j += stride) cc += static_cast<double>(vi[j]) * static_cast<double>(g_new[o + j]);
      r = block_sum(cc, sh); if (threadIdx.x == 0) ob[i] = r;
    }
  }
}

at::Tensor broyden_pass1_cuda(const at::Tensor& V, const at::Tensor& dx, const at::Tensor& fz, const at::Tensor& z,
                              at::Tensor g_new, int64_t n, const at::Tensor& active) {
  check_broyden_pass1(V, dx, fz, z, g_new, n, active);
  const int64_t B = fz.size(0), d = fz.size(1);
  const c10::cuda::CUDAGuard guard(fz.device());
  at::Tensor out = at::zeros({B, n + 3}, fz.options().dtype(at::kDouble));
  if (B == 0 || d == 0) return out;
  const int64_t nblk = reduction_blocks(d, B), nout = n + 3;
  at::Tensor partial = at::zeros({B, nblk, nout}, out.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fz.scalar_type(), "broyden_pass1_cuda", [&] {
    pass1_kernel<scalar_t><<<grid_for(B * nblk), kThreads, 0, stream>>>(
        V.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), fz.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
        g_new.data_ptr<scalar_t>(), active.data_ptr<bool>(), B, d, n, nblk, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  reduce_partials(partial.data_ptr<double>(), active.data_ptr<bool>(), B, nblk, nout, out.data_ptr<double>(), stream);
  return out;
}

// partial (B, nblk, n_next + 2): per-block sums of [<u_i, dx_next> over the columns in use afterwards |
// <V[slot], g_new> (0 without V) | <dx_next, g_new>] (the stored values).
template <typename scalar_t>
__global__ void pass2_kernel(scalar_t* __restrict__ U, scalar_t* __restrict__ V, const scalar_t* __restrict__ dx,
                             scalar_t* __restrict__ dx_next, const scalar_t* __restrict__ z,
                             scalar_t* __restrict__ z_next, const scalar_t* __restrict__ g_new,
                             const scalar_t* __restrict__ g_old, const double* __restrict__ coef,
                             const bool* __restrict__ active, int64_t B, int64_t d, int64_t slot, int64_t n,
                             int64_t n_next, int64_t nblk, scalar_t* __restrict__ z_best,
                             const int64_t* __restrict__ best_key, int64_t evict_key, double* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ double sh[32];
  const bool has_v = V != nullptr;
  for (int64_t t = blockIdx.x; t < B * nblk; t += gridDim.x) {
    const int64_t b = t / nblk, blk = t % nblk;
    if (!active[b]) continue;  // uniform over the block
    const double* cb = coef + b * (3 * n + 1);
    const acc_t kn = static_cast<acc_t>(cb[3 * n]);
    const bool evict = best_key[b] == evict_key;  // this sample's lowest iterate lives in z_next
    const int64_t o = b * d;
    const int64_t stride = nblk * blockDim.x;
    const int64_t j0 = blk * blockDim.x + threadIdx.x;
    double vg = 0, dxg = 0;
    for (int64_t j = j0; j < d; j += stride) {
      const acc_t x = static_cast<acc_t>(dx[o + j]), gn = static_cast<acc_t>(g_new[o + j]);
      acc_t v = -x, u = x + (gn - static_cast<acc_t>(g_old[o + j])), p = gn;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t ui = static_cast<acc_t>(U[i * B * d + o + j]);
        if (has_v) v += static_cast<acc_t>(cb[i]) * static_cast<acc_t>(V[i * B * d + o + j]);
        u -= static_cast<acc_t>(cb[n + i]) * ui;
        p -= static_cast<acc_t>(cb[2 * n + i]) * ui;
      }
      const scalar_t us = static_cast<scalar_t>(u);
      const acc_t upd = p - kn * static_cast<acc_t>(us);
      const scalar_t dxs = static_cast<scalar_t>(upd);
      U[slot * B * d + o + j] = us;  // every read of element j (an evicted column too) is done
      dx_next[o + j] = dxs;
      if (evict) z_best[o + j] = z_next[o + j];
      z_next[o + j] = static_cast<scalar_t>(static_cast<acc_t>(z[o + j]) + upd);
      // g_new is the next g_old: its dots with the new column and the new step, as stored
      const double g64 = static_cast<double>(g_new[o + j]);
      if (has_v) {
        const scalar_t vs = static_cast<scalar_t>(v);
        V[slot * B * d + o + j] = vs;
        vg += static_cast<double>(vs) * g64;
      }
      dxg += static_cast<double>(dxs) * g64;
    }
    double* ob = partial + t * (n_next + 2);
    double r = block_sum(vg, sh);
    if (threadIdx.x == 0) ob[n_next] = r;
    r = block_sum(dxg, sh);
    if (threadIdx.x == 0) ob[n_next + 1] = r;
    // <u_i, dx_next>: each thread re-reads only the elements it wrote above.
    for (int64_t i = 0; i < n_next; ++i) {
      double a = 0;
      for (int64_t j = j0; j < d; j += stride)
        a += static_cast<double>(U[i * B * d + o + j]) * static_cast<double>(dx_next[o + j]);
      a = block_sum(a, sh);
      if (threadIdx.x == 0) ob[i] = a;
    }
  }
}

at::Tensor broyden_pass2_cuda(at::Tensor U, const std::optional<at::Tensor>& V, const at::Tensor& dx,
                              at::Tensor dx_next, const at::Tensor& z, at::Tensor z_next, const at::Tensor& g_new,
                              const at::Tensor& g_old, const at::Tensor& coef, int64_t slot, int64_t n,
                              const at::Tensor& active, at::Tensor z_best, const at::Tensor& best_key,
                              int64_t evict_key) {
  check_broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key);
  const int64_t B = z.size(0), d = z.size(1);
  const int64_t n_next = std::min(n + 1, U.size(0));
  const c10::cuda::CUDAGuard guard(z.device());
  at::Tensor out = at::zeros({B, n_next + 2}, z.options().dtype(at::kDouble));
  if (B == 0 || d == 0) return out;
  const int64_t nblk = reduction_blocks(d, B);
  at::Tensor partial = at::zeros({B, nblk, n_next + 2}, out.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "broyden_pass2_cuda", [&] {
    pass2_kernel<scalar_t><<<grid_for(B * nblk), kThreads, 0, stream>>>(
        U.data_ptr<scalar_t>(), V.has_value() ? V->data_ptr<scalar_t>() : nullptr, dx.data_ptr<scalar_t>(),
        dx_next.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), z_next.data_ptr<scalar_t>(), g_new.data_ptr<scalar_t>(),
        g_old.data_ptr<scalar_t>(), coef.data_ptr<double>(), active.data_ptr<bool>(), B, d, slot, n, n_next, nblk,
        z_best.data_ptr<scalar_t>(), best_key.data_ptr<int64_t>(), evict_key, partial.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  reduce_partials(partial.data_ptr<double>(), active.data_ptr<bool>(), B, nblk, n_next + 2, out.data_ptr<double>(),
                  stream);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CUDA, m) {
  m.impl("broyden_pass1", &broyden_pass1_cuda);
  m.impl("broyden_pass2", &broyden_pass2_cuda);
}

}  // namespace ldeq
