// Operator schemas (registered once, namespace `vreason`), the input checks every backend
// shares, and the CUDA entry points that hand raw pointers and the current stream to the
// kernels in entropy.cu / value_update.cu (compiled only when VREASON_WITH_CUDA is defined).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "ops.h"

#ifdef VREASON_WITH_CUDA
// Only c10's CUDA headers: ATen/cuda/* pulls in cuBLAS headers the toolkit may not ship.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels.h"
#endif

namespace vreason {

namespace {

bool is_reduced_or_single(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "vreason.ops.", op, ": ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device(), "; put them on the same device");
}

}  // namespace

void check_entropy_logits(const at::Tensor& logits, bool allow_double) {
  TORCH_CHECK(logits.dim() >= 1, "vreason.ops.entropy: logits must have at least one dimension (the vocabulary)");
  TORCH_CHECK(logits.size(-1) >= 1, "vreason.ops.entropy: the last dimension of logits is empty, shape ",
              shape_of(logits));
  const auto t = logits.scalar_type();
  TORCH_CHECK(is_reduced_or_single(t) || (allow_double && t == at::kDouble), "vreason.ops.entropy: logits must be ",
              allow_double ? "float32, float16, bfloat16 or float64" : "float32, float16 or bfloat16", " on ",
              logits.device(), ", got ", t);
}

void check_entropy_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h,
                            bool allow_double) {
  check_entropy_logits(logits, allow_double);
  check_same_device("entropy_backward", "grad", grad, logits, "logits");
  check_same_device("entropy_backward", "H", h, logits, "logits");
  const auto rows_shape = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK(grad.sizes() == rows_shape && h.sizes() == rows_shape, "vreason.ops.entropy_backward: grad ",
              shape_of(grad), " and H ", shape_of(h), " must have logits' leading shape ", c10::str(rows_shape));
  const auto expected = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(h.scalar_type() == expected && grad.is_floating_point(), "vreason.ops.entropy_backward: H must be ",
              expected, " and grad floating point, got H ", h.scalar_type(), " and grad ", grad.scalar_type());
}

void check_value_update(const char* op, const at::Tensor& v0, const at::Tensor& delta, bool allow_double) {
  check_same_device(op, "delta", delta, v0, "v0");
  TORCH_CHECK(v0.sizes() == delta.sizes(), "vreason.ops.", op, ": v0 ", shape_of(v0), " and delta ", shape_of(delta),
              " must have the same shape");
  TORCH_CHECK(v0.dim() >= 1 && v0.size(-1) >= 1, "vreason.ops.", op,
              ": v0 needs a non-empty last dimension (head_dim), got shape ", shape_of(v0));
  const auto t = v0.scalar_type();
  TORCH_CHECK(t == delta.scalar_type() && (t == at::kFloat || (allow_double && t == at::kDouble)), "vreason.ops.",
              op, ": v0 and delta must both be float32", allow_double ? " (or both float64)" : "", ", got ", t,
              " and ", delta.scalar_type());
}

void check_value_update_backward(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta,
                                 bool allow_double) {
  check_value_update("value_update_backward", v0, delta, allow_double);
  check_same_device("value_update_backward", "grad", grad, v0, "v0");
  TORCH_CHECK(grad.sizes() == v0.sizes() && grad.scalar_type() == v0.scalar_type(),
              "vreason.ops.value_update_backward: grad ", shape_of(grad), " ", grad.scalar_type(),
              " must match v0 ", shape_of(v0), " ", v0.scalar_type());
}

void check_value_update_inplace(const at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                                const at::Tensor& delta, bool allow_double) {
  check_value_update("value_update_", v0, delta, allow_double);
  check_same_device("value_update_", "v0", v0, cache, "cache");
  check_same_device("value_update_", "positions", positions, cache, "cache");
  TORCH_CHECK(cache.dim() == 4, "vreason.ops.value_update_: cache must be [batch, kv_heads, seq, head_dim], got shape ",
              shape_of(cache));
  const auto ct = cache.scalar_type();
  TORCH_CHECK(is_reduced_or_single(ct) || ct == at::kDouble, "vreason.ops.value_update_: cache must be a float tensor, got ",
              ct);
  TORCH_CHECK(positions.dim() == 1 && positions.scalar_type() == at::kLong,
              "vreason.ops.value_update_: positions must be a 1-D int64 tensor, got ", positions.scalar_type(), " of shape ",
              shape_of(positions));
  TORCH_CHECK(v0.dim() == 4 && v0.size(0) == cache.size(0) && v0.size(1) == cache.size(1) &&
                  v0.size(2) == positions.size(0) && v0.size(3) == cache.size(3),
              "vreason.ops.value_update_: v0 and delta must be [batch, kv_heads, len(positions), head_dim] = [",
              cache.size(0), ", ", cache.size(1), ", ", positions.size(0), ", ", cache.size(3), "], got ", shape_of(v0));
}

