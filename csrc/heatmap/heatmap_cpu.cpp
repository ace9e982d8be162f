// CPU kernels of the fused heatmap ops (shapes and formulas: heatmap.h).
// One channel (H*W values, 16 KB at 64x64 float) is processed by one thread at a time, so every
// "pass" after the first reads from L1/L2; inner loops are branch-free so GCC vectorises them.
// Every kernel body is compiled for default / AVX2 / AVX-512 and picked at run time by the one CPU
// dispatch of ldeq (common/cpu_dispatch.h: LDEQ_CPU_KERNEL, forced by LDEQ_CPU_CAPABILITY).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_alloc.h"
#include "common/cpu_dispatch.h"
#if LDEQ_HAVE_ISA_VARIANTS
#include <immintrin.h>
#endif
#include "heatmap/heatmap.h"

namespace ldeq {
namespace heatmap {
namespace {

using cpu::Isa;

// Vectorisable exp: Cephes range reduction + degree-6 polynomial, ~1 ulp in float32.
// (std::exp is a library call per element and blocks vectorisation; the selects below vectorise
// because setup.py passes -fno-trapping-math.) float64 uses std::exp.
LDEQ_INLINE float exp_approx(float x) {
  float xc = x < -87.33654f ? -87.33654f : x;
  xc = xc > 88.3f ? 88.3f : xc;
  const float t = xc * 1.44269504088896341f + 0.5f;
  int32_t ni = static_cast<int32_t>(t);  // truncate, then fix up to floor (baseline SSE2 has no floor)
  ni -= t < static_cast<float>(ni) ? 1 : 0;
  const float n = static_cast<float>(ni);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  float out = e * scale;
  // Special cases as bit masks: GCC does not if-convert float selects for AVX-512 mask registers.
  uint32_t ob, xb;
  std::memcpy(&ob, &out, sizeof(float));
  std::memcpy(&xb, &x, sizeof(float));
  const uint32_t under = 0u - uint32_t(x < -87.33654f), over = 0u - uint32_t(x > 88.3f), nan = 0u - uint32_t(x != x);
  ob &= ~under;                                   // underflow -> 0
  ob = (ob & ~over) | (0x7f800000u & over);       // overflow -> +inf
  ob = (ob & ~nan) | (xb & nan);                  // NaN propagates
  std::memcpy(&out, &ob, sizeof(float));
  return out;
}
inline double exp_approx(double x) { return std::exp(x); }

// Max as an integer reduction over order-preserving keys of the float bits: GCC vectorises integer
// max reductions everywhere, but not float ones (in an AVX-512 body it fell back to scalar vmaxss).
// Every NaN, whatever its sign bit and payload (0xFFC00000 is what inf - inf gives on x86), gets the
// largest key, so a NaN anywhere makes the channel's max NaN and poisons its outputs, as torch.amax.
template <typename T> struct OrderedKey;
template <> struct OrderedKey<float> {
  using I = int32_t;
  static constexpr I kMagnitude = 0x7fffffff;
  static constexpr I kInf = 0x7f800000;
};
template <> struct OrderedKey<double> {
  using I = int64_t;
  static constexpr I kMagnitude = 0x7fffffffffffffffLL;
  static constexpr I kInf = 0x7ff0000000000000LL;
};

template <typename T>
LDEQ_INLINE T channel_max(const T* x, int64_t n) {
  using I = typename OrderedKey<T>::I;
  constexpr int kSign = 8 * sizeof(T) - 1;
  I m = std::numeric_limits<I>::min();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) {
    I bits;
    std::memcpy(&bits, x + i, sizeof(T));
    const I key = bits ^ ((bits >> kSign) & OrderedKey<T>::kMagnitude);  // negative floats: flip magnitude
    const I k = (bits & OrderedKey<T>::kMagnitude) > OrderedKey<T>::kInf ? OrderedKey<T>::kMagnitude : key;  // NaN
    m = k > m ? k : m;
  }
  const I bits = m ^ ((m >> kSign) & OrderedKey<T>::kMagnitude);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// The max gets noinline entry points of its own per ISA, called per channel: inlined into the larger
// range bodies GCC left it scalar (vmaxss / cmov) while vectorising every other loop there.
template <typename T> LDEQ_NOINLINE T channel_max_default(const T* x, int64_t n) { return channel_max(x, n); }
template <typename T> LDEQ_NOINLINE LDEQ_TARGET_AVX2 T channel_max_avx2(const T* x, int64_t n) { return channel_max(x, n); }
template <typename T> LDEQ_NOINLINE LDEQ_TARGET_AVX512 T channel_max_avx512(const T* x, int64_t n) {
  return channel_max(x, n);
}
template <Isa isa, typename T>
LDEQ_INLINE T vec_max(const T* x, int64_t n) {
  if constexpr (isa == Isa::kAvx512) return channel_max_avx512(x, n);
  else if constexpr (isa == Isa::kAvx2) return channel_max_avx2(x, n);
  else return channel_max_default(x, n);
}

// Accumulator type: float channels sum rows in float (short, vectorised) and rows in double.
template <typename T> struct Acc { using type = double; };

int64_t grain(int64_t per_channel) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(per_channel, 1)); }

// Ask for the next channel's logits (into L2) while this channel computes from cache: the channel
// max is otherwise the only pass that waits on DRAM. The AVX-512 exp pass interleaves one prefetch
// per cache line it computes; the portable one issues them up front. next == nullptr: last channel.
template <typename T>
LDEQ_INLINE void prefetch_channel(const T* next, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  if (!next) return;
  for (int64_t i = 0; i < n; i += 64 / sizeof(T)) __builtin_prefetch(next + i, 0, 2);
#else
  (void)next;
  (void)n;
#endif
}

// Portable y = exp(b (x - m)) over one channel, prefetching the next one (nullptr: none).
template <typename T>
LDEQ_INLINE void exp_shift(const T* x, T* y, int64_t n, T b, T m, const T* next) {
  prefetch_channel(next, n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = exp_approx(b * (x[i] - m));
}

// y = exp(b (x - m)) over one channel, float32: the pass that dominates the kernels' arithmetic.
// The AVX-512 body uses vscalefps for the 2^n scaling, which also gives 0, denormals, inf and NaN
// right without the masks exp_approx needs, and is about half the instructions. Forward and
// recomputing backward call the same body, so the recomputed heatmaps have the same bits as the
// forward's (under one capability; another capability may differ in the last bit).
#if LDEQ_HAVE_ISA_VARIANTS
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
// GCC 12's avx512fintrin.h initialises its "undefined" vectors with themselves (__m512 __Y = __Y).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// exp(t) for 16 floats: Cephes reduction and polynomial (as exp_approx), 2^k applied by vscalefps.
LDEQ_TARGET_AVX512 LDEQ_INLINE __m512 exp512(__m512 t) {
  // Clamped so that k stays finite: exp(-104) is 0 and exp(89) inf in float32. max/min return
  // their second operand when one is NaN, so a NaN input stays NaN.
  t = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(_mm512_set1_ps(-104.0f), t));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), t);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, k);
}
// A call per channel (not inlined: the generic bodies that call it carry no target attribute).
LDEQ_TARGET_AVX512 LDEQ_NOINLINE void exp_shift_avx512(const float* x, float* y, int64_t n, float b, float m,
                                                      const float* next) {
  const __m512 vb = _mm512_set1_ps(b), vm = _mm512_set1_ps(m);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (next) _mm_prefetch(reinterpret_cast<const char*>(next + i), _MM_HINT_T1);
    _mm512_storeu_ps(y + i, exp512(_mm512_mul_ps(vb, _mm512_sub_ps(_mm512_loadu_ps(x + i), vm))));
  }
  if (i < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(tail, x + i);
    _mm512_mask_storeu_ps(y + i, tail, exp512(_mm512_mul_ps(vb, _mm512_sub_ps(v, vm))));
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif
template <Isa isa, typename T>
LDEQ_INLINE void exp_shift_vec(const T* x, T* y, int64_t n, T b, T m, const T* next) {
#if LDEQ_HAVE_ISA_VARIANTS
  if constexpr (isa == Isa::kAvx512 && std::is_same_v<T, float>) {
    exp_shift_avx512(x, y, n, b, m, next);
    return;
  }
#endif
  exp_shift(x, y, n, b, m, next);
}

template <Isa isa, typename T>
LDEQ_INLINE void softargmax_range_body(const T* l, const T* beta, int64_t beta_k, T* h, int64_t K, int64_t n, int64_t begin,
                             int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T* x = l + c * n;
      exp_shift_vec<isa>(x, h + c * n, n, beta[beta_k == 1 ? 0 : c % K], vec_max<isa>(x, n), c + 1 < end ? x + n : nullptr);
    }
}

