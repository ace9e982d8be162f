// Fused heatmap normalisation and soft-argmax decode (the end of the LDEQ cell and its decoder).
//
// heatmap_softargmax(logits, beta) -> heatmaps
//   logits   (B, K, H, W) float32/float64, any strides (made contiguous)
//   beta     () / (1,) or (K,), same dtype and device as logits
//   heatmaps (B, K, H, W) = exp(beta_k * (logits - max_{H,W} logits)); values in (0, 1], peak 1.
//
// heatmap_softargmax_backward(grad_heatmaps, logits, beta, heatmaps) -> (grad_logits, grad_beta)
//   grad_logits (B, K, H, W) = beta g h - [l == max] * beta * sum(g h) / n_ties
//                              (ties at the max share the max's gradient evenly, like amax)
//   grad_beta   (B, K)       = sum_{H,W} g h (l - max); the caller reduces it to beta's shape.
//
// heatmap_decode(heatmaps, official_std) -> (coords, std)
//   heatmaps (B, K, H, W) non-negative; p = h / (sum h + 1e-4)
//   coords   (B, K, 2): x = sum p * col / W, y = sum p * row / H (in [0, 1) crop units)
//   std      (B, K)   : sqrt(0.5 var_x + 0.5 var_y), var_x = sum p (col/W - mu_x)^2 with
//                       mu_x = x (true spread), or mu_x = x / W with official_std (the official
//                       release's unit mix-up: col in pixels minus x in [0,1], divided by W).
//
// heatmap_decode_backward(grad_coords, grad_std, heatmaps, coords, std, official_std) -> grad_heatmaps
//   The gradient with respect to p is separable, gp(r, c) = A(c) + R(r), so the backward is one
//   read pass (for sum gp * p) and one write pass: grad_h = (gp - sum_j gp_j p_j) / (sum h + 1e-4).
//
// heatmap_softargmax_decode(logits, beta, official_std) -> (heatmaps, coords, std)
//   Both ops in one pass per channel (the channel is decoded while in cache).
// heatmap_softargmax_decode_backward(grad_heatmaps?, grad_coords, grad_std, logits, beta, heatmaps, coords,
//                                    std, official_std) -> (grad_logits, grad_beta)
//   dL/dheatmaps (the decode gradient plus grad_heatmaps when given) is formed per element and fed
//   straight into the soft-argmax backward: reads logits and heatmaps once, writes grad_logits once.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#ifdef __CUDACC__
#define LDEQ_HD __host__ __device__
#else
#define LDEQ_HD
#endif

namespace ldeq {
namespace heatmap {

constexpr double kDecodeEps = 1e-4;

// Shared argument checks of the CPU and CUDA kernels; Python wrappers check first with friendlier text.
inline void check_maps(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "ldeq: ", name, " must have shape (B, K, H, W), got ", t.dim(), " dims ", t.sizes());
  TORCH_CHECK(t.size(2) > 0 && t.size(3) > 0, "ldeq: ", name, " must have non-empty spatial dims, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "ldeq: ", name, " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), "ldeq: ", bn, " must be on ", an, "'s device ", a.device(), ", got ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "ldeq: ", bn, " must have ", an, "'s dtype ", a.scalar_type(),
              ", got ", b.scalar_type());
}

inline void check_beta(const at::Tensor& logits, const at::Tensor& beta) {
  check_same(logits, "logits", beta, "beta");
  TORCH_CHECK(beta.numel() == 1 || (beta.dim() == 1 && beta.size(0) == logits.size(1)),
              "ldeq: beta must be a scalar or have shape (K,) = (", logits.size(1), ",), got ", beta.sizes());
}

