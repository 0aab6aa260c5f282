// Helpers shared by the .cu files: element conversions, block reductions (warp shuffles, then
// one value per warp through shared memory) and the kernel launch.
//
// The kernels use only the CUDA built-ins that cuda/tests/cuda_host_emulation.h provides
// (threadIdx/blockIdx/blockDim/gridDim, __shared__, __syncthreads, __shfl_xor_sync, atomicMin,
// 16-byte vector loads, the fp16/bf16 conversions), so the ctest build runs these same sources on
// the host; a new built-in needs an emulation there too.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels.h"
#include "vreason_math.cuh"

// A launch written as a call, `VR_LAUNCH(kernel, grid, block, stream)(args...)`, which the host
// emulation defines as its own launch (it includes its definition before this header).
#ifndef VR_LAUNCH
#define VR_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

namespace vreason::gpu {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_float<double>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float shfl_xor(float v, int offset) { return __shfl_xor_sync(kFullMask, v, offset); }

__device__ __forceinline__ math::EntropyState<float> shfl_xor(math::EntropyState<float> v, int offset) {
  return {shfl_xor(v.m, offset), shfl_xor(v.s, offset), shfl_xor(v.t, offset)};
}

struct Float3 {
  float a, b, c;
};

__device__ __forceinline__ Float3 shfl_xor(Float3 v, int offset) {
  return {shfl_xor(v.a, offset), shfl_xor(v.b, offset), shfl_xor(v.c, offset)};
}

// Block-wide combine of one value per thread with an associative `op`; every thread gets the
// result. `scratch` holds one value per warp (blockDim.x <= 1024).
template <typename V, typename Op>
__device__ V block_reduce(V value, Op op, V* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = (blockDim.x + kWarp - 1) / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value = op(value, shfl_xor(value, offset));
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = scratch[0];
  for (int w = 1; w < warps; ++w) value = op(value, scratch[w]);
  return value;
}

}  // namespace vreason::gpu
