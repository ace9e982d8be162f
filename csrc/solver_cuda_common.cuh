// Device helpers shared by the solver CUDA kernels.
#pragma once
#include <cuda_runtime.h>

namespace ldeq {

constexpr int kThreads = 256;

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
// per-block atomics stay negligible.
inline int reduction_blocks(int64_t d, int64_t B) {
  int64_t want = (d + kThreads * 8 - 1) / (kThreads * 8);
  int64_t cap = std::max<int64_t>(1, 1024 / std::max<int64_t>(B, 1));
  return (int)std::max<int64_t>(1, std::min(want, cap));
}

}  // namespace ldeq
