// Block-wide reductions whose result every thread of the block receives (one block per channel).
#pragma once

#include <cub/block/block_reduce.cuh>

namespace ldeq {

constexpr int kBlockThreads = 256;

// NaN wins, as in torch.amax and the CPU kernels: a NaN anywhere in a channel makes its max NaN.
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const { return (a > b || a != a) ? a : b; }
};

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const { return a + b; }
};

template <typename T, typename Op>
__device__ __forceinline__ T block_all_reduce(T v, Op op) {
  using Reduce = cub::BlockReduce<T, kBlockThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ T result;
  T r = Reduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) result = r;
  __syncthreads();
  r = result;
  __syncthreads();  // tmp and result may be reused by the next call
  return r;
}

template <typename T>
__device__ __forceinline__ T block_all_sum(T v) { return block_all_reduce(v, SumOp()); }

template <typename T>
__device__ __forceinline__ T block_all_max(T v) { return block_all_reduce(v, MaxOp()); }

}  // namespace ldeq
