// CUDA kernels of the fused heatmap ops (shapes and formulas: heatmap.h).
// One block per (b, k) channel: H*W is small (4096 at 64x64), so a block streams its channel with
// coalesced loads and every reduction stays on chip.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/block_reduce.cuh"
#include "heatmap/heatmap.h"

namespace ldeq {
namespace heatmap {
namespace {

// One block per (b, k) channel, walked with a grid-stride loop: any B * K fits the grid.
inline unsigned channel_grid(int64_t channels) {
  return static_cast<unsigned>(std::min<int64_t>(channels, std::numeric_limits<int32_t>::max()));
}

// Ends a decode once every thread holds its share of sum h, sum h * col and sum h * row over the
// channel (hv(i) gives pixel i's heat, stored or recomputed): block sums, then the centred variance
// pass, then one thread writes coords[0..1] and *stdv. Overflow rule (as the CPU kernel and the
// reference): with retry_wide, a total past FLT_MAX (float sums of a finite float channel ~3e38)
// writes nothing and returns false, and the caller redoes the channel in double; a total that is not
// finite in the accumulation type gives NaN coords and std.
template <typename T, typename acc_t, typename HeatValue>
__device__ __forceinline__ bool block_decode_finish(HeatValue hv, int64_t H, int64_t W, bool official, acc_t tot,
                                                    acc_t mx, acc_t my, T* coords, T* stdv, bool retry_wide) {
  const int64_t n = H * W;
  tot = block_all_sum(tot);
  mx = block_all_sum(mx);
  my = block_all_sum(my);
  if (retry_wide && !(tot <= acc_t(FLT_MAX))) return false;  // the same value in every thread
  const acc_t S = tot + acc_t(kDecodeEps);
  if (!isfinite(S)) {
    if (threadIdx.x == 0) coords[0] = coords[1] = *stdv = std::numeric_limits<T>::quiet_NaN();
    return true;
  }
  const acc_t x = mx / (S * W), y = my / (S * H);
  const acc_t mux = official ? x / W : x, muy = official ? y / H : y;
  acc_t vx = 0, vy = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc_t v = hv(i);
    const acc_t dx = acc_t(i % W) / W - mux, dy = acc_t(i / W) / H - muy;
    vx += v * dx * dx;
    vy += v * dy * dy;
  }
  vx = block_all_sum(vx);
  vy = block_all_sum(vy);
  if (threadIdx.x == 0) {
    coords[0] = T(x);
    coords[1] = T(y);
    *stdv = T(::sqrt(acc_t(0.5) * (vx + vy) / S));
  }
  return true;
}

// The max of one channel's n values, every thread of the block gets it (NaN-propagating, MaxOp).
template <typename T>
__device__ __forceinline__ T block_channel_max(const T* x, int64_t n) {
  const MaxOp op;
  T m = -std::numeric_limits<T>::infinity();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = op(x[i], m);
  return block_all_max(m);
}

// The soft-argmax backward of one channel, from dL/dh (gh(i)) and the heatmap (hv(i)), both acc_t:
//   dL/dl = b (gh h - [l == max] sum(gh h) / ties),  dL/dbeta = sum gh h (l - max).
// Tied maxima share the max's gradient evenly, as amax does. Writes out[0..n) and *gb.
template <typename T, typename acc_t, typename GradH, typename HeatValue>
__device__ __forceinline__ void block_softargmax_backward(const T* lc, T m, acc_t b, GradH gh, HeatValue hv,
                                                          int64_t n, T* out, T* gb) {
  acc_t s1 = 0, s2 = 0;
  int ties = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const acc_t ghv = gh(i) * hv(i);
    s1 += ghv;
    s2 += ghv * acc_t(lc[i] - m);
    ties += lc[i] == m;
  }
  s1 = block_all_sum(s1);
  s2 = block_all_sum(s2);
  ties = block_all_sum(ties);
  const acc_t share = ties > 0 ? b * s1 / acc_t(ties) : acc_t(0);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
    out[i] = T(b * gh(i) * hv(i) - (lc[i] == m ? share : acc_t(0)));
  if (threadIdx.x == 0) *gb = T(s2);
}

template <typename T>
__global__ void softargmax_fwd_kernel(const T* __restrict__ l, const T* __restrict__ beta, int64_t beta_k,
                                      T* __restrict__ h, int64_t K, int64_t n, int64_t channels) {
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const T* x = l + c * n;
    T* y = h + c * n;
    const T b = beta[beta_k == 1 ? 0 : c % K];
    const T m = block_channel_max(x, n);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) y[i] = ::exp(b * (x[i] - m));
  }
}

