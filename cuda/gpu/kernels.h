// Launchers of the CUDA kernels (entropy.cu, value_update.cu): plain C++ on raw pointers and a
// cudaStream_t, so the .cu files compile without torch's headers (and, in the ctest build, on the
// host through cuda/tests/cuda_host_emulation.h). They choose each launch's configuration. Each returns the launch's
// cudaError_t (cudaSuccess when nothing went wrong).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace vreason::gpu {

enum class DType : int { Float32, Float16, BFloat16, Float64 };

// H per row of `rows` contiguous rows of n logits (float32 out). A row without entropy (all
// -inf, NaN, +inf) gets NaN and, when bad_row is not null, atomicMin(bad_row, row).
cudaError_t entropy_forward(DType dtype, const void* logits, int64_t rows, int64_t n, float* out,
                            unsigned long long* bad_row, cudaStream_t stream);

// grad_logits (logits' dtype) = −p (log p + H) · grad per row. A row without entropy gets NaN
// gradients and, when bad_row is not null, atomicMin(bad_row, row), as in the forward.
cudaError_t entropy_backward(DType dtype, const float* grad, const void* logits, const float* h, int64_t rows,
                             int64_t n, void* grad_logits, unsigned long long* bad_row, cudaStream_t stream);

// Rows of `dim` float32 values, contiguous.
cudaError_t value_update_forward(const float* v0, const float* delta, int64_t rows, int64_t dim, float* out,
                                 cudaStream_t stream);
cudaError_t value_update_backward(const float* grad, const float* v0, const float* delta, int64_t rows, int64_t dim,
                                  float* grad_delta, cudaStream_t stream);

// A [batch, heads, seq, dim] cache with arbitrary strides (in elements).
struct CacheView {
  void* data;
  DType dtype;
  int64_t batch, heads, seq, dim;
  int64_t stride_b, stride_h, stride_s, stride_d;
};

// Which cache rows value_update_inplace writes: positions[p · row_stride + j] for j < num, with
// p = b for per-row positions (row_stride = num; `position_rows` = batch) or p = 0 for one set
// shared by every batch row (row_stride = 0; position_rows = 1). counts (device, may be null):
// row b writes only its slots j < counts[b] (counts[b] in [0, num]).
struct Positions {
  const int64_t* data;
  int64_t position_rows, num, row_stride;
  const int64_t* counts;
};

// cache[b, h, positions(b, j), :] = value_update(v0, delta)[b, h, j, :] (v0/delta contiguous
// [batch, heads, num, dim] float32). With `scratch` (position_rows · cache.seq + 1 entries) the
// update is all or nothing: a first kernel checks every written position of every row (in range,
// not a repeat of an earlier one of the same row), the last entry receives the first bad flat
// index p · num + j, or all bits set when there is none, and the update kernel writes nothing
// when it found one (the check runs also when batch or heads is 0). A null `scratch` skips the
// check (positions already checked by an earlier call).
cudaError_t value_update_inplace(const CacheView& cache, const Positions& positions, const float* v0,
                                 const float* delta, unsigned long long* scratch, cudaStream_t stream);

}  // namespace vreason::gpu
