// Anderson acceleration kernels (ldeq.solvers.anderson). Shapes: B batch, d flattened state,
// m history length, n <= m slots in use. The history lives in two ring buffers laid out
// (m, B, d) so that one slot X[s] is a contiguous (B, d) batch that f can read directly.
//
//   anderson_update(X, G, fz, H, slot, n, active) -> (res_sq (B,) f64, fz_sq (B,) f64)
//       G[slot] = fz - X[slot]; H[b, slot, i] = H[b, i, slot] = <G[slot], G[i]> (i < n), i.e. one
//       new row of the Gram matrix per iteration instead of a full G G^T; plus the squared norms.
//   anderson_solve(H (B, m, m) f64, n, lam, newest) -> (alpha (B, n) f64, fallback (B,) bool)
//       the bordered (n+1)x(n+1) system [[0, 1^T], [1, H + lam I]] [nu; alpha] = [1; 0] in fp64,
//       with the regularised retries of anderson_solve.h; never NaN.
//   anderson_mix(X, G, alpha, beta, slot, n, active)
//       X[slot] = sum_i alpha_i (X[i] + beta G[i]) in one pass over the history (in place: slot may
//       be one of the n mixed slots; every read of an element precedes its write).
// Inactive samples (active[b] == false) are not read or written. Reductions accumulate in f64.
#pragma once