template <Isa isa, typename T>
LDEQ_INLINE void softargmax_backward_range_body(const T* g, const T* l, const T* beta, int64_t beta_k, const T* h, T* gl, T* gb,
                                      int64_t K, int64_t n, int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const T *gc = g + c * n, *lc = l + c * n, *hc = h + c * n;
      T* out = gl + c * n;
      const T b = beta[beta_k == 1 ? 0 : c % K];
      const T m = vec_max<isa>(lc, n);
      T s1 = 0, s2 = 0, ties = 0;
#pragma omp simd reduction(+ : s1, s2, ties)
      for (int64_t i = 0; i < n; ++i) {
        const T gh = gc[i] * hc[i];
        s1 += gh;
        s2 += gh * (lc[i] - m);
        ties += T(lc[i] == m);
      }
      gb[c] = s2;
      // Second pass from cache: the max's own gradient, shared evenly by tied maxima (as amax does).
      const T share = b * s1 / ties;
      // In blocks of 4 cache lines per stream, each block asking for the same span of the next channel.
      constexpr int64_t kBlock = 256 / sizeof(T);
      const bool prefetch = c + 1 < end;
      for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
        const int64_t i1 = std::min(n, i0 + kBlock);
        if (prefetch) {
          prefetch_channel(gc + n + i0, i1 - i0);
          prefetch_channel(lc + n + i0, i1 - i0);
          prefetch_channel(hc + n + i0, i1 - i0);
        }
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) out[i] = b * gc[i] * hc[i] - share * T(lc[i] == m);
      }
    }
}

