// CPU kernels of the vreason operators, registered for the CPU dispatch key at the end. The
// per-element and per-row arithmetic comes from vreason_math.cuh (the CUDA kernels use the same
// functions); the float32/bf16/fp16 entropy row loops use the SIMD loops (simd_kernels.h) when
// the CPU has them: AVX2, and for float32 AVX-512F where present.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/simd_kernels.h"
#include "ops.h"
#include "vreason_math.cuh"

namespace vreason {

namespace {

// Level 2 also needs AVX2: at that level bf16/fp16 still run the AVX2 loops (every AVX-512 CPU
// has AVX2/FMA/F16C, so this only guards against an odd emulator).
int detect_simd_level() {
  if (!avx2::supported()) return 0;
  return avx512::supported() ? 2 : 1;
}

int max_level() {
  static const int level = detect_simd_level();
  return level;
}

std::atomic<int>& simd_switch() {
  static std::atomic<int> level{std::getenv("VREASON_DISABLE_SIMD") == nullptr ? max_level() : 0};
  return level;
}

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
math::EntropyState<acc_type<scalar_t>> entropy_range(const scalar_t* z, int64_t n, int simd) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (simd >= 2) return avx512::entropy_state(z, n);
  }
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (simd >= 1) return avx2::entropy_state(z, n);
  }
  // Blocks merged into the row state keep the float32 sums' rounding error at the level of the
  // SIMD and CUDA paths (short partial sums), instead of growing along a 152k-long serial sum.
  using acc_t = acc_type<scalar_t>;
  constexpr int64_t kBlock = 256;
  auto st = math::entropy_init<acc_t>();
  for (int64_t lo = 0; lo < n; lo += kBlock) {
    auto block = math::entropy_init<acc_t>();
    const int64_t hi = std::min(n, lo + kBlock);
    for (int64_t i = lo; i < hi; ++i) math::entropy_push(block, static_cast<acc_t>(z[i]));
    st = math::entropy_merge(st, block);
  }
  return st;
}

template <typename scalar_t>
void entropy_grad_range(const scalar_t* z, int64_t n, const math::EntropyGradRow<acc_type<scalar_t>>& row,
                        scalar_t* out, int simd) {
  if constexpr (!std::is_same_v<scalar_t, double>) {
    if (simd) return avx2::entropy_grad(z, n, row, out);
  }
  using acc_t = acc_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(math::entropy_grad_elem(row, static_cast<acc_t>(z[i])));
}

// Work split of `rows` rows of length n into rows·parts tasks. A decode step has one row of
// 152k logits: splitting it lets every thread work, and entropy_merge joins the parts.
struct RowSplit {
  int64_t parts;
  int64_t part_len;
  int64_t grain;  // tasks per thread chunk, so short rows do not pay a thread hand-off each
};

RowSplit split_rows(int64_t rows, int64_t n) {
  constexpr int64_t kMinPart = 16384;
  constexpr int64_t kMinTaskWork = 32768;
  const int64_t threads = at::get_num_threads();
  int64_t parts = 1;
  if (rows < threads && n >= 2 * kMinPart) {
    parts = std::min((threads + rows - 1) / rows, n / kMinPart);
  }
  const int64_t part_len = (n + parts - 1) / parts;
  return {parts, part_len, std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(1, part_len))};
}

// Row states from the states of each row's parts (task order: row-major).
template <typename State>
std::vector<State> merge_parts(const std::vector<State>& parts, int64_t rows, const RowSplit& split) {
  if (split.parts == 1) return parts;
  std::vector<State> states(rows);
  for (int64_t row = 0; row < rows; ++row) {
    State st = parts[row * split.parts];
    for (int64_t part = 1; part < split.parts; ++part) st = math::entropy_merge(st, parts[row * split.parts + part]);
    states[row] = st;
  }
  return states;
}

// Entropy states of every row of z ([rows, n] contiguous).
template <typename scalar_t>
std::vector<math::EntropyState<acc_type<scalar_t>>> entropy_row_states(const scalar_t* z, int64_t rows, int64_t n,
                                                                       const RowSplit& split, int simd) {
  using State = math::EntropyState<acc_type<scalar_t>>;
  std::vector<State> parts(rows * split.parts);
  at::parallel_for(0, rows * split.parts, split.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / split.parts, part = task % split.parts;
      const int64_t lo = part * split.part_len, hi = std::min(n, lo + split.part_len);
      parts[task] = entropy_range(z + row * n + lo, hi - lo, simd);
    }
  });
  return merge_parts(parts, rows, split);
}

template <typename State>
void require_finite_rows(const char* op, const std::vector<State>& states, const at::Tensor& logits) {
  for (int64_t row = 0; row < static_cast<int64_t>(states.size()); ++row) {
    if (!math::entropy_row_ok(states[row])) fail_bad_entropy_row(op, row, logits);
  }
}

