// CUDA value_update kernels: one block per row of head_dim values; the row sums (‖v0‖², ‖u‖²,
// uᵀg) go through warp shuffles and shared memory, the per-row coefficients and per-element
// results come from vreason_math.cuh (the same arithmetic as the CPU path).
#include <climits>
#include <cstdint>

#include "cuda_common.cuh"

namespace vreason::gpu {
namespace {

constexpr int kMaxThreads = 1024;

struct Add3 {
  __device__ Float3 operator()(Float3 x, Float3 y) const { return {x.a + y.a, x.b + y.b, x.c + y.c}; }
};

// Threads per block: head_dim rounded up to whole warps (one element per thread for the usual
// 64/128), at most kMaxThreads.
unsigned threads_for(int64_t dim) {
  const int64_t warps = (dim + kWarp - 1) / kWarp;
  return static_cast<unsigned>(warps * kWarp < kMaxThreads ? warps * kWarp : kMaxThreads);
}

__device__ math::ValueUpdateRow<float> row_coefficients(const float* v0, const float* delta, int64_t dim,
                                                        Float3* scratch) {
  Float3 sums{0.f, 0.f, 0.f};
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float u = v0[i] + delta[i];
    sums.a += v0[i] * v0[i];
    sums.b += u * u;
  }
  sums = block_reduce(sums, Add3{}, scratch);
  return math::value_update_row(sums.a, sums.b);
}

__global__ void __launch_bounds__(kMaxThreads)
    value_update_forward_kernel(const float* v0, const float* delta, int64_t dim, float* out) {
  __shared__ Float3 scratch[kMaxThreads / kWarp];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * dim;
  const auto row = row_coefficients(v0 + offset, delta + offset, dim, scratch);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    out[offset + i] = math::value_update_elem(row, v0[offset + i], delta[offset + i]);
}

__global__ void __launch_bounds__(kMaxThreads) value_update_backward_kernel(const float* grad, const float* v0,
                                                                            const float* delta, int64_t dim,
                                                                            float* grad_delta) {
  __shared__ Float3 scratch[kMaxThreads / kWarp];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * dim;
  const float *v = v0 + offset, *d = delta + offset, *g = grad + offset;
  Float3 sums{0.f, 0.f, 0.f};
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float u = v[i] + d[i];
    sums.a += v[i] * v[i];
    sums.b += u * u;
    sums.c += u * g[i];
  }
  sums = block_reduce(sums, Add3{}, scratch);
  const auto row = math::value_update_grad_row(sums.a, sums.b, sums.c);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    grad_delta[offset + i] = math::value_update_grad_elem(row, g[i], v[i], d[i]);
}

constexpr unsigned long long kNone = ~0ull;
constexpr int kCheckThreads = 256;

// One block per row p of positions checks that row's written slots: owner[p·seq + q] = the first
// j that writes position q (atomicMin over j), then j is bad if its position is out of range or
// owned by an earlier j (a repeat). *bad is the first bad flat index p·num + j, kNone when there
// is none (set by the launcher before the check).
__global__ void __launch_bounds__(kCheckThreads)
    check_positions_kernel(Positions positions, int64_t seq, unsigned long long* owner, unsigned long long* bad) {
  const int64_t p = blockIdx.x;
  const int64_t* row = positions.data + p * positions.row_stride;
  const int64_t given = positions.counts != nullptr ? positions.counts[p] : positions.num;
  const int64_t num = given < 0 ? 0 : (given > positions.num ? positions.num : given);
  unsigned long long* own = owner + p * seq;
  for (int64_t q = threadIdx.x; q < seq; q += blockDim.x) own[q] = kNone;
  __syncthreads();
  for (int64_t j = threadIdx.x; j < num; j += blockDim.x) {
    const int64_t q = row[j];
    if (q >= 0 && q < seq) atomicMin(own + q, static_cast<unsigned long long>(j));
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < num; j += blockDim.x) {
    const int64_t q = row[j];
    if (q < 0 || q >= seq || own[q] != static_cast<unsigned long long>(j)) {
      atomicMin(bad, static_cast<unsigned long long>(p * positions.num + j));
    }
  }
}