// Row sums (H) and column sums (W) of one channel in one pass, accumulated in M. Column sums
// accumulate vertically (vector adds, no horizontal reduction); everything the decode and its
// gradient need follows from these marginals in O(H + W).
template <typename T, typename M>
LDEQ_INLINE void channel_marginals(const T* h, int64_t H, int64_t W, M* row_sum, M* col_sum,
                                   const T* next = nullptr) {
  for (int64_t c = 0; c < W; ++c) col_sum[c] = 0;
  for (int64_t r = 0; r < H; ++r) {
    const T* hr = h + r * W;
    if (next) prefetch_channel(next + r * W, W);  // the next channel, row by row
    M s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < W; ++c) {
      s += M(hr[c]);
      col_sum[c] += M(hr[c]);
    }
    row_sum[r] = s;
  }
}

// Scratch of the decode: marginals in T, and in double for a float channel whose sum overflows.
template <typename T>
struct DecodeScratch {
  std::vector<T> row_sum, col_sum;
  std::vector<double> row64, col64;
  DecodeScratch(int64_t H, int64_t W) : row_sum(H), col_sum(W), row64(H), col64(W) {}
};

// The marginals of one channel. Float channels sum in float (fast, vectorised); when the channel's
// total does not fit in float (finite values summing past FLT_MAX, e.g. heatmaps ~3e38), or is not
// finite, the marginals are redone in double, so the decode is that of the float64 reference.
// Returns true when the double marginals (sc.row64 / sc.col64) hold the result.
template <typename T>
LDEQ_INLINE bool decode_marginals(const T* h, int64_t H, int64_t W, DecodeScratch<T>& sc, const T* next) {
  channel_marginals(h, H, W, sc.row_sum.data(), sc.col_sum.data(), next);
  if constexpr (std::is_same_v<T, float>) {
    double tot = 0;
    for (int64_t r = 0; r < H; ++r) tot += sc.row_sum[r];
    if (!(tot <= double(std::numeric_limits<float>::max()))) {
      channel_marginals(h, H, W, sc.row64.data(), sc.col64.data());
      return true;
    }
  }
  return false;
}

