// CPU kernels of the fused heatmap ops (shapes and formulas: heatmap.h).
// One channel (H*W values, 16 KB at 64x64 float) is processed by one thread at a time, so every
// "pass" after the first reads from L1/L2; inner loops are branch-free so GCC vectorises them.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "heatmap/heatmap.h"

namespace ldeq {
namespace heatmap {
namespace {

// Vectorisable exp: Cephes range reduction + degree-6 polynomial, ~1 ulp in float32.
// (std::exp is a library call per element and blocks vectorisation.) float64 uses std::exp.
inline float exp_approx(float x) {
  const float xc = std::fmin(std::fmax(x, -87.33654f), 88.3f);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  float out = e * scale;
  out = x < -87.33654f ? 0.0f : out;                                    // underflow
  out = x > 88.3f ? std::numeric_limits<float>::infinity() : out;       // overflow
  return x != x ? x : out;                                              // NaN propagates
}
inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T channel_max(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// Accumulator type: float channels sum rows in float (short, vectorised) and rows in double.
template <typename T> struct Acc { using type = double; };

int64_t grain(int64_t per_channel) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(per_channel, 1)); }

template <typename T>
void softargmax_kernel(const T* l, const T* beta, int64_t beta_k, T* h, int64_t C, int64_t K, int64_t n) {
  at::parallel_for(0, C, grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T* x = l + c * n;
      T* y = h + c * n;
      const T b = beta[beta_k == 1 ? 0 : c % K];
      const T m = channel_max(x, n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) y[i] = exp_approx(b * (x[i] - m));
    }
  });
}

template <typename T>
void softargmax_backward_kernel(const T* g, const T* l, const T* beta, int64_t beta_k, const T* h, T* gl, T* gb,
                                int64_t C, int64_t K, int64_t n) {
  at::parallel_for(0, C, grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T *gc = g + c * n, *lc = l + c * n, *hc = h + c * n;
      T* out = gl + c * n;
      const T b = beta[beta_k == 1 ? 0 : c % K];
      const T m = channel_max(lc, n);
      T s1 = 0, s2 = 0;
      int64_t ties = 0;
#pragma omp simd reduction(+ : s1, s2, ties)
      for (int64_t i = 0; i < n; ++i) {
        const T gh = gc[i] * hc[i];
        s1 += gh;
        s2 += gh * (lc[i] - m);
        ties += lc[i] == m;
        out[i] = b * gh;
      }
      gb[c] = s2;
      if (ties > 0) {  // the max's own gradient, shared by the tied maxima (rare second scan)
        const T share = b * s1 / T(ties);
        for (int64_t i = 0; i < n; ++i)
          if (lc[i] == m) out[i] -= share;
      }
    }
  });
}

template <typename T>
void decode_kernel(const T* hm, T* coords, T* stdv, int64_t C, int64_t H, int64_t W, bool official) {
  using acc_t = typename Acc<T>::type;
  std::vector<T> col(W);
  for (int64_t c = 0; c < W; ++c) col[c] = T(c);
  at::parallel_for(0, C, grain(H * W), [&](int64_t begin, int64_t end) {
    std::vector<T> row_sum(H), dx(W);
    for (int64_t ch = begin; ch < end; ++ch) {
      const T* h = hm + ch * H * W;
      acc_t tot = 0, mx = 0, my = 0;
      for (int64_t r = 0; r < H; ++r) {
        const T* hr = h + r * W;
        T s = 0, sx = 0;
#pragma omp simd reduction(+ : s, sx)
        for (int64_t c = 0; c < W; ++c) {
          s += hr[c];
          sx += hr[c] * col[c];
        }
        row_sum[r] = s;
        tot += s;
        mx += sx;
        my += acc_t(s) * r;
      }
      const acc_t S = tot + kDecodeEps;
      const acc_t x = mx / (S * W), y = my / (S * H);
      const acc_t mux = official ? x / W : x, muy = official ? y / H : y;
      for (int64_t c = 0; c < W; ++c) {
        const acc_t d = acc_t(c) / W - mux;
        dx[c] = T(d * d);
      }
      acc_t vx = 0, vy = 0;
      for (int64_t r = 0; r < H; ++r) {
        const T* hr = h + r * W;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < W; ++c) s += hr[c] * dx[c];
        vx += s;
        const acc_t d = acc_t(r) / H - muy;
        vy += acc_t(row_sum[r]) * d * d;
      }
      coords[2 * ch] = T(x);
      coords[2 * ch + 1] = T(y);
      stdv[ch] = T(std::sqrt(0.5 * (vx + vy) / S));
    }
  });
}

