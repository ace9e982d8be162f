// Device helpers shared by the solver CUDA kernels.
//
// Reductions are deterministic: each (sample, block) writes its block sums to its own slot of a
// partials buffer (B, nblk, nout), and reduce_partials() adds them in block order. No floating-point
// atomics, so results do not depend on block scheduling (torch.use_deterministic_algorithms holds).
// The (sample, block) pairs are flattened into gridDim.x and walked with a grid-stride loop, so the
// batch size is not limited by gridDim.y (65535).
#pragma once
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace ldeq {

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = 2147483647;  // gridDim.x limit (compute capability >= 3.0)

// Sum of v over the block; the result is valid in thread 0. `sh` holds 32 doubles.
__device__ inline double block_sum(double v, double* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  v = (threadIdx.x < (blockDim.x >> 5)) ? sh[lane] : 0.0;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// Blocks per sample for the grid-stride reductions: enough to fill the GPU, few enough that the
// partials stay small.
inline int64_t reduction_blocks(int64_t d, int64_t B) {
  int64_t want = (d + kThreads * 8 - 1) / (kThreads * 8);
  int64_t cap = std::max<int64_t>(1, 1024 / std::max<int64_t>(B, 1));
  return std::max<int64_t>(1, std::min(want, cap));
}

// Blocks per sample for the elementwise passes (one element per thread per step).
inline int64_t elementwise_blocks(int64_t d) { return std::max<int64_t>(1, std::min<int64_t>((d + kThreads - 1) / kThreads, 65535)); }

// gridDim.x for `tasks` flattened (sample, block) tasks; kernels loop t = blockIdx.x; t < tasks; t += gridDim.x.
inline unsigned grid_for(int64_t tasks) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(tasks, kMaxGridX))); }

// out[b, k] = sum over blk (in order) of partial[b, blk, k] for active samples, 0 for inactive ones.
static __global__ void reduce_partials_kernel(const double* __restrict__ partial, const bool* __restrict__ active,
                                              int64_t B, int64_t nblk, int64_t nout, double* __restrict__ out) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < B * nout; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / nout, k = i % nout;
    double s = 0.0;
    if (active[b])
      for (int64_t blk = 0; blk < nblk; ++blk) s += partial[(b * nblk + blk) * nout + k];
    out[i] = s;
  }
}

static inline void reduce_partials(const double* partial, const bool* active, int64_t B, int64_t nblk, int64_t nout,
                            double* out, cudaStream_t stream) {
  const int64_t n = B * nout;
  if (n == 0) return;
  reduce_partials_kernel<<<grid_for((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(partial, active, B, nblk,
                                                                                          nout, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ldeq
