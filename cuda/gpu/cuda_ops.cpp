// The CUDA backend's host side: checks, then raw pointers and the current stream handed to the
// launchers in entropy.cu / value_update.cu, and the CUDA dispatch-key registrations. Compiled
// only into a build with CUDA kernels (VREASON_WITH_CUDA).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

// Only c10's CUDA headers: ATen/cuda/* pulls in cuBLAS headers the toolkit may not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "gpu/kernels.h"
#include "ops.h"

namespace vreason {
namespace {

gpu::DType gpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return gpu::DType::Float32;
    case at::kHalf: return gpu::DType::Float16;
    case at::kBFloat16: return gpu::DType::BFloat16;
    case at::kDouble: return gpu::DType::Float64;
    default: TORCH_CHECK(false, "vreason: no CUDA kernel for dtype ", t);
  }
}

// A device→host sync per call would stall the decode loop, so on CUDA the kernels report bad
// rows / positions through a device flag that is read only when VREASON_CUDA_CHECKS=1. Without
// it a bad entropy row yields NaN and bad positions make value_update_ write nothing.
bool cuda_checks_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("VREASON_CUDA_CHECKS");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }();
  return on;
}

// Holds the first bad index (atomicMin); all bits set (-1 as int64) means none.
at::Tensor new_error_flag(const at::Tensor& like) { return at::full({1}, -1, like.options().dtype(at::kLong)); }

unsigned long long* flag_ptr(at::Tensor& flag) {
  return flag.defined() ? reinterpret_cast<unsigned long long*>(flag.mutable_data_ptr<int64_t>()) : nullptr;
}

void raise_bad_row(const char* op, const at::Tensor& flag, const at::Tensor& logits) {
  if (!flag.defined()) return;
  const int64_t bad = flag.item<int64_t>();
  if (bad != -1) fail_bad_entropy_row(op, bad, logits);
}

