// What every backend of the vreason operators shares (ops.cpp): the input checks, with one-line
// errors naming the op, and the error messages for rows and positions the kernels find bad.
// The backends live beside this file: cpu/ (scalar, AVX2 and AVX-512F row loops) and gpu/ (the
// CUDA kernels and their host wrappers), each registering its own kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace vreason {

// `allow_double` is true on CPU only.
void check_entropy_logits(const at::Tensor& logits, bool allow_double);
void check_entropy_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h,
                            bool allow_double);
void check_value_update(const char* op, const at::Tensor& v0, const at::Tensor& delta, bool allow_double);
void check_value_update_backward(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta,
                                 bool allow_double);
// positions: 1-D [n] (the same for every batch row) or per row [batch, n] with optional counts
// [batch] (row b writes its first counts[b] slots; absent: all n).
void check_value_update_inplace(const at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                                const at::Tensor& delta, const c10::optional<at::Tensor>& counts, bool allow_double);
void check_vecmat(const at::Tensor& g, const at::Tensor& weight);
[[noreturn]] void fail_bad_entropy_row(const char* op, int64_t row, const at::Tensor& logits);
[[noreturn]] void fail_bad_position(const std::string& index, int64_t position, int64_t seq);
[[noreturn]] void fail_repeated_position(const std::string& index, const std::string& first, int64_t position);

// The first bad index of host-side positions (out of range, or a repeat of an earlier one), or -1.
// Both backends apply it before writing anything, so a failed call leaves the cache untouched.
int64_t first_bad_position(const int64_t* positions, int64_t num, int64_t seq);
// Raises the error for positions[index] (found bad by first_bad_position or a kernel); `row` >= 0
// names the row of per-row positions (positions then points at that row).
[[noreturn]] void fail_position(const int64_t* positions, int64_t index, int64_t seq, int64_t row = -1);

// vecmat for a bf16/fp16 weight with g split into two parts of the weight's dtype and one GEMM
// with float32 output (vecmat_split.cpp): the CUDA backend's vecmat for such weights.
at::Tensor vecmat_split(const at::Tensor& g, const at::Tensor& weight);

bool built_with_cuda();

}  // namespace vreason
