// Limited-memory Broyden kernels (ldeq.solvers.broyden). Shapes: B batch, d flattened state,
// L memory (ring buffer of rank-one updates), n <= L columns in use. The inverse Jacobian of
// g(z) = f(z) - z is approximated by J^-1 ~ -I + sum_i s_i u_i v_i^T with U, V laid out (L, B, d)
// and the per-column scales s (L, B) kept by the caller (so u is stored unnormalised and the
// normalisation, known only after a reduction, costs no extra pass).
//
//   broyden_pass1(V, dx, fz, z, g_new, n, active) -> (B, n + 3) f64
//       g_new = fz - z, and in the same pass c_i = <v_i, g_new>, then <dx, g_new>, ||g_new||^2,
//       ||fz||^2. (The a_i = <u_i, dx> of the rmatvec, <v_i, g_old> and <dx, g_old> come from earlier
//       passes, so b_i = <v_i, g_new - g_old> = c_i - <v_i, g_old> costs no read of g_old: this pass
//       streams V and one weight vector only.)
//   broyden_pass2(U, V?, dx, dx_next, z, z_next, g_new, g_old, coef, slot, n, active, z_best, best_key,
//                 evict_key) -> (B, n' + 2) f64, n' = min(n + 1, L)
//       with coef (B, 3n + 1) f64 = [a | sb | sc | k]:
//       V[slot] = -dx + sum_i a_i v_i               (= v^T = dx^T J^-1, the rmatvec; only when V is given)
//       U[slot] = dx + dg - sum_i sb_i u_i          (= dx - J^-1 dg, the matvec, unnormalised)
//       dx_next = g_new - sum_i sc_i u_i - k U[slot] (= -J_new^-1 g_new, the next step)
//       z_next  = z + dx_next
//       returns [<u_i, dx_next> over the n' columns in use afterwards (the next pass 1's a_i) |
//       <V[slot], g_new> (0 without V) | <dx_next, g_new>] (the new values as stored; g_new is the next
//       pass 1's g_old), accumulated while each block is still in cache. One pass over the history;
//       all reads of an element precede its writes (slot may be an old column being evicted from the
//       ring); needs slot < n' (the ring fills in order). Before z_next of an active sample b with
//       best_key[b] == evict_key is overwritten, it is copied to z_best[b] (the lowest iterate that
//       lived there leaves in the same pass).
//       Without V (memory that never evicts) the caller keeps each v_i as float64 coefficients over
//       the past steps dx_j (v_i = sum_j R_ij dx_j, R from dot products only): the pass then streams
//       U alone, n + 7 rows instead of 2n + 8.
// Inactive samples are not read or written. Reductions accumulate in f64.
#pragma once

#include <optional>

#include "solver_common.h"

namespace ldeq {

// Shared by the CPU and CUDA kernels: one (L, B, d) factor ring (U, V, or the steps read in V's
// place) of `like`'s dtype and device, with n <= L columns in use.
inline void check_factor(const at::Tensor& W, const char* name, const at::Tensor& like, int64_t n) {
  check_history(W, name, like);
  TORCH_CHECK(W.size(1) == like.size(0) && W.size(2) == like.size(1), name, " must have shape (L, B=", like.size(0),
              ", d=", like.size(1), "), got ", W.sizes());
  TORCH_CHECK(0 <= n && n <= W.size(0), "n must be in [0, L=", W.size(0), "], got ", n);
}

inline void check_broyden_pass1(const at::Tensor& V, const at::Tensor& dx, const at::Tensor& fz, const at::Tensor& z,
                                const at::Tensor& g_new, int64_t n, const at::Tensor& active) {
  TORCH_CHECK(fz.dim() == 2, "fz must have shape (B, d), got ", fz.sizes());
  const int64_t B = fz.size(0), d = fz.size(1);
  check_state(fz, "fz", B, d, fz);
  check_state(dx, "dx", B, d, fz);
  check_state(z, "z", B, d, fz);
  check_state(g_new, "g_new", B, d, fz);
  check_factor(V, "V", fz, n);
  check_active(active, B, fz);
}

inline void check_broyden_pass2(const at::Tensor& U, const std::optional<at::Tensor>& V, const at::Tensor& dx,
                                const at::Tensor& dx_next, const at::Tensor& z, const at::Tensor& z_next,
                                const at::Tensor& g_new, const at::Tensor& g_old, const at::Tensor& coef, int64_t slot,
                                int64_t n, const at::Tensor& active, const at::Tensor& z_best,
                                const at::Tensor& best_key) {
  TORCH_CHECK(z.dim() == 2, "z must have shape (B, d), got ", z.sizes());
  const int64_t B = z.size(0), d = z.size(1);
  check_state(z, "z", B, d, z);
  check_state(dx, "dx", B, d, z);
  check_state(dx_next, "dx_next", B, d, z);
  TORCH_CHECK(!dx.is_same(dx_next), "dx_next must be a different buffer from dx");
  check_state(z_next, "z_next", B, d, z);
  check_state(g_new, "g_new", B, d, z);
  check_state(g_old, "g_old", B, d, z);
  check_factor(U, "U", z, n);
  if (V.has_value()) {
    check_factor(*V, "V", z, n);
    TORCH_CHECK(V->sizes() == U.sizes(), "U and V must have the same shape, got ", U.sizes(), " and ", V->sizes());
  }
  TORCH_CHECK(0 <= slot && slot < std::min(n + 1, U.size(0)), "slot must be in [0, min(n + 1, L)=",
              std::min(n + 1, U.size(0)), "), got ", slot);
  check_state(z_best, "z_best", B, d, z);
  check_key(best_key, B, z);
  check_f64(coef, "coef", {B, 3 * n + 1}, z);
  check_active(active, B, z);
}

}  // namespace ldeq