void fail_bad_entropy_row(const char* op, int64_t row, const at::Tensor& logits) {
  TORCH_CHECK(false, "vreason.ops.", op, ": row ", row, " of logits ", shape_of(logits),
              " (rows counted over the leading dimensions) is all -inf or contains NaN/+inf; its entropy is undefined");
}

void fail_bad_position(int64_t index, int64_t position, int64_t seq) {
  TORCH_CHECK(false, "vreason.ops.value_update_: positions[", index, "] = ", position,
              " is out of range for a cache of ", seq, " positions");
}

bool built_with_cuda() {
#ifdef VREASON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

#ifdef VREASON_WITH_CUDA
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
// it a bad entropy row yields NaN and an out-of-range position is skipped (never written).
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
  if (flag.defined()) {
    const int64_t bad = flag.item<int64_t>();
    if (bad != -1) fail_bad_entropy_row("entropy", bad, logits);
  }
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
  C10_CUDA_CHECK(gpu::entropy_backward(gpu_dtype(z.scalar_type()), g.const_data_ptr<float>(), z.const_data_ptr(),
                                       hc.const_data_ptr<float>(), rows, n, grad_logits.mutable_data_ptr(),
                                       c10::cuda::getCurrentCUDAStream()));
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

void value_update_inplace_cuda(at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                                      const at::Tensor& delta) {
  check_value_update_inplace(cache, positions, v0, delta, /*allow_double=*/false);
  const c10::cuda::CUDAGuard guard(cache.device());
  const at::Tensor pos = positions.contiguous(), a = v0.contiguous(), d = delta.contiguous();
  if (pos.numel() == 0 || cache.size(0) == 0 || cache.size(1) == 0) return;
  const gpu::CacheView view{cache.mutable_data_ptr(), gpu_dtype(cache.scalar_type()),
                            cache.size(0),           cache.size(1),
                            cache.size(2),           cache.size(3),
                            cache.stride(0),         cache.stride(1),
                            cache.stride(2),         cache.stride(3)};
  at::Tensor flag = cuda_checks_enabled() ? new_error_flag(cache) : at::Tensor();
  C10_CUDA_CHECK(gpu::value_update_inplace(view, pos.const_data_ptr<int64_t>(), pos.numel(), a.const_data_ptr<float>(),
                                           d.const_data_ptr<float>(), flag_ptr(flag),
                                           c10::cuda::getCurrentCUDAStream()));
  if (flag.defined()) {
    const int64_t bad = flag.item<int64_t>();
    if (bad != -1) fail_bad_position(bad, pos[bad].item<int64_t>(), cache.size(2));
  }
}

}  // namespace
#endif  // VREASON_WITH_CUDA

TORCH_LIBRARY(vreason, m) {
  m.def("entropy(Tensor logits) -> Tensor");
  m.def("entropy_backward(Tensor grad, Tensor logits, Tensor H) -> Tensor");
  m.def("value_update(Tensor v0, Tensor delta) -> Tensor");
  m.def("value_update_backward(Tensor grad, Tensor v0, Tensor delta) -> Tensor");
  // Returns nothing: torch cannot functionalize (torch.compile, opcheck) a custom op whose
  // output aliases an input; the Python front returns the cache.
  m.def("value_update_(Tensor(a!) cache, Tensor positions, Tensor v0, Tensor delta) -> ()");
}

TORCH_LIBRARY_IMPL(vreason, CPU, m) {
  m.impl("entropy", &entropy_cpu);
  m.impl("entropy_backward", &entropy_backward_cpu);
  m.impl("value_update", &value_update_cpu);
  m.impl("value_update_backward", &value_update_backward_cpu);
  m.impl("value_update_", &value_update_inplace_cpu);
}

#ifdef VREASON_WITH_CUDA
TORCH_LIBRARY_IMPL(vreason, CUDA, m) {
  m.impl("entropy", &entropy_cuda);
  m.impl("entropy_backward", &entropy_backward_cuda);
  m.impl("value_update", &value_update_cuda);
  m.impl("value_update_backward", &value_update_backward_cuda);
  m.impl("value_update_", &value_update_inplace_cuda);
}
#endif

}  // namespace vreason