// The float32 SIMD backward: the first pass keeps e^{z−m_c} in the gradient's own buffer (see
// avx2::entropy_state_exp), so the second pass rescales it with loads and multiplies instead of a
// second exp per element; an unsplit row runs both passes in one task, while the row is still in
// that core's cache. A bad row's gradient is left unwritten: the op throws for it below.
//
// Kernels is avx2 or avx512 (as a struct of its three entry points): both take the same passes.
template <typename Kernels>
void entropy_backward_f32_simd(const float* z, int64_t rows, int64_t n, const RowSplit& split, const float* h,
                               const float* g, float* out, const at::Tensor& logits) {
  using State = math::EntropyState<float>;
  const int64_t part_chunks = Kernels::exp_chunks(split.part_len);
  std::vector<float> chunk_m(rows * split.parts * part_chunks);
  if (split.parts == 1) {
    std::vector<State> states(rows);
    at::parallel_for(0, rows, split.grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const float* zr = z + row * n;
        float* o = out + row * n;
        float* cm = chunk_m.data() + row * part_chunks;
        states[row] = Kernels::entropy_state_exp(zr, n, o, cm);
        if (!math::entropy_row_ok(states[row])) continue;
        Kernels::entropy_grad_from_exp(zr, n, o, cm, math::entropy_grad_row(states[row], h[row], g[row]), o);
      }
    });
    require_finite_rows("entropy_backward", states, logits);
    return;
  }
  std::vector<State> parts(rows * split.parts);
  at::parallel_for(0, rows * split.parts, split.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / split.parts, part = task % split.parts;
      const int64_t lo = part * split.part_len, hi = std::min(n, lo + split.part_len);
      parts[task] = Kernels::entropy_state_exp(z + row * n + lo, hi - lo, out + row * n + lo,
                                            chunk_m.data() + task * part_chunks);
    }
  });
  const auto states = merge_parts(parts, rows, split);
  require_finite_rows("entropy_backward", states, logits);
  std::vector<math::EntropyGradRow<float>> consts(rows);
  for (int64_t row = 0; row < rows; ++row) consts[row] = math::entropy_grad_row(states[row], h[row], g[row]);
  at::parallel_for(0, rows * split.parts, split.grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / split.parts, part = task % split.parts;
      const int64_t lo = part * split.part_len, hi = std::min(n, lo + split.part_len);
      float* o = out + row * n + lo;
      Kernels::entropy_grad_from_exp(z + row * n + lo, hi - lo, o, chunk_m.data() + task * part_chunks, consts[row], o);
    }
  });
}

struct Avx2Kernels {
  static int64_t exp_chunks(int64_t n) { return avx2::exp_chunks(n); }
  static math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
    return avx2::entropy_state_exp(z, n, e, chunk_m);
  }
  static void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                                    const math::EntropyGradRow<float>& row, float* out) {
    avx2::entropy_grad_from_exp(z, n, e, chunk_m, row, out);
  }
};

struct Avx512Kernels {
  static int64_t exp_chunks(int64_t n) { return avx512::exp_chunks(n); }
  static math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
    return avx512::entropy_state_exp(z, n, e, chunk_m);
  }
  static void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                                    const math::EntropyGradRow<float>& row, float* out) {
    avx512::entropy_grad_from_exp(z, n, e, chunk_m, row, out);
  }
};

// Runs the float32 SIMD backward above at the given level; false for the other dtypes (their
// reduced-precision buffer cannot hold e^{z−m_c} without rounding it twice), which take the
// two-exp path.
template <typename scalar_t, typename acc_t>
bool entropy_backward_exp_reuse(const scalar_t* z, int64_t rows, int64_t n, const RowSplit& split, const acc_t* h,
                                const acc_t* g, scalar_t* out, const at::Tensor& logits, int simd) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (simd >= 2) {
      entropy_backward_f32_simd<Avx512Kernels>(z, rows, n, split, h, g, out, logits);
    } else {
      entropy_backward_f32_simd<Avx2Kernels>(z, rows, n, split, h, g, out, logits);
    }
    return true;
  }
  return false;
}

}  // namespace

int max_simd_level() { return max_level(); }
int simd_level() { return simd_switch().load(); }
int set_simd_level(int level) { return simd_switch().exchange(std::clamp(level, 0, max_level())); }

bool simd_available() { return max_level() > 0; }
bool simd_enabled() { return simd_level() > 0; }
bool set_simd_enabled(bool enabled) { return set_simd_level(enabled ? max_level() : 0) > 0; }

