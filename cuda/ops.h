// The vreason operators' C++ entry points: input checks shared by every backend, the CPU
// kernels, and the switch between the AVX2 and the scalar CPU paths.
#pragma once

#include <ATen/core/Tensor.h>

namespace vreason {

// Input checks (one-line errors naming the op); `allow_double` is true on CPU only.
void check_entropy_logits(const at::Tensor& logits, bool allow_double);
void check_entropy_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h,
                            bool allow_double);
void check_value_update(const char* op, const at::Tensor& v0, const at::Tensor& delta, bool allow_double);
void check_value_update_backward(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta,
                                 bool allow_double);
void check_value_update_inplace(const at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                                const at::Tensor& delta, bool allow_double);
[[noreturn]] void fail_bad_entropy_row(const char* op, int64_t row, const at::Tensor& logits);
[[noreturn]] void fail_bad_position(int64_t index, int64_t position, int64_t seq);

at::Tensor entropy_cpu(const at::Tensor& logits);
at::Tensor entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h);
at::Tensor value_update_cpu(const at::Tensor& v0, const at::Tensor& delta);
at::Tensor value_update_backward_cpu(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta);
void value_update_inplace_cpu(at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                              const at::Tensor& delta);

// The AVX2 path runs when the CPU has AVX2+FMA+F16C, unless VREASON_DISABLE_SIMD is set in the
// environment at load time or set_simd_enabled(false) was called (tests compare both paths).
bool simd_available();
bool simd_enabled();
bool set_simd_enabled(bool enabled);  // returns the previous setting; ignored if unavailable

bool built_with_cuda();

}  // namespace vreason