// Decode from the marginals (M: their type) into coords[0..1] and *stdv. The variances are centred
// sums over the marginals (no E[c^2] - E[c]^2 cancellation). A total that is not finite in the
// accumulation type (double) gives NaN coords and std, as the reference.
template <typename T, typename M>
LDEQ_INLINE void decode_from_marginals(const M* row_sum, const M* col_sum, int64_t H, int64_t W, bool official,
                                       T* coords, T* stdv) {
  using acc_t = typename Acc<T>::type;
  acc_t tot = 0, mx = 0, my = 0;
  for (int64_t r = 0; r < H; ++r) {
    tot += row_sum[r];
    my += acc_t(row_sum[r]) * r;
  }
  for (int64_t c = 0; c < W; ++c) mx += acc_t(col_sum[c]) * c;
  const acc_t S = tot + kDecodeEps;
  if (!std::isfinite(S)) {
    coords[0] = coords[1] = *stdv = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  const acc_t x = mx / (S * W), y = my / (S * H);
  const acc_t mux = official ? x / W : x, muy = official ? y / H : y;
  acc_t vx = 0, vy = 0;
  for (int64_t c = 0; c < W; ++c) {
    const acc_t d = acc_t(c) / W - mux;
    vx += acc_t(col_sum[c]) * d * d;
  }
  for (int64_t r = 0; r < H; ++r) {
    const acc_t d = acc_t(r) / H - muy;
    vy += acc_t(row_sum[r]) * d * d;
  }
  coords[0] = T(x);
  coords[1] = T(y);
  *stdv = T(std::sqrt(0.5 * (vx + vy) / S));
}

// Decode one channel (h: H*W values) into coords[0..1] and *stdv.
template <typename T>
LDEQ_INLINE void decode_channel(const T* h, int64_t H, int64_t W, bool official, DecodeScratch<T>& sc, T* coords,
                                T* stdv, const T* next = nullptr) {
  if (decode_marginals(h, H, W, sc, next))
    decode_from_marginals(sc.row64.data(), sc.col64.data(), H, W, official, coords, stdv);
  else
    decode_from_marginals(sc.row_sum.data(), sc.col_sum.data(), H, W, official, coords, stdv);
}

template <Isa isa, typename T>
LDEQ_INLINE void decode_range_body(const T* hm, T* coords, T* stdv, int64_t H, int64_t W, bool official, int64_t begin,
                         int64_t end) {
  DecodeScratch<T> sc(H, W);
  for (int64_t ch = begin; ch < end; ++ch)
    decode_channel(hm + ch * H * W, H, W, official, sc, coords + 2 * ch, stdv + ch,
                   ch + 1 < end ? hm + (ch + 1) * H * W : nullptr);
}

// Fused forward: the channel's heatmap is decoded while it is still in cache.
template <Isa isa, typename T>
LDEQ_INLINE void softargmax_decode_range_body(const T* l, const T* beta, int64_t beta_k, T* h, T* coords, T* stdv, int64_t K,
                                    int64_t H, int64_t W, bool official, int64_t begin, int64_t end) {
  // h == nullptr: coordinates only; each channel's heatmap lives in a per-thread scratch buffer.
  DecodeScratch<T> sc(H, W);
  const int64_t n = H * W;
  std::vector<T> own(h ? 0 : n);
  for (int64_t ch = begin; ch < end; ++ch) {
    const T* x = l + ch * n;
    T* hc = h ? h + ch * n : own.data();
    exp_shift_vec<isa>(x, hc, n, beta[beta_k == 1 ? 0 : ch % K], vec_max<isa>(x, n), ch + 1 < end ? x + n : nullptr);
    decode_channel(hc, H, W, official, sc, coords + 2 * ch, stdv + ch);
  }
}

// The decode gradient of one channel as a separable field: dL/dh(r, c) = a[c] + rv[r], from its
// marginals (M: their type, see decode_marginals).
template <typename T, typename M>
LDEQ_INLINE void grad_field_from_marginals(const DecodeGrad<typename Acc<T>::type>& d, const M* row_sum,
                                           const M* col_sum, int64_t H, int64_t W, T* a, T* rv) {
  using acc_t = typename Acc<T>::type;
  acc_t tot = 0, q = 0;  // T = sum h and sum h * (A0 + R0), from the marginals
  for (int64_t c = 0; c < W; ++c) {
    const acc_t a0 = d.A0(acc_t(c));
    a[c] = T(a0);
    q += acc_t(col_sum[c]) * a0;
  }
  for (int64_t r = 0; r < H; ++r) {
    const acc_t r0 = d.R0(acc_t(r));
    rv[r] = T(r0);
    tot += row_sum[r];
    q += acc_t(row_sum[r]) * r0;
  }
  const acc_t S = tot + kDecodeEps, sum_p = tot / S;
  // G = sum gp p, with sum h cx = x S and sum h cy = y S.
  const acc_t G = q / S + sum_p * (d.lx * d.x + d.ly * d.y);
  const acc_t inv_s = 1 / S;
  const acc_t ax = sum_p * d.lx * d.inv_w * inv_s, ay = sum_p * d.ly * d.inv_h * inv_s;
  for (int64_t c = 0; c < W; ++c) a[c] = T((acc_t(a[c]) - G) * inv_s + ax * c);
  for (int64_t r = 0; r < H; ++r) rv[r] = T(acc_t(rv[r]) * inv_s + ay * r);
}

template <typename T>
LDEQ_INLINE void decode_grad_field(const T* h, const T* gcoord, const T* gstd, const T* coords, const T* stdv,
                                   int64_t H, int64_t W, bool official, T* a, T* rv, DecodeScratch<T>& sc,
                                   const T* next = nullptr) {
  using acc_t = typename Acc<T>::type;
  const DecodeGrad<acc_t> d(gcoord[0], gcoord[1], *gstd, coords[0], coords[1], *stdv, H, W, official);
  if (decode_marginals(h, H, W, sc, next))
    grad_field_from_marginals(d, sc.row64.data(), sc.col64.data(), H, W, a, rv);
  else
    grad_field_from_marginals(d, sc.row_sum.data(), sc.col_sum.data(), H, W, a, rv);
}

template <Isa isa, typename T>
LDEQ_INLINE void decode_backward_range_body(const T* gcoord, const T* gstd, const T* hm, const T* coords, const T* stdv, T* gh,
                                  int64_t H, int64_t W, bool official, int64_t begin, int64_t end) {
  std::vector<T> a(W), rv(H);
  DecodeScratch<T> sc(H, W);
  for (int64_t ch = begin; ch < end; ++ch) {
    decode_grad_field(hm + ch * H * W, gcoord + 2 * ch, gstd + ch, coords + 2 * ch, stdv + ch, H, W, official,
                      a.data(), rv.data(), sc,
                      ch + 1 < end ? hm + (ch + 1) * H * W : nullptr);
    for (int64_t r = 0; r < H; ++r) {
      T* o = gh + ch * H * W + r * W;
      const T rr = rv[r];
#pragma omp simd
      for (int64_t c = 0; c < W; ++c) o[c] = a[c] + rr;
    }
  }
}

// Fused backward: dL/dh = a[c] + rv[r] (+ grad_heatmaps when given) is never written to memory;
// it feeds the soft-argmax backward of the same channel directly.
template <Isa isa, typename T>
LDEQ_INLINE void softargmax_decode_backward_range_body(const T* gh_in, const T* gcoord, const T* gstd, const T* l,
                                             const T* beta, int64_t beta_k, const T* hm, const T* coords,
                                             const T* stdv, T* gl, T* gb, int64_t K, int64_t H, int64_t W,
                                             bool official, int64_t begin, int64_t end) {
  // hm == nullptr: the heatmaps were not stored; recompute each channel (same code as the forward,
  // so the same bits) into a per-thread scratch buffer while its logits are in cache.
  std::vector<T> a(W), rv(H), acc1(W), acc2(W), acct(W);
  DecodeScratch<T> sc(H, W);
  const int64_t n = H * W;
  std::vector<T> own(hm ? 0 : n);
  for (int64_t ch = begin; ch < end; ++ch) {
    const T *lc = l + ch * n, *gi = gh_in ? gh_in + ch * n : nullptr;
    T* out = gl + ch * n;
    const T b = beta[beta_k == 1 ? 0 : ch % K];
    const T m = vec_max<isa>(lc, n);
    const T* h = hm ? hm + ch * n : own.data();
    if (!hm) exp_shift_vec<isa>(lc, own.data(), n, b, m, ch + 1 < end ? lc + n : nullptr);
    decode_grad_field(h, gcoord + 2 * ch, gstd + ch, coords + 2 * ch, stdv + ch, H, W, official, a.data(),
                      rv.data(), sc);
    // Column accumulators again: vector adds per row, one horizontal sum per channel at the end.
    for (int64_t c = 0; c < W; ++c) acc1[c] = acc2[c] = acct[c] = 0;
    // Stored heatmaps (no exp pass to carry the prefetches): the next channel's logits and heatmaps
    // are requested row by row here.
    const bool prefetch = hm && ch + 1 < end;
    for (int64_t r = 0; r < H; ++r) {
      const T *hr = h + r * W, *lr = lc + r * W, rr = rv[r];
      if (prefetch) {
        prefetch_channel(lr + n, W);
        prefetch_channel(hr + n, W);
      }
      if (gi) {
        const T* gr = gi + r * W;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          const T ghv = (a[c] + rr + gr[c]) * hr[c];
          acc1[c] += ghv;
          acc2[c] += ghv * (lr[c] - m);
          acct[c] += T(lr[c] == m);
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) {
          const T ghv = (a[c] + rr) * hr[c];
          acc1[c] += ghv;
          acc2[c] += ghv * (lr[c] - m);
          acct[c] += T(lr[c] == m);
        }
      }
    }
    T s1 = 0, s2 = 0, ties = 0;
    for (int64_t c = 0; c < W; ++c) {
      s1 += acc1[c];
      s2 += acc2[c];
      ties += acct[c];
    }
    gb[ch] = s2;
    const T share = b * s1 / ties;
    for (int64_t r = 0; r < H; ++r) {
      const T *hr = h + r * W, *lr = lc + r * W, rr = rv[r];
      T* o = out + r * W;
      if (gi) {
        const T* gr = gi + r * W;
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) o[c] = b * (a[c] + rr + gr[c]) * hr[c] - share * T(lr[c] == m);
      } else {
#pragma omp simd
        for (int64_t c = 0; c < W; ++c) o[c] = b * (a[c] + rr) * hr[c] - share * T(lr[c] == m);
      }
    }
  }
}