template <typename T>
__global__ void softargmax_bwd_kernel(const T* __restrict__ g, const T* __restrict__ l, const T* __restrict__ beta,
                                      int64_t beta_k, const T* __restrict__ h, T* __restrict__ gl,
                                      T* __restrict__ gb, int64_t K, int64_t n, int64_t channels) {
  using acc_t = at::acc_type<T, true>;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    const T *gc = g + c * n, *lc = l + c * n, *hc = h + c * n;
    T* out = gl + c * n;
    const T b = beta[beta_k == 1 ? 0 : c % K];
    const T m = block_channel_max(lc, n);
    block_softargmax_backward(lc, m, acc_t(b), [&](int64_t i) { return acc_t(gc[i]); },
                              [&](int64_t i) { return acc_t(hc[i]); }, n, out, gb + c);
  }
}

// This thread's share of one channel's decode sums (sum h, sum h x, sum h y), accumulated in S.
template <typename S, typename T>
__device__ void thread_decode_sums(const T* __restrict__ h, int64_t n, int64_t W, S& tot, S& mx, S& my) {
  tot = 0, mx = 0, my = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const S v = h[i];
    tot += v;
    mx += v * S(i % W);
    my += v * S(i / W);
  }
}

template <typename T>
__global__ void decode_fwd_kernel(const T* __restrict__ hm, T* __restrict__ coords, T* __restrict__ stdv, int64_t H,
                                  int64_t W, bool official, int64_t channels) {
  using acc_t = at::acc_type<T, true>;
  const int64_t n = H * W;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x) {
    const T* h = hm + ch * n;
    acc_t tot, mx, my;
    thread_decode_sums(h, n, W, tot, mx, my);
    const bool done = block_decode_finish<T>([&](int64_t i) { return acc_t(h[i]); }, H, W, official, tot, mx, my,
                                             coords + 2 * ch, stdv + ch, std::is_same_v<acc_t, float>);
    if (!done) {  // a float channel whose sum passes FLT_MAX: the same decode with double sums
      double tot64, mx64, my64;
      thread_decode_sums(h, n, W, tot64, mx64, my64);
      block_decode_finish<T>([&](int64_t i) { return double(h[i]); }, H, W, official, tot64, mx64, my64,
                             coords + 2 * ch, stdv + ch, false);
    }
  }
}

// The decode's gradient field of one channel, dL/dh(i) = (gp(i) - G) / S. The constructor reduces
// sum h and sum h (A0 + R0) over the block (hv(i): pixel i's heat, stored or recomputed); every
// thread then evaluates the field at its pixels.
template <typename acc_t>
struct BlockDecodeGradField {
  DecodeGrad<acc_t> d;
  int64_t W;
  acc_t S, sum_p, G;

  template <typename HeatValue>
  __device__ BlockDecodeGradField(const DecodeGrad<acc_t>& d_, HeatValue hv, int64_t n, int64_t W_) : d(d_), W(W_) {
    acc_t tot = 0, q = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const acc_t v = hv(i);
      tot += v;
      q += v * (d.A0(acc_t(i % W)) + d.R0(acc_t(i / W)));
    }
    tot = block_all_sum(tot);
    q = block_all_sum(q);
    S = tot + acc_t(kDecodeEps);
    sum_p = tot / S;
    G = q / S + sum_p * (d.lx * d.x + d.ly * d.y);
  }

  __device__ acc_t operator()(int64_t i) const {
    const acc_t c = acc_t(i % W), r = acc_t(i / W);
    const acc_t gp = d.A0(c) + d.R0(r) + sum_p * (d.lx * c * d.inv_w + d.ly * r * d.inv_h);
    return (gp - G) / S;
  }
};