template <typename T>
void decode_backward_kernel(const T* gcoord, const T* gstd, const T* hm, const T* coords, const T* stdv, T* gh,
                            int64_t C, int64_t H, int64_t W, bool official) {
  using acc_t = typename Acc<T>::type;
  at::parallel_for(0, C, grain(H * W), [&](int64_t begin, int64_t end) {
    std::vector<T> a(W), rr(H);
    for (int64_t ch = begin; ch < end; ++ch) {
      const T* h = hm + ch * H * W;
      T* out = gh + ch * H * W;
      const DecodeGrad<acc_t> d(gcoord[2 * ch], gcoord[2 * ch + 1], gstd[ch], coords[2 * ch], coords[2 * ch + 1],
                                stdv[ch], H, W, official);
      for (int64_t c = 0; c < W; ++c) a[c] = T(d.A0(acc_t(c)));
      for (int64_t r = 0; r < H; ++r) rr[r] = T(d.R0(acc_t(r)));
      acc_t tot = 0, q = 0;  // T = sum h and sum h * (A0 + R0)
      for (int64_t r = 0; r < H; ++r) {
        const T* hr = h + r * W;
        T s = 0, sa = 0;
#pragma omp simd reduction(+ : s, sa)
        for (int64_t c = 0; c < W; ++c) {
          s += hr[c];
          sa += hr[c] * a[c];
        }
        tot += s;
        q += acc_t(sa) + acc_t(rr[r]) * s;
      }
      const acc_t S = tot + kDecodeEps, sum_p = tot / S;
      // G = sum gp p, with sum h cx = x S and sum h cy = y S.
      const acc_t G = q / S + sum_p * (d.lx * d.x + d.ly * d.y);
      const acc_t inv_s = 1 / S;
      const T ax = T(sum_p * d.lx * d.inv_w * inv_s), ay = T(sum_p * d.ly * d.inv_h * inv_s);
      for (int64_t c = 0; c < W; ++c) a[c] = T((acc_t(a[c]) - G) * inv_s) + ax * T(c);
      for (int64_t r = 0; r < H; ++r) {
        const T rv = T(acc_t(rr[r]) * inv_s) + ay * T(r);
        T* o = out + r * W;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) o[c] = a[c] + rv;
      }
    }
  });
}

at::Tensor softargmax_cpu(const at::Tensor& logits, const at::Tensor& beta) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  auto l = logits.contiguous();
  auto b = beta.contiguous();
  auto h = at::empty_like(l);
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_cpu", [&] {
    softargmax_kernel<scalar_t>(l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), b.numel(), h.data_ptr<scalar_t>(),
                                B * K, K, n);
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor> softargmax_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                                           const at::Tensor& beta, const at::Tensor& heatmaps) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  check_same(logits, "logits", grad, "grad_heatmaps");
  check_same(logits, "logits", heatmaps, "heatmaps");
  TORCH_CHECK(grad.sizes() == logits.sizes() && heatmaps.sizes() == logits.sizes(),
              "ldeq: grad_heatmaps and heatmaps must have logits' shape ", logits.sizes());
  auto g = grad.contiguous(), l = logits.contiguous(), b = beta.contiguous(), h = heatmaps.contiguous();
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  auto gl = at::empty_like(l);
  auto gb = at::empty({B, K}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_backward_cpu", [&] {
    softargmax_backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                         b.numel(), h.data_ptr<scalar_t>(), gl.data_ptr<scalar_t>(),
                                         gb.data_ptr<scalar_t>(), B * K, K, n);
  });
  return {gl, gb};
}

std::tuple<at::Tensor, at::Tensor> decode_cpu(const at::Tensor& heatmaps, bool official_std) {
  check_maps(heatmaps, "heatmaps");
  auto h = heatmaps.contiguous();
  const int64_t B = h.size(0), K = h.size(1), H = h.size(2), W = h.size(3);
  auto coords = at::empty({B, K, 2}, h.options());
  auto stdv = at::empty({B, K}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "heatmap_decode_cpu", [&] {
    decode_kernel<scalar_t>(h.data_ptr<scalar_t>(), coords.data_ptr<scalar_t>(), stdv.data_ptr<scalar_t>(), B * K, H,
                            W, official_std);
  });
  return {coords, stdv};
}

at::Tensor decode_backward_cpu(const at::Tensor& grad_coords, const at::Tensor& grad_std, const at::Tensor& heatmaps,
                               const at::Tensor& coords, const at::Tensor& stdv, bool official_std) {
  check_maps(heatmaps, "heatmaps");
  check_decode_grads(heatmaps, grad_coords, grad_std, coords, stdv);
  auto h = heatmaps.contiguous(), gc = grad_coords.contiguous(), gs = grad_std.contiguous();
  auto co = coords.contiguous(), sd = stdv.contiguous();
  const int64_t B = h.size(0), K = h.size(1), H = h.size(2), W = h.size(3);
  auto gh = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "heatmap_decode_backward_cpu", [&] {
    decode_backward_kernel<scalar_t>(gc.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                     co.data_ptr<scalar_t>(), sd.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), B * K,
                                     H, W, official_std);
  });
  return gh;
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CPU, m) {
  m.impl("heatmap_softargmax", &softargmax_cpu);
  m.impl("heatmap_softargmax_backward", &softargmax_backward_cpu);
  m.impl("heatmap_decode", &decode_cpu);
  m.impl("heatmap_decode_backward", &decode_backward_cpu);
}

}  // namespace heatmap
}  // namespace ldeq