// The run-time dispatched entry points (default / AVX2 / AVX-512, see common/cpu_dispatch.h).
LDEQ_CPU_KERNEL(softargmax_range, softargmax_range_body)
LDEQ_CPU_KERNEL(softargmax_backward_range, softargmax_backward_range_body)
LDEQ_CPU_KERNEL(decode_range, decode_range_body)
LDEQ_CPU_KERNEL(decode_backward_range, decode_backward_range_body)
LDEQ_CPU_KERNEL(softargmax_decode_range, softargmax_decode_range_body)
LDEQ_CPU_KERNEL(softargmax_decode_backward_range, softargmax_decode_backward_range_body)

at::Tensor softargmax_cpu(const at::Tensor& logits, const at::Tensor& beta) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  auto l = logits.contiguous();
  auto b = beta.contiguous();
  auto h = empty_output_like(l);
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_cpu", [&] {
    const scalar_t *lp = l.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
    scalar_t* hp = h.data_ptr<scalar_t>();
    const int64_t bk = b.numel();
    at::parallel_for(0, B * K, grain(n), [&](int64_t begin, int64_t end) {
      softargmax_range(lp, bp, bk, hp, K, n, begin, end);
    });
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor> softargmax_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                                           const at::Tensor& beta, const at::Tensor& heatmaps) {
  check_softargmax_backward(grad, logits, beta, heatmaps);
  auto g = grad.contiguous(), l = logits.contiguous(), b = beta.contiguous(), h = heatmaps.contiguous();
  const int64_t B = l.size(0), K = l.size(1), n = l.size(2) * l.size(3);
  auto gl = empty_output_like(l);
  auto gb = at::empty({B, K}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_backward_cpu", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *lp = l.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
    const scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t *glp = gl.data_ptr<scalar_t>(), *gbp = gb.data_ptr<scalar_t>();
    const int64_t bk = b.numel();
    at::parallel_for(0, B * K, grain(n), [&](int64_t begin, int64_t end) {
      softargmax_backward_range(gp, lp, bp, bk, hp, glp, gbp, K, n, begin, end);
    });
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
    const scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t *cp = coords.data_ptr<scalar_t>(), *sp = stdv.data_ptr<scalar_t>();
    at::parallel_for(0, B * K, grain(H * W), [&](int64_t begin, int64_t end) {
      decode_range(hp, cp, sp, H, W, official_std, begin, end);
    });
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
  auto gh = empty_output_like(h);
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "heatmap_decode_backward_cpu", [&] {
    const scalar_t *gcp = gc.data_ptr<scalar_t>(), *gsp = gs.data_ptr<scalar_t>(), *hp = h.data_ptr<scalar_t>();
    const scalar_t *cp = co.data_ptr<scalar_t>(), *sp = sd.data_ptr<scalar_t>();
    scalar_t* ghp = gh.data_ptr<scalar_t>();
    at::parallel_for(0, B * K, grain(H * W), [&](int64_t begin, int64_t end) {
      decode_backward_range(gcp, gsp, hp, cp, sp, ghp, H, W, official_std, begin, end);
    });
  });
  return gh;
}

