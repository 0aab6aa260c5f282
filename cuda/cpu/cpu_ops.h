// The CPU backend of the vreason operators (cpu_ops.cpp registers them for the CPU dispatch key)
// and its choice of entropy row loops: scalar, AVX2 or AVX-512F.
#pragma once

#include <ATen/core/Tensor.h>

namespace vreason {

at::Tensor entropy_cpu(const at::Tensor& logits);
at::Tensor entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h);
at::Tensor value_update_cpu(const at::Tensor& v0, const at::Tensor& delta);
at::Tensor value_update_backward_cpu(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta);
void value_update_inplace_cpu(at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                              const at::Tensor& delta, const c10::optional<at::Tensor>& counts = c10::nullopt,
                              bool check = true);

// Which CPU entropy path runs: 0 scalar, 1 AVX2, 2 AVX-512F (float32; bf16/fp16 use AVX2 at
// level 2). The default is the highest the CPU supports, or 0 when VREASON_DISABLE_SIMD was set
// at load time. Tests select each level to compare the paths.
int max_simd_level();
int simd_level();
int set_simd_level(int level);  // clamped to [0, max_simd_level()]; returns the previous level

// The same switch as a boolean: on is the highest level, off is 0.
bool simd_available();
bool simd_enabled();
bool set_simd_enabled(bool enabled);  // returns the previous setting; ignored if unavailable

}  // namespace vreason
