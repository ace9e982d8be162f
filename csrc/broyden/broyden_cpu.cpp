// CPU kernels of limited-memory Broyden; see broyden.h for the contract.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "broyden/broyden.h"
#include "solver_common.h"

namespace ldeq {
namespace {

// Task bodies: one chunk [j0, j1) of one sample, one entry point per ISA (see solver_common.h).
template <cpu::Isa isa, typename scalar_t>
LDEQ_INLINE void pass1_task_body(const scalar_t* Vb, int64_t stride, const scalar_t* dxb, const scalar_t* fzb,
                                  const scalar_t* zb, scalar_t* gnb, int64_t n, int64_t j0, int64_t j1,
                                  double* out) {
  double gbuf[kBlock];
  for (int64_t s0 = j0; s0 < j1; s0 += kBlock) {
    const int64_t len = std::min(j1, s0 + kBlock) - s0;
    double dxg = 0, gg = 0, ff = 0;
#pragma omp simd reduction(+ : dxg, gg, ff)
    for (int64_t j = 0; j < len; ++j) {
      const scalar_t gv = fzb[s0 + j] - zb[s0 + j];  // rounded to the state dtype, as stored
      gnb[s0 + j] = gv;
      const double g64 = static_cast<double>(gv), f64 = static_cast<double>(fzb[s0 + j]);
      gbuf[j] = g64;
      dxg += static_cast<double>(dxb[s0 + j]) * g64; gg += g64 * g64; ff += f64 * f64;
    }
    out[n] += dxg; out[n + 1] += gg; out[n + 2] += ff;
    block_dots(Vb + s0, stride, n, gbuf, len, out);
  }
}
LDEQ_CPU_KERNEL(pass1_task, pass1_task_body)

at::Tensor broyden_pass1_cpu(const at::Tensor& V, const at::Tensor& dx, const at::Tensor& fz, const at::Tensor& z,
                             at::Tensor g_new, int64_t n, const at::Tensor& active) {
  check_broyden_pass1(V, dx, fz, z, g_new, n, active);
  const int64_t B = fz.size(0), d = fz.size(1);
  const int64_t nout = n + 3;
  at::Tensor res = at::empty({B, nout}, fz.options().dtype(at::kDouble));
  const bool* act = active.data_ptr<bool>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, fz.scalar_type(), "broyden_pass1_cpu", [&] {
    const scalar_t *Vp = V.data_ptr<scalar_t>(), *dxp = dx.data_ptr<scalar_t>();
    const scalar_t *fzp = fz.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    scalar_t* gnp = g_new.data_ptr<scalar_t>();
    for_each_active_chunk_sum(B, d, nout, act, res.data_ptr<double>(),
                              [&](int64_t b, int64_t j0, int64_t j1, double* out) {
                                const int64_t o = b * d;
                                pass1_task(Vp + o, B * d, dxp + o, fzp + o, zp + o, gnp + o, n, j0, j1, out);
                              });
  });
  return res;
}

// One cache block of pass 2's column sweeps: uacc -= sum sb_i u_i, pacc -= sum sc_i u_i and, with
// kV, vacc += sum a_i v_i; two columns per sweep (half the accumulator loads and stores).
template <bool kV, typename scalar_t, typename acc_t>
LDEQ_INLINE void pass2_sweeps(const scalar_t* Ub, const scalar_t* Vb, int64_t stride, const double* cb, int64_t n,
                              int64_t len, acc_t* vacc, acc_t* uacc, acc_t* pacc) {
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    const acc_t a0 = static_cast<acc_t>(cb[i]), sb0 = static_cast<acc_t>(cb[n + i]),
                sc0 = static_cast<acc_t>(cb[2 * n + i]);
    const acc_t a1 = static_cast<acc_t>(cb[i + 1]), sb1 = static_cast<acc_t>(cb[n + i + 1]),
                sc1 = static_cast<acc_t>(cb[2 * n + i + 1]);
    const scalar_t* u0 = Ub + i * stride;
    const scalar_t* u1 = u0 + stride;
    const scalar_t* v0 = kV ? Vb + i * stride : nullptr;
    const scalar_t* v1 = kV ? v0 + stride : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const acc_t x0 = static_cast<acc_t>(u0[j]), x1 = static_cast<acc_t>(u1[j]);
      if constexpr (kV) vacc[j] += a0 * static_cast<acc_t>(v0[j]) + a1 * static_cast<acc_t>(v1[j]);
      uacc[j] -= sb0 * x0 + sb1 * x1;
      pacc[j] -= sc0 * x0 + sc1 * x1;
    }
  }
  for (; i < n; ++i) {
    const acc_t a = static_cast<acc_t>(cb[i]), sb = static_cast<acc_t>(cb[n + i]),
                sc = static_cast<acc_t>(cb[2 * n + i]);
    const scalar_t* ui = Ub + i * stride;
    const scalar_t* vi = kV ? Vb + i * stride : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const acc_t u = static_cast<acc_t>(ui[j]);
      if constexpr (kV) vacc[j] += a * static_cast<acc_t>(vi[j]);
      uacc[j] -= sb * u;
      pacc[j] -= sc * u;
    }
  }
}

