// The operator schemas (registered once, namespace `vreason`) and the input checks every
// backend shares. Each backend registers its kernels beside them: cpu/cpu_ops.cpp (CPU) and
// gpu/cuda_ops.cpp (CUDA, compiled only when VREASON_WITH_CUDA is defined).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "ops.h"

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
                                const at::Tensor& delta, const c10::optional<at::Tensor>& counts, bool allow_double) {
  check_value_update("value_update_", v0, delta, allow_double);
  check_same_device("value_update_", "v0", v0, cache, "cache");
  check_same_device("value_update_", "positions", positions, cache, "cache");
  TORCH_CHECK(cache.dim() == 4, "vreason.ops.value_update_: cache must be [batch, kv_heads, seq, head_dim], got shape ",
              shape_of(cache));
  const auto ct = cache.scalar_type();
  TORCH_CHECK(is_reduced_or_single(ct) || ct == at::kDouble, "vreason.ops.value_update_: cache must be a float tensor, got ",
              ct);
  TORCH_CHECK((positions.dim() == 1 || (positions.dim() == 2 && positions.size(0) == cache.size(0))) &&
                  positions.scalar_type() == at::kLong,
              "vreason.ops.value_update_: positions must be a 1-D int64 tensor (or [batch, n] per row), got ",
              positions.scalar_type(), " of shape ", shape_of(positions));
  const int64_t num = positions.size(-1);
  TORCH_CHECK(v0.dim() == 4 && v0.size(0) == cache.size(0) && v0.size(1) == cache.size(1) && v0.size(2) == num &&
                  v0.size(3) == cache.size(3),
              "vreason.ops.value_update_: v0 and delta must be [batch, kv_heads, len(positions), head_dim] = [",
              cache.size(0), ", ", cache.size(1), ", ", num, ", ", cache.size(3), "], got ", shape_of(v0));
  if (counts.has_value()) {
    check_same_device("value_update_", "counts", *counts, cache, "cache");
    TORCH_CHECK(positions.dim() == 2 && counts->dim() == 1 && counts->size(0) == cache.size(0) &&
                    counts->scalar_type() == at::kLong,
                "vreason.ops.value_update_: counts must be a [batch] int64 tensor beside [batch, n] positions, got ",
                counts->scalar_type(), " of shape ", shape_of(*counts));
  }
}

void check_vecmat(const at::Tensor& g, const at::Tensor& weight) {
  check_same_device("vecmat", "weight", weight, g, "g");
  TORCH_CHECK(g.dim() == 2 && weight.dim() == 2 && g.size(1) == weight.size(0), "vreason.ops.vecmat: g must be ",
              "[samples, rows] and weight [rows, cols], got g ", shape_of(g), " and weight ", shape_of(weight));
  const auto t = weight.scalar_type();
  TORCH_CHECK(is_reduced_or_single(t) || t == at::kDouble, "vreason.ops.vecmat: weight must be float32, float16, ",
              "bfloat16 or float64, got ", t);
  TORCH_CHECK(g.is_floating_point(), "vreason.ops.vecmat: g must be a float tensor, got ", g.scalar_type());
}

void fail_bad_entropy_row(const char* op, int64_t row, const at::Tensor& logits) {
  TORCH_CHECK(false, "vreason.ops.", op, ": row ", row, " of logits ", shape_of(logits),
              " (rows counted over the leading dimensions) is all -inf or contains NaN/+inf; its entropy is undefined");
}

void fail_bad_position(const std::string& index, int64_t position, int64_t seq) {
  TORCH_CHECK(false, "vreason.ops.value_update_: positions[", index, "] = ", position,
              " is out of range for a cache of ", seq, " positions");
}

void fail_repeated_position(const std::string& index, const std::string& first, int64_t position) {
  TORCH_CHECK(false, "vreason.ops.value_update_: positions[", index, "] = ", position, " repeats positions[", first,
              "]; each position may be written once (two writers of one row would mix two updated vectors)");
}

int64_t first_bad_position(const int64_t* positions, int64_t num, int64_t seq) {
  std::vector<unsigned char> seen(static_cast<size_t>(seq), 0);
  for (int64_t j = 0; j < num; ++j) {
    const int64_t p = positions[j];
    if (p < 0 || p >= seq || seen[p]) return j;
    seen[p] = 1;
  }
  return -1;
}

void fail_position(const int64_t* positions, int64_t index, int64_t seq, int64_t row) {
  const auto name = [row](int64_t j) { return row < 0 ? std::to_string(j) : std::to_string(row) + ", " + std::to_string(j); };
  const int64_t p = positions[index];
  if (p < 0 || p >= seq) fail_bad_position(name(index), p, seq);
  for (int64_t i = 0; i < index; ++i) {
    if (positions[i] == p) fail_repeated_position(name(index), name(i), p);
  }
  TORCH_CHECK(false, "vreason.ops.value_update_: positions[", name(index), "] = ", p, " was reported bad but is not");
}

bool built_with_cuda() {
#ifdef VREASON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(vreason, m) {
  m.def("entropy(Tensor logits) -> Tensor");
  m.def("entropy_backward(Tensor grad, Tensor logits, Tensor H) -> Tensor");
  m.def("value_update(Tensor v0, Tensor delta) -> Tensor");
  m.def("value_update_backward(Tensor grad, Tensor v0, Tensor delta) -> Tensor");
  // Returns nothing: torch cannot functionalize (torch.compile, opcheck) a custom op whose
  // output aliases an input; the Python front returns the cache.
  // positions: 1-D (every batch row) or [batch, n] per row with counts [batch] (row b writes its
  // first counts[b] slots); `check`: validate the positions first (a caller writing the same
  // positions again and again validates once).
  m.def("value_update_(Tensor(a!) cache, Tensor positions, Tensor v0, Tensor delta, Tensor? counts=None, "
        "bool check=True) -> ()");
  // g @ weight for a few rows g (a linear layer's input gradient for one token), float32
  // (float64 for a float64 weight); not differentiable (it is itself a backward).
  m.def("vecmat(Tensor g, Tensor weight) -> Tensor");
  // vecmat for a bf16/fp16 weight as the CUDA backend computes it (vecmat_split.cpp), on any
  // device: the CPU runs the GPU's composition (tests, `vreason doctor`).
  m.def("vecmat_split(Tensor g, Tensor weight) -> Tensor");
}

}  // namespace vreason