template <typename T>
__global__ void decode_bwd_kernel(const T* __restrict__ gcoord, const T* __restrict__ gstd, const T* __restrict__ hm,
                                  const T* __restrict__ coords, const T* __restrict__ stdv, T* __restrict__ gh,
                                  int64_t H, int64_t W, bool official, int64_t channels) {
  using acc_t = at::acc_type<T, true>;
  const int64_t n = H * W;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x) {
    const T* h = hm + ch * n;
    T* out = gh + ch * n;
    const DecodeGrad<acc_t> d(gcoord[2 * ch], gcoord[2 * ch + 1], gstd[ch], coords[2 * ch], coords[2 * ch + 1],
                              stdv[ch], H, W, official);
    const BlockDecodeGradField<acc_t> field(d, [&](int64_t i) { return acc_t(h[i]); }, n, W);
    if (std::is_same_v<acc_t, float> && !(field.S <= acc_t(FLT_MAX))) {
      // a float channel whose sum passes FLT_MAX: the field from double sums (as the forward)
      const DecodeGrad<double> d64(gcoord[2 * ch], gcoord[2 * ch + 1], gstd[ch], coords[2 * ch], coords[2 * ch + 1],
                                   stdv[ch], H, W, official);
      const BlockDecodeGradField<double> wide(d64, [&](int64_t i) { return double(h[i]); }, n, W);
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = T(wide(i));
    } else {
      for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = T(field(i));
    }
  }
}

// Fused forward: each thread decodes the values it just wrote (same index pattern, so no barrier is
// needed beyond the reductions').
template <typename T>
__global__ void softargmax_decode_fwd_kernel(const T* __restrict__ l, const T* __restrict__ beta, int64_t beta_k,
                                             T* __restrict__ hm, T* __restrict__ coords, T* __restrict__ stdv,
                                             int64_t K, int64_t H, int64_t W, bool official, int64_t channels) {
  using acc_t = at::acc_type<T, true>;
  const int64_t n = H * W;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x) {
    const T* x = l + ch * n;
    T* h = hm ? hm + ch * n : nullptr;  // nullptr: coordinates only, heatmap recomputed where needed
    const T b = beta[beta_k == 1 ? 0 : ch % K];
    const T m = block_channel_max(x, n);
    acc_t tot = 0, mx = 0, my = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const T v = ::exp(b * (x[i] - m));
      if (h) h[i] = v;
      tot += acc_t(v);
      mx += acc_t(v) * acc_t(i % W);
      my += acc_t(v) * acc_t(i / W);
    }
    block_decode_finish<T>([&](int64_t i) { return acc_t(h ? h[i] : ::exp(b * (x[i] - m))); }, H, W, official, tot, mx,
                           my, coords + 2 * ch, stdv + ch, /*retry_wide=*/false);  // heatmaps <= 1: no overflow
  }
}

// Fused backward: dL/dh = (gp - G) / S (+ grad_heatmaps) is recomputed per element, never stored.
template <typename T>
__global__ void softargmax_decode_bwd_kernel(const T* __restrict__ gh_in, const T* __restrict__ gcoord,
                                             const T* __restrict__ gstd, const T* __restrict__ l,
                                             const T* __restrict__ beta, int64_t beta_k, const T* __restrict__ hm,
                                             const T* __restrict__ coords, const T* __restrict__ stdv,
                                             T* __restrict__ gl, T* __restrict__ gb, int64_t K, int64_t H, int64_t W,
                                             bool official, int64_t channels) {
  using acc_t = at::acc_type<T, true>;
  const int64_t n = H * W;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x) {
    // hm == nullptr: the heatmaps were not stored; recompute exp(beta (l - max)) per element.
    const T *h = hm ? hm + ch * n : nullptr, *lc = l + ch * n, *gi = gh_in ? gh_in + ch * n : nullptr;
    T* out = gl + ch * n;
    const T bt = beta[beta_k == 1 ? 0 : ch % K];
    const acc_t b = bt;
    const DecodeGrad<acc_t> d(gcoord[2 * ch], gcoord[2 * ch + 1], gstd[ch], coords[2 * ch], coords[2 * ch + 1],
                              stdv[ch], H, W, official);
    const T m = block_channel_max(lc, n);
    auto hv = [&](int64_t i) { return h ? h[i] : T(::exp(bt * (lc[i] - m))); };
    const BlockDecodeGradField<acc_t> field(d, [&](int64_t i) { return acc_t(hv(i)); }, n, W);
    auto grad_h = [&](int64_t i) { return field(i) + (gi ? acc_t(gi[i]) : acc_t(0)); };
    block_softargmax_backward(lc, m, b, grad_h, [&](int64_t i) { return acc_t(hv(i)); }, n, out, gb + ch);
  }
}