at::Tensor entropy_cpu(const at::Tensor& logits) {
  check_entropy_logits(logits, /*allow_double=*/true);
  const at::Tensor z = logits.contiguous();
  const int64_t n = z.size(-1);
  const int64_t rows = z.numel() / n;
  const auto out_dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty(z.sizes().slice(0, z.dim() - 1), z.options().dtype(out_dtype));
  if (rows == 0) return out;
  const int simd = simd_level();
  const RowSplit split = split_rows(rows, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "vreason::entropy", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto states = entropy_row_states(z.const_data_ptr<scalar_t>(), rows, n, split, simd);
    require_finite_rows("entropy", states, logits);
    acc_t* h = out.mutable_data_ptr<acc_t>();
    for (int64_t row = 0; row < rows; ++row) h[row] = math::entropy_finish(states[row]);
  });
  return out;
}

at::Tensor entropy_backward_cpu(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& h) {
  check_entropy_backward(grad, logits, h, /*allow_double=*/true);
  const at::Tensor z = logits.contiguous();
  const int64_t n = z.size(-1);
  const int64_t rows = z.numel() / n;
  at::Tensor grad_logits = at::empty_like(z, at::MemoryFormat::Contiguous);
  if (rows == 0) return grad_logits;
  const int simd = simd_level();
  const RowSplit split = split_rows(rows, n);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "vreason::entropy_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const at::Tensor gh = grad.contiguous().to(h.scalar_type());
    const at::Tensor hc = h.contiguous();
    const acc_t* gp = gh.const_data_ptr<acc_t>();
    const acc_t* hp = hc.const_data_ptr<acc_t>();
    if (simd > 0 && entropy_backward_exp_reuse(zp, rows, n, split, hp, gp, grad_logits.mutable_data_ptr<scalar_t>(),
                                               logits, simd)) {
      return;
    }
    const auto states = entropy_row_states(zp, rows, n, split, simd);
    require_finite_rows("entropy_backward", states, logits);
    std::vector<math::EntropyGradRow<acc_t>> consts(rows);
    for (int64_t row = 0; row < rows; ++row) consts[row] = math::entropy_grad_row(states[row], hp[row], gp[row]);
    scalar_t* out = grad_logits.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows * split.parts, split.grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = task / split.parts, part = task % split.parts;
        const int64_t lo = part * split.part_len, hi = std::min(n, lo + split.part_len);
        entropy_grad_range(zp + row * n + lo, hi - lo, consts[row], out + row * n + lo, simd);
      }
    });
  });
  return grad_logits;
}

namespace {

template <typename acc_t>
math::ValueUpdateRow<acc_t> value_update_row_of(const acc_t* v0, const acc_t* delta, int64_t dim) {
  acc_t v0_sq = 0, u_sq = 0;
#pragma omp simd reduction(+ : v0_sq, u_sq)
  for (int64_t i = 0; i < dim; ++i) {
    const acc_t u = v0[i] + delta[i];
    v0_sq += v0[i] * v0[i];
    u_sq += u * u;
  }
  return math::value_update_row(v0_sq, u_sq);
}

int64_t row_grain(int64_t dim) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, dim)); }

// The row loops live outside AT_DISPATCH: `#pragma omp simd` is not allowed inside a macro
// argument, and the pragmas are what vectorize the float reductions (no -ffast-math).
template <typename acc_t>
void value_update_rows(const acc_t* v0, const acc_t* delta, int64_t rows, int64_t dim, acc_t* out) {
  at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t *v = v0 + r * dim, *dl = delta + r * dim;
      const auto row = value_update_row_of(v, dl, dim);
      acc_t* o = out + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) o[i] = math::value_update_elem(row, v[i], dl[i]);
    }
  });
}

template <typename acc_t>
void value_update_backward_rows(const acc_t* grad, const acc_t* v0, const acc_t* delta, int64_t rows, int64_t dim,
                                acc_t* out) {
  at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t *v = v0 + r * dim, *dl = delta + r * dim, *g = grad + r * dim;
      acc_t v0_sq = 0, u_sq = 0, u_dot_g = 0;
#pragma omp simd reduction(+ : v0_sq, u_sq, u_dot_g)
      for (int64_t i = 0; i < dim; ++i) {
        const acc_t u = v[i] + dl[i];
        v0_sq += v[i] * v[i];
        u_sq += u * u;
        u_dot_g += u * g[i];
      }
      const auto row = math::value_update_grad_row(v0_sq, u_sq, u_dot_g);
      acc_t* o = out + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) o[i] = math::value_update_grad_elem(row, g[i], v[i], dl[i]);
    }
  });
}

