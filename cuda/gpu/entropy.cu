// CUDA entropy kernels: one block per row, each thread keeps an online (max, Σe, Σe·x) state
// over a strided slice of the row (vreason_math.cuh, the same arithmetic as the CPU path),
// then warp shuffles and shared memory merge the states.
//
// One block per row stays (**ours**): a decode step has one row, so all SMs but one idle, but
// one 152k-logit row is ~5-10 µs on one SM against ~20 ms per token of a 7B model's forward,
// well under 0.1% of the step. Revisit (split a row over blocks and merge their states, as the
// CPU path splits it over threads) when the per-token budget shrinks: a decode loop captured in
// a CUDA graph, or a much smaller model.
#include <climits>
#include <cstdint>

#include "cuda_common.cuh"

namespace vreason::gpu {
namespace {

constexpr int kEntropyThreads = 512;

struct MergeEntropy {
  __device__ math::EntropyState<float> operator()(math::EntropyState<float> a, math::EntropyState<float> b) const {
    return math::entropy_merge(a, b);
  }
};

// The row's state, identical in every thread of the block. Rows whose start is 16-byte aligned
// (n a multiple of 16/sizeof(T) with an aligned base) are read 16 bytes per load.
template <typename T>
__device__ math::EntropyState<float> row_state(const T* z, int64_t n, math::EntropyState<float>* scratch) {
  constexpr int kVec = 16 / sizeof(T);
  auto st = math::entropy_init<float>();
  if (n % kVec == 0 && reinterpret_cast<uintptr_t>(z) % 16 == 0) {
    const uint4* zv = reinterpret_cast<const uint4*>(z);
    for (int64_t i = threadIdx.x; i < n / kVec; i += blockDim.x) {
      const uint4 raw = zv[i];
      const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) math::entropy_push(st, to_float(vals[k]));
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) math::entropy_push(st, to_float(z[i]));
  }
  return block_reduce(st, MergeEntropy{}, scratch);
}

template <typename T>
__global__ void __launch_bounds__(kEntropyThreads)
    entropy_forward_kernel(const T* logits, int64_t n, float* out, unsigned long long* bad_row) {
  __shared__ math::EntropyState<float> scratch[kEntropyThreads / kWarp];
  const int64_t row = blockIdx.x;
  const auto st = row_state(logits + row * n, n, scratch);
  if (threadIdx.x != 0) return;
  if (math::entropy_row_ok(st)) {
    out[row] = math::entropy_finish(st);
  } else {
    out[row] = __int_as_float(0x7fc00000);  // NaN: the documented result without VREASON_CUDA_CHECKS
    if (bad_row != nullptr) atomicMin(bad_row, static_cast<unsigned long long>(row));
  }
}

template <typename T>
__global__ void __launch_bounds__(kEntropyThreads)
    entropy_backward_kernel(const float* grad, const T* logits, const float* h, int64_t n, T* grad_logits,
                            unsigned long long* bad_row) {
  __shared__ math::EntropyState<float> scratch[kEntropyThreads / kWarp];
  const int64_t row = blockIdx.x;
  const T* z = logits + row * n;
  const auto st = row_state(z, n, scratch);
  if (threadIdx.x == 0 && bad_row != nullptr && !math::entropy_row_ok(st)) {
    atomicMin(bad_row, static_cast<unsigned long long>(row));
  }
  const auto consts = math::entropy_grad_row(st, h[row], grad[row]);
  T* out = grad_logits + row * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) out[i] = from_float<T>(math::entropy_grad_elem(consts, to_float(z[i])));
}

template <typename T>
cudaError_t launch_forward(const void* logits, int64_t rows, int64_t n, float* out, unsigned long long* bad_row,
                           cudaStream_t stream) {
  VR_LAUNCH(entropy_forward_kernel<T>, static_cast<unsigned>(rows), kEntropyThreads, stream)(
      static_cast<const T*>(logits), n, out, bad_row);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_backward(const float* grad, const void* logits, const float* h, int64_t rows, int64_t n,
                            void* grad_logits, unsigned long long* bad_row, cudaStream_t stream) {
  VR_LAUNCH(entropy_backward_kernel<T>, static_cast<unsigned>(rows), kEntropyThreads, stream)(
      grad, static_cast<const T*>(logits), h, n, static_cast<T*>(grad_logits), bad_row);
  return cudaGetLastError();
}

}  // namespace

cudaError_t entropy_forward(DType dtype, const void* logits, int64_t rows, int64_t n, float* out,
                            unsigned long long* bad_row, cudaStream_t stream) {
  if (rows > INT_MAX) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::Float32: return launch_forward<float>(logits, rows, n, out, bad_row, stream);
    case DType::Float16: return launch_forward<__half>(logits, rows, n, out, bad_row, stream);
    case DType::BFloat16: return launch_forward<__nv_bfloat16>(logits, rows, n, out, bad_row, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t entropy_backward(DType dtype, const float* grad, const void* logits, const float* h, int64_t rows,
                             int64_t n, void* grad_logits, unsigned long long* bad_row, cudaStream_t stream) {
  if (rows > INT_MAX) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::Float32: return launch_backward<float>(grad, logits, h, rows, n, grad_logits, bad_row, stream);
    case DType::Float16: return launch_backward<__half>(grad, logits, h, rows, n, grad_logits, bad_row, stream);
    case DType::BFloat16:
      return launch_backward<__nv_bfloat16>(grad, logits, h, rows, n, grad_logits, bad_row, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace vreason::gpu