__global__ void reset_flag_kernel(unsigned long long* bad) { *bad = kNone; }

template <typename T>
__global__ void __launch_bounds__(kMaxThreads)
    value_update_inplace_kernel(CacheView cache, Positions positions, const float* v0, const float* delta,
                                const unsigned long long* bad) {
  __shared__ Float3 scratch[kMaxThreads / kWarp];
  if (bad != nullptr && *bad != kNone) return;  // uniform over the grid: all or nothing
  const int64_t num = positions.num;
  const int64_t r = blockIdx.x;  // row of v0/delta: (b, h, j)
  const int64_t j = r % num, h = (r / num) % cache.heads, b = r / (num * cache.heads);
  if (positions.counts != nullptr && j >= positions.counts[b]) return;  // uniform over the block
  const int64_t pos = positions.data[(positions.row_stride != 0 ? b : 0) * positions.row_stride + j];
  const int64_t offset = r * cache.dim;
  const auto row = row_coefficients(v0 + offset, delta + offset, cache.dim, scratch);
  T* dst = static_cast<T*>(cache.data) + b * cache.stride_b + h * cache.stride_h + pos * cache.stride_s;
  for (int64_t i = threadIdx.x; i < cache.dim; i += blockDim.x)
    dst[i * cache.stride_d] = from_float<T>(math::value_update_elem(row, v0[offset + i], delta[offset + i]));
}

template <typename T>
void launch_inplace(dim3 grid, dim3 block, const CacheView& cache, const Positions& positions, const float* v0,
                    const float* delta, const unsigned long long* bad, cudaStream_t stream) {
  VR_LAUNCH(value_update_inplace_kernel<T>, grid, block, stream)(cache, positions, v0, delta, bad);
}

}  // namespace

cudaError_t value_update_forward(const float* v0, const float* delta, int64_t rows, int64_t dim, float* out,
                                 cudaStream_t stream) {
  if (rows > INT_MAX) return cudaErrorInvalidValue;
  VR_LAUNCH(value_update_forward_kernel, static_cast<unsigned>(rows), threads_for(dim), stream)(v0, delta, dim, out);
  return cudaGetLastError();
}

cudaError_t value_update_backward(const float* grad, const float* v0, const float* delta, int64_t rows, int64_t dim,
                                  float* grad_delta, cudaStream_t stream) {
  if (rows > INT_MAX) return cudaErrorInvalidValue;
  VR_LAUNCH(value_update_backward_kernel, static_cast<unsigned>(rows), threads_for(dim), stream)(grad, v0, delta, dim,
                                                                                               grad_delta);
  return cudaGetLastError();
}

cudaError_t value_update_inplace(const CacheView& cache, const Positions& positions, const float* v0,
                                 const float* delta, unsigned long long* scratch, cudaStream_t stream) {
  const int64_t rows = cache.batch * cache.heads * positions.num;
  if (rows > INT_MAX || positions.position_rows > INT_MAX) return cudaErrorInvalidValue;
  unsigned long long* bad = nullptr;
  if (scratch != nullptr) {
    bad = scratch + positions.position_rows * cache.seq;
    VR_LAUNCH(reset_flag_kernel, 1, 1, stream)(bad);
    if (positions.position_rows > 0)
      VR_LAUNCH(check_positions_kernel, static_cast<unsigned>(positions.position_rows), kCheckThreads, stream)(
          positions, cache.seq, scratch, bad);
  }
  if (rows == 0) return cudaGetLastError();
  const dim3 grid(static_cast<unsigned>(rows)), block(threads_for(cache.dim));
  switch (cache.dtype) {
    case DType::Float32: launch_inplace<float>(grid, block, cache, positions, v0, delta, bad, stream); break;
    case DType::Float16: launch_inplace<__half>(grid, block, cache, positions, v0, delta, bad, stream); break;
    case DType::BFloat16: launch_inplace<__nv_bfloat16>(grid, block, cache, positions, v0, delta, bad, stream); break;
    case DType::Float64: launch_inplace<double>(grid, block, cache, positions, v0, delta, bad, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace vreason::gpu
