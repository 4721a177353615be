// Launch helpers shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

#include "../common.h"

namespace ear {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535LL * 32));
}

// Grid-stride loop over [0, n).
#define EAR_CUDA_KERNEL_LOOP(i, n)                                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n);                \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// NaN-sticky warp max (see nan_max): a NaN anywhere in the warp reaches lane 0.
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = nan_max(v, __shfl_down_sync(0xffffffffu, v, off));
  return v;
}

// Float atomic max (address initialised to -inf) that is right for negative values, -0.0
// and NaN. Non-negative floats (sign bit clear) order like signed ints, negative ones
// (sign bit set, -0.0 included) in reverse like unsigned ints: branch on the sign bit,
// not on `v >= 0`, which is true for -0.0 and would send it down the signed path as
// INT_MIN, where it never wins. NaN is stored as 0x7fffffff, the largest signed int, so
// it beats every float in atomicMax and no later atomicMin (sign bit set, larger as
// unsigned) can replace it: a NaN anywhere makes the score NaN, as in the reference.
__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
  if (v != v) {
    atomicMax(reinterpret_cast<int*>(addr), 0x7fffffff);
  } else if (!signbit(v)) {
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  }
}

}  // namespace ear