// Rows r of v0/delta ([batch, heads, num, dim] contiguous) go to cache[b, h, positions[b·row_stride + j], :]
// (row_stride 0: the same positions for every b), for j < counts[b] (all num where counts is null).
template <typename cache_t, typename acc_t>
void value_update_scatter_rows(cache_t* cache, const int64_t* strides, int64_t heads, const int64_t* positions,
                               int64_t row_stride, const int64_t* counts, int64_t num, const acc_t* v0,
                               const acc_t* delta, int64_t rows, int64_t dim) {
  const int64_t sb = strides[0], sh = strides[1], ss = strides[2], sd = strides[3];
  at::parallel_for(0, rows, row_grain(dim), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (heads * num), h = (r / num) % heads, j = r % num;
      if (counts != nullptr && j >= counts[b]) continue;
      const acc_t *v = v0 + r * dim, *dl = delta + r * dim;
      const auto row = value_update_row_of(v, dl, dim);
      cache_t* dst = cache + b * sb + h * sh + positions[b * row_stride + j] * ss;
      for (int64_t i = 0; i < dim; ++i) dst[i * sd] = static_cast<cache_t>(math::value_update_elem(row, v[i], dl[i]));
    }
  });
}

}  // namespace

at::Tensor value_update_cpu(const at::Tensor& v0, const at::Tensor& delta) {
  check_value_update("value_update", v0, delta, /*allow_double=*/true);
  const at::Tensor a = v0.contiguous(), d = delta.contiguous();
  at::Tensor out = at::empty_like(a, at::MemoryFormat::Contiguous);
  const int64_t dim = a.size(-1);
  const int64_t rows = a.numel() / dim;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "vreason::value_update", [&] {
    value_update_rows(a.const_data_ptr<scalar_t>(), d.const_data_ptr<scalar_t>(), rows, dim,
                      out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor value_update_backward_cpu(const at::Tensor& grad, const at::Tensor& v0, const at::Tensor& delta) {
  check_value_update_backward(grad, v0, delta, /*allow_double=*/true);
  const at::Tensor a = v0.contiguous(), d = delta.contiguous(), g = grad.contiguous();
  at::Tensor out = at::empty_like(a, at::MemoryFormat::Contiguous);
  const int64_t dim = a.size(-1);
  const int64_t rows = a.numel() / dim;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "vreason::value_update_backward", [&] {
    value_update_backward_rows(g.const_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                               d.const_data_ptr<scalar_t>(), rows, dim, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

void value_update_inplace_cpu(at::Tensor& cache, const at::Tensor& positions, const at::Tensor& v0,
                              const at::Tensor& delta, const c10::optional<at::Tensor>& counts, bool check) {
  check_value_update_inplace(cache, positions, v0, delta, counts, /*allow_double=*/true);
  const int64_t seq = cache.size(2);
  const at::Tensor pos = positions.contiguous();
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  const bool per_row = pos.dim() == 2;
  const int64_t num = pos.size(-1), row_stride = per_row ? num : 0;
  const at::Tensor cnt = counts.has_value() ? counts->contiguous() : at::Tensor();
  const int64_t* cp_counts = cnt.defined() ? cnt.const_data_ptr<int64_t>() : nullptr;
  if (cp_counts != nullptr) {
    for (int64_t b = 0; b < cnt.numel(); ++b)
      TORCH_CHECK(cp_counts[b] >= 0 && cp_counts[b] <= num, "vreason.ops.value_update_: counts[", b, "] = ",
                  cp_counts[b], " is not in [0, ", num, "]");
  }
  // Every position is checked before anything is written (also when batch or heads is 0).
  if (check) {
    for (int64_t b = 0; b < (per_row ? pos.size(0) : 1); ++b) {
      const int64_t n = cp_counts != nullptr ? cp_counts[b] : num;
      const int64_t bad = first_bad_position(pp + b * row_stride, n, seq);
      if (bad >= 0) fail_position(pp + b * row_stride, bad, seq, per_row ? b : -1);
    }
  }
  const at::Tensor a = v0.contiguous(), d = delta.contiguous();
  const int64_t heads = cache.size(1), dim = cache.size(3);
  const int64_t rows = a.numel() / dim;  // batch · heads · num, in v0's order
  const int64_t strides[4] = {cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cache.scalar_type(), "vreason::value_update_", [&] {
    using cache_t = scalar_t;
    cache_t* cp = cache.mutable_data_ptr<cache_t>();
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "vreason::value_update_", [&] {
      value_update_scatter_rows(cp, strides, heads, pp, row_stride, cp_counts, num, a.const_data_ptr<scalar_t>(),
                                d.const_data_ptr<scalar_t>(), rows, dim);
    });
  });
}

TORCH_LIBRARY_IMPL(vreason, CPU, m) {
  m.impl("entropy", &entropy_cpu);
  m.impl("entropy_backward", &entropy_backward_cpu);
  m.impl("value_update", &value_update_cpu);
  m.impl("value_update_backward", &value_update_backward_cpu);
  m.impl("value_update_", &value_update_inplace_cpu);
}

}  // namespace vreason