// The fused forward, shared by heatmap_softargmax_decode (store_heatmaps) and
// heatmap_softargmax_coords (each channel's heatmap lives in per-thread scratch; h is undefined).
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_forward_cpu(const at::Tensor& logits, const at::Tensor& beta,
                                                                  bool official_std, bool store_heatmaps) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  auto l = logits.contiguous();
  auto b = beta.contiguous();
  const int64_t B = l.size(0), K = l.size(1), H = l.size(2), W = l.size(3);
  const at::Tensor h = store_heatmaps ? empty_output_like(l) : at::Tensor();
  auto coords = at::empty({B, K, 2}, l.options());
  auto stdv = at::empty({B, K}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_decode_cpu", [&] {
    const scalar_t *lp = l.data_ptr<scalar_t>(), *bp = b.data_ptr<scalar_t>();
    scalar_t* hp = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    scalar_t *cp = coords.data_ptr<scalar_t>(), *sp = stdv.data_ptr<scalar_t>();
    const int64_t bk = b.numel();
    at::parallel_for(0, B * K, grain(H * W), [&](int64_t begin, int64_t end) {
      softargmax_decode_range(lp, bp, bk, hp, cp, sp, K, H, W, official_std, begin, end);
    });
  });
  return {h, coords, stdv};
}