at::Tensor softargmax_cuda(const at::Tensor& logits, const at::Tensor& beta) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto l = logits.contiguous();
  auto b = beta.contiguous();
  auto h = at::empty_like(l);
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  if (B * K == 0) return h;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_cuda", [&] {
    softargmax_fwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), b.numel(), h.data_ptr<scalar_t>(), K, n, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor> softargmax_backward_cuda(const at::Tensor& grad, const at::Tensor& logits,
                                                            const at::Tensor& beta, const at::Tensor& heatmaps) {
  check_softargmax_backward(grad, logits, beta, heatmaps);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto g = grad.contiguous(), l = logits.contiguous(), b = beta.contiguous(), h = heatmaps.contiguous();
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  auto gl = at::empty_like(l);
  auto gb = at::empty({B, K}, l.options());
  if (B * K == 0) return {gl, gb};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_backward_cuda", [&] {
    softargmax_bwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), b.numel(), h.data_ptr<scalar_t>(),
        gl.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), K, n, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gl, gb};
}

std::tuple<at::Tensor, at::Tensor> decode_cuda(const at::Tensor& heatmaps, bool official_std) {
  check_maps(heatmaps, "heatmaps");
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  auto h = heatmaps.contiguous();
  const int64_t B = h.size(0), K = h.size(1), H = h.size(2), W = h.size(3);
  auto coords = at::empty({B, K, 2}, h.options());
  auto stdv = at::empty({B, K}, h.options());
  if (B * K == 0) return {coords, stdv};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "heatmap_decode_cuda", [&] {
    decode_fwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), coords.data_ptr<scalar_t>(), stdv.data_ptr<scalar_t>(), H, W, official_std, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {coords, stdv};
}

at::Tensor decode_backward_cuda(const at::Tensor& grad_coords, const at::Tensor& grad_std, const at::Tensor& heatmaps,
                                const at::Tensor& coords, const at::Tensor& stdv, bool official_std) {
  check_maps(heatmaps, "heatmaps");
  check_decode_grads(heatmaps, grad_coords, grad_std, coords, stdv);
  const c10::cuda::CUDAGuard guard(heatmaps.device());
  auto h = heatmaps.contiguous(), gc = grad_coords.contiguous(), gs = grad_std.contiguous();
  auto co = coords.contiguous(), sd = stdv.contiguous();
  const int64_t B = h.size(0), K = h.size(1), H = h.size(2), W = h.size(3);
  auto gh = at::empty_like(h);
  if (B * K == 0) return gh;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "heatmap_decode_backward_cuda", [&] {
    decode_bwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        gc.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), co.data_ptr<scalar_t>(),
        sd.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), H, W, official_std, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gh;
}

// The fused forward, shared by heatmap_softargmax_decode (store_heatmaps) and
// heatmap_softargmax_coords (heatmaps recomputed where needed, never stored; h is undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_forward_cuda(const at::Tensor& logits, const at::Tensor& beta,
                                                                   bool official_std, bool store_heatmaps) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  const c10::cuda::CUDAGuard guard(logits.device());
  auto l = logits.contiguous();
  auto b = beta.contiguous();
  const int64_t B = l.size(0), K = l.size(1), H = l.size(2), W = l.size(3);
  const at::Tensor h = store_heatmaps ? at::empty_like(l) : at::Tensor();
  auto coords = at::empty({B, K, 2}, l.options());
  auto stdv = at::empty({B, K}, l.options());
  if (B * K == 0) return {h, coords, stdv};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_decode_cuda", [&] {
    softargmax_decode_fwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), b.numel(), h.defined() ? h.data_ptr<scalar_t>() : nullptr,
        coords.data_ptr<scalar_t>(), stdv.data_ptr<scalar_t>(), K, H, W, official_std, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {h, coords, stdv};
}