inline void check_decode_grads(const at::Tensor& heatmaps, const at::Tensor& grad_coords, const at::Tensor& grad_std,
                               const at::Tensor& coords, const at::Tensor& std) {
  const auto B = heatmaps.size(0), K = heatmaps.size(1);
  TORCH_CHECK(grad_coords.sizes() == at::IntArrayRef({B, K, 2}) && coords.sizes() == grad_coords.sizes(),
              "ldeq: coords and grad_coords must have shape (", B, ", ", K, ", 2)");
  TORCH_CHECK(grad_std.sizes() == at::IntArrayRef({B, K}) && std.sizes() == grad_std.sizes(),
              "ldeq: std and grad_std must have shape (", B, ", ", K, ")");
  check_same(heatmaps, "heatmaps", grad_coords, "grad_coords");
  check_same(heatmaps, "heatmaps", grad_std, "grad_std");
  check_same(heatmaps, "heatmaps", coords, "coords");
  check_same(heatmaps, "heatmaps", std, "std");
}

inline void check_softargmax_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& beta,
                                      const at::Tensor& heatmaps) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  check_same(logits, "logits", grad, "grad_heatmaps");
  check_same(logits, "logits", heatmaps, "heatmaps");
  TORCH_CHECK(grad.sizes() == logits.sizes() && heatmaps.sizes() == logits.sizes(),
              "ldeq: grad_heatmaps and heatmaps must have logits' shape ", logits.sizes());
}

// Checks of the fused backward; returns grad_heatmaps made contiguous, or an undefined tensor when absent.
inline at::Tensor check_fused_backward(const std::optional<at::Tensor>& grad_heatmaps, const at::Tensor& grad_coords,
                                       const at::Tensor& grad_std, const at::Tensor& logits, const at::Tensor& beta,
                                       const at::Tensor& heatmaps, const at::Tensor& coords, const at::Tensor& std) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  check_same(logits, "logits", heatmaps, "heatmaps");
  TORCH_CHECK(heatmaps.sizes() == logits.sizes(), "ldeq: heatmaps must have logits' shape ", logits.sizes());
  check_decode_grads(heatmaps, grad_coords, grad_std, coords, std);
  if (!grad_heatmaps.has_value() || !grad_heatmaps->defined()) return at::Tensor();
  check_same(logits, "logits", *grad_heatmaps, "grad_heatmaps");
  TORCH_CHECK(grad_heatmaps->sizes() == logits.sizes(), "ldeq: grad_heatmaps must have logits' shape ",
              logits.sizes());
  return grad_heatmaps->contiguous();
}

// Per-channel constants of the decode backward. With cx = c / W and cy = r / H:
//   gp(r, c) = A0(c) + R0(r) + sum_p * (lx * cx + ly * cy),  sum_p = T / (T + eps)
// where the sum_p term comes from d mu / d p (mu = kx * x) and T = sum h needs a read pass.
template <typename acc_t>
struct DecodeGrad {
  acc_t gx, gy, gv;      // dL/dx, dL/dy, dL/dvar (= 0.25 gstd / std, or 0 when gstd == 0)
  acc_t x, y, mux, muy;  // coordinates and the centres the variances use
  acc_t kx, ky;          // d mu / d x: 1 (true std) or 1/W, 1/H (official)
  acc_t lx, ly;          // 2 * gv * k * mu
  acc_t inv_w, inv_h;

  LDEQ_HD DecodeGrad(acc_t gx_, acc_t gy_, acc_t gstd, acc_t x_, acc_t y_, acc_t std, int64_t H, int64_t W, bool official)
      : gx(gx_), gy(gy_), x(x_), y(y_) {
    inv_w = acc_t(1) / W;
    inv_h = acc_t(1) / H;
    gv = gstd == acc_t(0) ? acc_t(0) : acc_t(0.25) * gstd / std;
    kx = official ? inv_w : acc_t(1);
    ky = official ? inv_h : acc_t(1);
    mux = kx * x;
    muy = ky * y;
    lx = 2 * gv * kx * mux;
    ly = 2 * gv * ky * muy;
  }
  LDEQ_HD inline acc_t A0(acc_t c) const {
    const acc_t cx = c * inv_w, d = cx - mux;
    return gx * cx + gv * (d * d - 2 * kx * cx * x);
  }
  LDEQ_HD inline acc_t R0(acc_t r) const {
    const acc_t cy = r * inv_h, d = cy - muy;
    return gy * cy + gv * (d * d - 2 * ky * cy * y);
  }
};

}  // namespace heatmap
}  // namespace ldeq