// The fused backward, on checked arguments, shared by both ops: grad_heatmaps undefined when absent,
// heatmaps undefined for the coords op (recomputed per channel from logits).
std::tuple<at::Tensor, at::Tensor> fused_backward_cpu(const at::Tensor& grad_heatmaps, const at::Tensor& grad_coords,
                                                      const at::Tensor& grad_std, const at::Tensor& logits,
                                                      const at::Tensor& beta, const at::Tensor& heatmaps,
                                                      const at::Tensor& coords, const at::Tensor& stdv,
                                                      bool official_std) {
  auto l = logits.contiguous(), b = beta.contiguous();
  const at::Tensor h = heatmaps.defined() ? heatmaps.contiguous() : at::Tensor();
  auto gc = grad_coords.contiguous(), gs = grad_std.contiguous(), co = coords.contiguous(), sd = stdv.contiguous();
  const int64_t B = l.size(0), K = l.size(1), H = l.size(2), W = l.size(3);
  auto gl = empty_output_like(l);
  auto gb = at::empty({B, K}, l.options());
  AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "heatmap_softargmax_decode_backward_cpu", [&] {
    const scalar_t* gip = grad_heatmaps.defined() ? grad_heatmaps.data_ptr<scalar_t>() : nullptr;
    const scalar_t* hp = h.defined() ? h.data_ptr<scalar_t>() : nullptr;
    const scalar_t *gcp = gc.data_ptr<scalar_t>(), *gsp = gs.data_ptr<scalar_t>(), *lp = l.data_ptr<scalar_t>();
    const scalar_t *bp = b.data_ptr<scalar_t>(), *cp = co.data_ptr<scalar_t>(), *sp = sd.data_ptr<scalar_t>();
    scalar_t *glp = gl.data_ptr<scalar_t>(), *gbp = gb.data_ptr<scalar_t>();
    const int64_t bk = b.numel();
    at::parallel_for(0, B * K, grain(H * W), [&](int64_t begin, int64_t end) {
      softargmax_decode_backward_range(gip, gcp, gsp, lp, bp, bk, hp, cp, sp, glp, gbp, K, H, W,
                                             official_std, begin, end);
    });
  });
  return {gl, gb};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> softargmax_decode_cpu(const at::Tensor& logits, const at::Tensor& beta,
                                                                      bool official_std) {
  return fused_forward_cpu(logits, beta, official_std, /*store_heatmaps=*/true);
}

