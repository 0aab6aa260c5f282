// Test-only: the CUDA built-ins the kernels in cuda/gpu use, over the scheduler in
// cuda_host_emulation.h. Seen only by the kernel sources (through the cuda_runtime.h,
// cuda_fp16.h and cuda_bf16.h shims beside this file), never by the test driver or torch.
#pragma once

#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>

#include "cuda_host_emulation.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One instance per kernel (and template instance), shared by the threads of the block that is
// running: blocks run one after another, so that is per-block shared memory.
#define __shared__ static

#define VR_LAUNCH(kernel, grid, block, stream) (::vr_emu::Launch{#kernel, dim3(grid), dim3(block)}.with(kernel))

namespace vr_emu {
inline const uint3& thread_idx() { return emu().current->tid; }
inline const uint3& block_idx() { return emu().block_idx; }
inline uint3 block_dim() { return {emu().block_dim.x, emu().block_dim.y, emu().block_dim.z}; }
inline uint3 grid_dim() { return {emu().grid_dim.x, emu().grid_dim.y, emu().grid_dim.z}; }
}  // namespace vr_emu

#define threadIdx (::vr_emu::thread_idx())
#define blockIdx (::vr_emu::block_idx())
#define blockDim (::vr_emu::block_dim())
#define gridDim (::vr_emu::grid_dim())

inline void __syncthreads() { vr_emu::sync_block(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = vr_emu::exchange(bits, mask, lane_mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  std::atomic_ref<unsigned long long> a(*address);
  unsigned long long old = a.load();
  while (value < old && !a.compare_exchange_weak(old, value)) {
  }
  return old;
}

inline float __int_as_float(int bits) { return std::bit_cast<float>(bits); }

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

// Storage types with CUDA's conversions (round to nearest even).
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.bits)); }
inline __half __float2half_rn(float x) { return {std::bit_cast<uint16_t>(static_cast<_Float16>(x))}; }
inline float __bfloat162float(__nv_bfloat16 h) { return std::bit_cast<float>(static_cast<uint32_t>(h.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) {
  if (std::isnan(x)) return {0x7fc0};
  uint32_t bits = std::bit_cast<uint32_t>(x);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return {static_cast<uint16_t>(bits >> 16)};
}
