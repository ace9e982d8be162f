// The small bordered Anderson solve, shared by the CPU and CUDA kernels (host + device code).
// Same algorithm as solvers/_reference.py:_solve_one (which is its test oracle).
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define LDEQ_HD __host__ __device__
#else
#define LDEQ_HD
#endif
#if defined(__CUDACC__)
#define LDEQ_ISFINITE(x) isfinite(x)
#define LDEQ_ISINF(x) isinf(x)
#else
#define LDEQ_ISFINITE(x) std::isfinite(x)
#define LDEQ_ISINF(x) std::isinf(x)
#endif

namespace ldeq {

// Gaussian elimination with partial pivoting on the (N x N) row-major A (overwritten) and x
// (rhs in, solution out). Returns false on a pivot <= tiny or a non-finite solution.
LDEQ_HD inline bool gauss_solve(double* A, double* x, int N, double tiny) {
  for (int c = 0; c < N; ++c) {
    int p = c;
    double best = fabs(A[c * N + c]);
    for (int r = c + 1; r < N; ++r) {
      double v = fabs(A[r * N + c]);
      if (v > best) { best = v; p = r; }
    }
    if (!(best > tiny)) return false;  // also catches NaN
    if (p != c) {
      for (int k = 0; k < N; ++k) { double t = A[c * N + k]; A[c * N + k] = A[p * N + k]; A[p * N + k] = t; }
      double t = x[c]; x[c] = x[p]; x[p] = t;
    }
    for (int r = c + 1; r < N; ++r) {
      double fac = A[r * N + c] / A[c * N + c];
      for (int k = c; k < N; ++k) A[r * N + k] -= fac * A[c * N + k];
      x[r] -= fac * x[c];
    }
  }
  for (int c = N - 1; c >= 0; --c) {
    double s = x[c];
    for (int k = c + 1; k < N; ++k) s -= A[c * N + k] * x[k];
    x[c] = s / A[c * N + c];
    if (!LDEQ_ISFINITE(x[c])) return false;
  }
  return true;
}

// H: this sample's (m x m) Gram matrix (row stride m); alpha: n outputs; work: (n+1)^2 + (n+1)
// doubles. Returns true when a fallback fired (regularised retry or alpha = e_newest).
LDEQ_HD inline bool anderson_solve_one(const double* H, int m, int n, double lam, int newest,
                                       double* alpha, double* work) {
  const int N = n + 1;
  double* A = work;
  double* x = work + N * N;
  bool finite = true;
  double s0 = -1.0 / 0.0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) finite = finite && LDEQ_ISFINITE(H[i * m + j]);
    s0 = fmax(s0, H[i * m + i]);
  }
  if (finite) {
    const double regs[4] = {lam, lam + 1e-10 * s0, lam + 1e-6 * s0, lam + 1e-2 * s0};
    for (int t = 0; t < 4; ++t) {
      double s = -1.0 / 0.0;
      for (int i = 0; i < n; ++i) s = fmax(s, H[i * m + i] + regs[t]);
      if (!(s > 0) || LDEQ_ISINF(s)) break;
      // alpha is invariant to scaling H + reg I: scale to O(1) so the pivot test measures
      // conditioning, not the size of the residuals.
      A[0] = 0.0;
      for (int k = 1; k < N; ++k) { A[k] = 1.0; A[k * N] = 1.0; }
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j)
          A[(i + 1) * N + (j + 1)] = (H[i * m + j] + (i == j ? regs[t] : 0.0)) / s;
      x[0] = 1.0;
      for (int k = 1; k < N; ++k) x[k] = 0.0;
      if (gauss_solve(A, x, N, 1e-13)) {
        for (int i = 0; i < n; ++i) alpha[i] = x[i + 1];
        return t > 0;
      }
    }
  }
  for (int i = 0; i < n; ++i) alpha[i] = (i == newest) ? 1.0 : 0.0;
  return true;
}

}  // namespace ldeq