// The fused backward, on checked arguments, shared by both ops: grad_heatmaps undefined when absent,
// heatmaps undefined for the coords op (recomputed per channel from logits).
std::tuple<at::Tensor, at::Tensor> fused_backward_cuda(const at::Tensor& grad_heatmaps, const at::Tensor& grad_coords,
                                                       const at::Tensor& grad_std, const at::Tensor& logits,
                                                       const at::Tensor& beta, const at::Tensor& heatmaps,
                                                       const at::Tensor& coords, const at::Tensor& stdv,
                                                       bool official_std) {
  const c10::cuda::CUDAGuard guard(logits.device());
  auto l = logits.contiguous(), b = beta.contiguous();
  const at::Tensor h = heatmaps.defined() ? heatmaps.contiguous() : at::Tensor();
  auto gc = grad_coords.contiguous(), gs = grad_std.contiguous(), co = coords.contiguous(), sd = stdv.contiguous();
  const int64_t B = l.size(0), K = l.size(1), H = l.size(2), W = l.size(3);
  auto gl = at::empty_like(l);
  auto gb = at::empty({B, K}, l.options());
  if (B * K == 0) return {gl, gb};
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_decode_backward_cuda", [&] {
    softargmax_decode_bwd_kernel<scalar_t><<<channel_grid(B * K), kBlockThreads, 0, stream>>>(
        grad_heatmaps.defined() ? grad_heatmaps.data_ptr<scalar_t>() : nullptr, gc.data_ptr<scalar_t>(),
        gs.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), b.numel(),
        h.defined() ? h.data_ptr<scalar_t>() : nullptr, co.data_ptr<scalar_t>(), sd.data_ptr<scalar_t>(),
        gl.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), K, H, W, official_std, B * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gl, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softargmax_decode_cuda(const at::Tensor& logits, const at::Tensor& beta,
                                                                       bool official_std) {
  return fused_forward_cuda(logits, beta, official_std, /*store_heatmaps=*/true);
}

std::tuple<at::Tensor, at::Tensor> softargmax_decode_backward_cuda(
    const std::optional<at::Tensor>& grad_heatmaps, const at::Tensor& grad_coords, const at::Tensor& grad_std,
    const at::Tensor& logits, const at::Tensor& beta, const at::Tensor& heatmaps, const at::Tensor& coords,
    const at::Tensor& stdv, bool official_std) {
  const at::Tensor gin = check_fused_backward(grad_heatmaps, grad_coords, grad_std, logits, beta, heatmaps, coords, stdv);
  return fused_backward_cuda(gin, grad_coords, grad_std, logits, beta, heatmaps, coords, stdv, official_std);
}

std::tuple<at::Tensor, at::Tensor> softargmax_coords_cuda(const at::Tensor& logits, const at::Tensor& beta,
                                                           bool official_std) {
  auto [h, coords, stdv] = fused_forward_cuda(logits, beta, official_std, /*store_heatmaps=*/false);
  return {coords, stdv};
}

std::tuple<at::Tensor, at::Tensor> softargmax_coords_backward_cuda(const at::Tensor& grad_coords,
                                                                   const at::Tensor& grad_std, const at::Tensor& logits,
                                                                   const at::Tensor& beta, const at::Tensor& coords,
                                                                   const at::Tensor& stdv, bool official_std) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  check_decode_grads(logits, grad_coords, grad_std, coords, stdv);
  return fused_backward_cuda(at::Tensor(), grad_coords, grad_std, logits, beta, at::Tensor(), coords, stdv,
                             official_std);
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CUDA, m) {
  m.impl("heatmap_softargmax_coords", &softargmax_coords_cuda);
  m.impl("heatmap_softargmax_coords_backward", &softargmax_coords_backward_cuda);
  m.impl("heatmap_softargmax_decode", &softargmax_decode_cuda);
  m.impl("heatmap_softargmax_decode_backward", &softargmax_decode_backward_cuda);
  m.impl("heatmap_softargmax", &softargmax_cuda);
  m.impl("heatmap_softargmax_backward", &softargmax_backward_cuda);
  m.impl("heatmap_decode", &decode_cuda);
  m.impl("heatmap_decode_backward", &decode_backward_cuda);
}

}  // namespace heatmap
}  // namespace ldeq
