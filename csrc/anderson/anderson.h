// Anderson acceleration kernels (ldeq.solvers.anderson). Shapes: B batch, d flattened state,
// m history length, n <= m slots in use. The history lives in three ring buffers laid out
// (m, B, d) so that one slot X[s] is a contiguous (B, d) batch that f can read directly:
// X the iterates, F = f(X) and G = F - X the residuals.
//
//   anderson_update(X, G, F, fz, H, C?, slot, n, active) -> (res_sq (B,) f64, fz_sq (B,) f64)
//       G[slot] = fz - X[slot], F[slot] = fz; H[b, slot, i] = H[b, i, slot] = <G[slot], G[i]> (i < n),
//       i.e. one new row of the Gram matrix per iteration instead of a full G G^T; plus the squared norms.
//       With C (B, m, m) f64 (type-I Anderson) also the cross Gram row and column
//       C[b, slot, i] = <X[slot], G[i]>, C[b, i, slot] = <X[i], G[slot]> (i < n), in the same pass
//       (it then streams the n X rows as well).
//   anderson_solve(H (B, m, m) f64, n, lam, newest) -> (alpha (B, n) f64, fallback (B,) bool)
//       the bordered (n+1)x(n+1) system [[0, 1^T], [1, H + lam I]] [nu; alpha] = [1; 0] in fp64,
//       with the regularised retries of anderson_solve.h; never NaN.
//   anderson_mix(X, F, G, alpha, beta, slot, n, active, z_best (B, d), best_key (B,) int64)
//       X[slot] = sum_i alpha_i (F[i] - (1 - beta) G[i]) (= sum_i alpha_i (X[i] + beta G[i])) in one
//       pass over the history; with beta = 1 only F is read (n rows instead of 2n). In place: slot may
//       be one of the n mixed slots; every read of an element precedes its write. Before X[slot] of an
//       active sample b with best_key[b] == slot is overwritten, it is copied to z_best[b] (the solver's
//       lowest-residual iterate leaves the ring in the same pass, not in a separate select over B).
// Inactive samples (active[b] == false) are not read or written. Reductions accumulate in f64.
#pragma once

#include "solver_common.h"

namespace ldeq {

// Argument checks shared by the CPU and CUDA kernels (one place, so the backends cannot drift).
inline void check_anderson_update(const at::Tensor& X, const at::Tensor& G, const at::Tensor& F, const at::Tensor& fz,
                                  const at::Tensor& H, const std::optional<at::Tensor>& C, int64_t slot, int64_t n,
                                  const at::Tensor& active) {
  check_history(X, "X", fz);
  check_history(G, "G", fz);
  check_history(F, "F", fz);
  const int64_t m = X.size(0), B = X.size(1), d = X.size(2);
  TORCH_CHECK(G.sizes() == X.sizes(), "G must have the shape of X ", X.sizes(), ", got ", G.sizes());
  TORCH_CHECK(F.sizes() == X.sizes(), "F must have the shape of X ", X.sizes(), ", got ", F.sizes());
  check_state(fz, "fz", B, d, X);
  check_f64(H, "H", {B, m, m}, X);
  if (C.has_value() && C->defined()) check_f64(*C, "C", {B, m, m}, X);
  check_active(active, B, X);
  TORCH_CHECK(0 <= slot && slot < m && 1 <= n && n <= m && slot < n, "anderson_update: need 0 <= slot < n <= m, got slot=",
              slot, " n=", n, " m=", m);
}

inline void check_anderson_solve(const at::Tensor& H, int64_t n, double lam, int64_t newest) {
  TORCH_CHECK(H.dim() == 3 && H.size(1) == H.size(2) && H.scalar_type() == at::kDouble && H.is_contiguous(),
              "H must be a contiguous (B, m, m) float64 tensor, got ", H.sizes(), " ", H.scalar_type());
  const int64_t m = H.size(1);
  TORCH_CHECK(1 <= n && n <= m && 0 <= newest && newest < n, "anderson_solve: need 1 <= n <= m and 0 <= newest < n, got n=",
              n, " m=", m, " newest=", newest);
  TORCH_CHECK(lam >= 0, "anderson_solve: lam must be >= 0, got ", lam);
}

inline void check_anderson_mix(const at::Tensor& X, const at::Tensor& F, const at::Tensor& G, const at::Tensor& alpha,
                               int64_t slot, int64_t n, const at::Tensor& active, const at::Tensor& z_best,
                               const at::Tensor& best_key) {
  check_history(X, "X", X);
  check_history(F, "F", X);
  check_history(G, "G", X);
  const int64_t m = X.size(0), B = X.size(1), d = X.size(2);
  TORCH_CHECK(F.sizes() == X.sizes(), "F must have the shape of X ", X.sizes(), ", got ", F.sizes());
  TORCH_CHECK(G.sizes() == X.sizes(), "G must have the shape of X ", X.sizes(), ", got ", G.sizes());
  check_state(z_best, "z_best", B, d, X);
  check_key(best_key, B, X);
  check_f64(alpha, "alpha", {B, n}, X);
  check_active(active, B, X);
  TORCH_CHECK(0 <= slot && slot < m && 1 <= n && n <= m, "anderson_mix: need 0 <= slot < m and 1 <= n <= m, got slot=",
              slot, " n=", n, " m=", m);
}

}  // namespace ldeq