template <cpu::Isa isa, typename scalar_t>
LDEQ_INLINE void pass2_task_body(scalar_t* Ub, scalar_t* Vb, int64_t stride, const scalar_t* dxb, scalar_t* dxnb,
                                  const scalar_t* zb, scalar_t* znb, const scalar_t* gnb, const scalar_t* gob,
                                  const double* cb, int64_t slot, int64_t n, int64_t n_next, int64_t j0, int64_t j1,
                                  scalar_t* zbest, double* out) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t vacc[kBlock], uacc[kBlock], pacc[kBlock];
  double dxbuf[kBlock];
  const acc_t kn = static_cast<acc_t>(cb[3 * n]);
  for (int64_t s0 = j0; s0 < j1; s0 += kBlock) {
    const int64_t len = std::min(j1, s0 + kBlock) - s0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const acc_t x = static_cast<acc_t>(dxb[s0 + j]), gn = static_cast<acc_t>(gnb[s0 + j]);
      vacc[j] = -x;
      uacc[j] = x + (gn - static_cast<acc_t>(gob[s0 + j]));
      pacc[j] = gn;
    }
    if (Vb != nullptr) {
      pass2_sweeps<true>(Ub + s0, Vb + s0, stride, cb, n, len, vacc, uacc, pacc);
    } else {
      pass2_sweeps<false>(Ub + s0, static_cast<const scalar_t*>(nullptr), stride, cb, n, len, vacc, uacc, pacc);
    }
    if (zbest != nullptr) {  // this sample's lowest iterate lives in z_next: save it before the overwrite
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) zbest[s0 + j] = znb[s0 + j];
    }
    // All reads of this block (including an evicted column at `slot`) are done.
    scalar_t* uo = Ub + slot * stride + s0;
    double dxg = 0;
#pragma omp simd reduction(+ : dxg)
    for (int64_t j = 0; j < len; ++j) {
      const scalar_t us = static_cast<scalar_t>(uacc[j]);
      const acc_t upd = pacc[j] - kn * static_cast<acc_t>(us);
      const scalar_t dxs = static_cast<scalar_t>(upd);
      uo[j] = us;
      dxnb[s0 + j] = dxs;
      dxbuf[j] = static_cast<double>(dxs);
      znb[s0 + j] = static_cast<scalar_t>(static_cast<acc_t>(zb[s0 + j]) + upd);
      dxg += dxbuf[j] * static_cast<double>(gnb[s0 + j]);  // g_new is the next g_old
    }
    out[n_next + 1] += dxg;
    if (Vb != nullptr) {  // the new column, and its dot with the next g_old, as stored (block in cache)
      scalar_t* vo = Vb + slot * stride + s0;
      double vg = 0;
#pragma omp simd reduction(+ : vg)
      for (int64_t j = 0; j < len; ++j) {
        const scalar_t vs = static_cast<scalar_t>(vacc[j]);
        vo[j] = vs;
        vg += static_cast<double>(vs) * static_cast<double>(gnb[s0 + j]);
      }
      out[n_next] += vg;
    }
    // Next iteration's <u_i, dx> over the columns then in use (U[slot] now holds the new one): the
    // block is still in cache, so the next pass 1 does not stream U at all.
    block_dots(Ub + s0, stride, n_next, dxbuf, len, out);
  }
}
LDEQ_CPU_KERNEL(pass2_task, pass2_task_body)

at::Tensor broyden_pass2_cpu(at::Tensor U, const std::optional<at::Tensor>& V, const at::Tensor& dx, at::Tensor dx_next,
                             const at::Tensor& z, at::Tensor z_next, const at::Tensor& g_new, const at::Tensor& g_old,
                             const at::Tensor& coef, int64_t slot, int64_t n, const at::Tensor& active,
                             at::Tensor z_best, const at::Tensor& best_key, int64_t evict_key) {
  check_broyden_pass2(U, V, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key);
  const int64_t B = z.size(0), d = z.size(1);
  const int64_t n_next = std::min(n + 1, U.size(0));
  at::Tensor res = at::empty({B, n_next + 2}, z.options().dtype(at::kDouble));
  const bool* act = active.data_ptr<bool>();
  const double* cp = coef.data_ptr<double>();
  const int64_t* keys = best_key.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "broyden_pass2_cpu", [&] {
    scalar_t* Up = U.data_ptr<scalar_t>();
    scalar_t* Vp = V.has_value() ? V->data_ptr<scalar_t>() : nullptr;
    const scalar_t *dxp = dx.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    const scalar_t *gnp = g_new.data_ptr<scalar_t>(), *gop = g_old.data_ptr<scalar_t>();
    scalar_t *dxnp = dx_next.data_ptr<scalar_t>(), *znp = z_next.data_ptr<scalar_t>();
    scalar_t* zb = z_best.data_ptr<scalar_t>();
    for_each_active_chunk_sum(B, d, n_next + 2, act, res.data_ptr<double>(),
                              [&](int64_t b, int64_t j0, int64_t j1, double* out) {
                                const int64_t o = b * d;
                                pass2_task(Up + o, Vp == nullptr ? Vp : Vp + o, B * d, dxp + o, dxnp + o, zp + o,
                                           znp + o, gnp + o, gop + o, cp + b * (3 * n + 1), slot, n, n_next, j0,
                                           j1, keys[b] == evict_key ? zb + o : static_cast<scalar_t*>(nullptr),
                                           out);
                              });
  });
  return res;
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CPU, m) {
  m.impl("broyden_pass1", &broyden_pass1_cpu);
  m.impl("broyden_pass2", &broyden_pass2_cpu);
}

}  // namespace ldeq