at::Tensor entropy_cuda(const at::Tensor& logits) {
  check_entropy_logits(logits, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous();
  const int64_t n = z.size(-1);
  const int64_t rows = z.numel() / n;
  at::Tensor out = at::empty(z.sizes().slice(0, z.dim() - 1), z.options().dtype(at::kFloat));
  if (rows == 0) return out;
  at::Tensor flag = cuda_checks_enabled() ? new_error_flag(z) : at::Tensor();
  C10_CUDA_CHECK(gpu::entropy_forward(gpu_dtype(z.scalar_type()), z.const_data_ptr(), rows, n,
                                      out.mutable_data_ptr<float>(), flag_ptr(flag),
                                      c10::cuda::getCurrentCUDAStream()));
  raise_bad_row("entropy", flag, logits);
  return out;
}

at::Tensor entropy_backward_cuda(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h) {
  check_entropy_backward(grad, logits, h, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous();
  const int64_t n = z.size(-1);
  const int64_t rows = z.numel() / n;
  at::Tensor grad_logits = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (rows == 0) return grad_logits;
  const at::Tensor g = grad.contiguous().to(at::kFloat), hc = h.contiguous();
  at::Tensor flag = cuda_checks_enabled() ? new_error_flag(z) : at::Tensor();
  C10_CUDA_CHECK(gpu::entropy_backward(gpu_dtype(z.scalar_type()), g.const_data_ptr<float>(), z.const_data_ptr(),
                                       hc.const_data_ptr<float>(), rows, n, grad_logits.mutable_data_ptr(),
                                       flag_ptr(flag), c10::cuda::getCurrentCUDAStream()));
  raise_bad_row("entropy_backward", flag, logits);
  return grad_logits;
}

at::Tensor value_update_cuda(const at::Tensor& v0, const at::Tensor& delta) {
  check_value_update("value_update", v0, delta, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(v0.device());
  const at::Tensor a = v0.contiguous(), d = delta.contiguous();
  at::Tensor out = at::empty_like(a, at::MemoryFormat::Contiguous);
  const int64_t dim = a.size(-1);
  const int64_t rows = a.numel() / dim;
  if (rows == 0) return out;
  C10_CUDA_CHECK(gpu::value_update_forward(a.const_data_ptr<float>(), d.const_data_ptr<float>(), rows, dim,
                                           out.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor value_update_backward_cuda(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta) {
  check_value_update_backward(grad, v0, delta, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(v0.device());
  const at::Tensor a = v0.contiguous(), d = delta.contiguous(), g = grad.contiguous();
  at::Tensor out = at::empty_like(a, at::MemoryFormat::Contiguous);
  const int64_t dim = a.size(-1);
  const int64_t rows = a.numel() / dim;
  if (rows == 0) return out;
  C10_CUDA_CHECK(gpu::value_update_backward(g.const_data_ptr<float>(), a.const_data_ptr<float>(),
                                            d.const_data_ptr<float>(), rows, dim, out.mutable_data_ptr<float>(),
                                            c10::cuda::getCurrentCUDAStream()));
  return out;
}

// Positions are checked on the device before anything is written (the launcher's first kernel),
// also when batch or heads is 0, unless `check` is false (a caller that already checked them); a
// bad one makes the update write nothing, and with VREASON_CUDA_CHECKS=1 raises the CPU's error.
// Counts stay on the device (reading them would sync): a count outside [0, n] is the caller's bug.
void value_update_inplace_cuda(at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                               const at::Tensor& delta, const c10::optional<at::Tensor>& counts, bool check) {
  check_value_update_inplace(cache, positions, v0, delta, counts, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(cache.device());
  const at::Tensor pos = positions.contiguous(), a = v0.contiguous(), d = delta.contiguous();
  const at::Tensor cnt = counts.has_value() ? counts->contiguous() : at::Tensor();
  const bool per_row = pos.dim() == 2;
  const int64_t num = pos.size(-1);
  if (num == 0) return;
  const gpu::CacheView view{cache.mutable_data_ptr(), gpu_dtype(cache.scalar_type()),
                            cache.size(0),           cache.size(1),
                            cache.size(2),           cache.size(3),
                            cache.stride(0),         cache.stride(1),
                            cache.stride(2),         cache.stride(3)};
  const gpu::Positions where{pos.const_data_ptr<int64_t>(), per_row ? pos.size(0) : 1, num, per_row ? num : 0,
                             cnt.defined() ? cnt.const_data_ptr<int64_t>() : nullptr};
  at::Tensor scratch;
  if (check) scratch = at::empty({where.position_rows * cache.size(2) + 1}, cache.options().dtype(at::kLong));
  C10_CUDA_CHECK(gpu::value_update_inplace(
      view, where, a.const_data_ptr<float>(), d.const_data_ptr<float>(),
      check ? reinterpret_cast<unsigned long long*>(scratch.mutable_data_ptr<int64_t>()) : nullptr,
      c10::cuda::getCurrentCUDAStream()));
  if (check && cuda_checks_enabled()) {
    const int64_t bad = scratch[where.position_rows * cache.size(2)].item<int64_t>();
    if (bad != -1) {
      const at::Tensor host = pos.cpu();
      const int64_t row = bad / num;
      fail_position(host.const_data_ptr<int64_t>() + row * where.row_stride, bad % num, cache.size(2),
                    per_row ? row : -1);
    }
  }
}

// cuBLAS runs `g·W` at bandwidth in either orientation. A bf16/fp16 weight is read in its dtype
// with g split into two parts of that dtype and float32 output (vecmat_split.cpp): rounding g to
// bf16 and the product to bf16, as a plain `mm(g.to(bf16), W)` does, is ~2e-3 off. float32 and
// float64 weights: the BLAS product in their dtype.
at::Tensor vecmat_cuda(const at::Tensor& g, const at::Tensor& weight) {
  check_vecmat(g, weight);
  const auto t = weight.scalar_type();
  if (t == at::kBFloat16 || t == at::kHalf) return vecmat_split(g, weight);
  return at::mm(g.to(t), weight);
}

}  // namespace

TORCH_LIBRARY_IMPL(vreason, CUDA, m) {
  m.impl("vecmat", &vecmat_cuda);
  m.impl("entropy", &entropy_cuda);
  m.impl("entropy_backward", &entropy_backward_cuda);
  m.impl("value_update", &value_update_cuda);
  m.impl("value_update_backward", &value_update_backward_cuda);
  m.impl("value_update_", &value_update_inplace_cuda);
}

}  // namespace vreason