std::tuple<at::Tensor, at::Tensor> softargmax_decode_backward_cpu(
    const std::optional<at::Tensor>& grad_heatmaps, const at::Tensor& grad_coords, const at::Tensor& grad_std,
    const at::Tensor& logits, const at::Tensor& beta, const at::Tensor& heatmaps, const at::Tensor& coords,
    const at::Tensor& stdv, bool official_std) {
  const at::Tensor gin = check_fused_backward(grad_heatmaps, grad_coords, grad_std, logits, beta, heatmaps, coords, stdv);
  return fused_backward_cpu(gin, grad_coords, grad_std, logits, beta, heatmaps, coords, stdv, official_std);
}

std::tuple<at::Tensor, at::Tensor> softargmax_coords_cpu(const at::Tensor& logits, const at::Tensor& beta,
                                                          bool official_std) {
  auto [h, coords, stdv] = fused_forward_cpu(logits, beta, official_std, /*store_heatmaps=*/false);
  return {coords, stdv};
}

std::tuple<at::Tensor, at::Tensor> softargmax_coords_backward_cpu(const at::Tensor& grad_coords,
                                                                  const at::Tensor& grad_std, const at::Tensor& logits,
                                                                  const at::Tensor& beta, const at::Tensor& coords,
                                                                  const at::Tensor& stdv, bool official_std) {
  check_maps(logits, "logits");
  check_beta(logits, beta);
  check_decode_grads(logits, grad_coords, grad_std, coords, stdv);
  return fused_backward_cpu(at::Tensor(), grad_coords, grad_std, logits, beta, at::Tensor(), coords, stdv,
                            official_std);
}

}  // namespace

TORCH_LIBRARY_IMPL(ldeq, CPU, m) {
  m.impl("heatmap_softargmax_coords", &softargmax_coords_cpu);
  m.impl("heatmap_softargmax_coords_backward", &softargmax_coords_backward_cpu);
  m.impl("heatmap_softargmax_decode", &softargmax_decode_cpu);
  m.impl("heatmap_softargmax_decode_backward", &softargmax_decode_backward_cpu);
  m.impl("heatmap_softargmax", &softargmax_cpu);
  m.impl("heatmap_softargmax_backward", &softargmax_backward_cpu);
  m.impl("heatmap_decode", &decode_cpu);
  m.impl("heatmap_decode_backward", &decode_backward_cpu);
}

}  // namespace heatmap
}  // namespace ldeq
