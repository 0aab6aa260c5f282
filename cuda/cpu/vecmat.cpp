// The CPU kernel of `vecmat(g, weight)`: `g @ weight` for a few rows g `[samples, rows]` and a
// row-major weight `[rows, cols]`, in float32 (float64 for a float64 weight). It is the
// backward's product of a linear layer for one token (`∂L/∂x = ∂L/∂y · W`): the controller's
// round runs it over the lm_head and the last layer's tail.
//
// Why a kernel of our own: with a bf16 weight, torch's CPU matmul runs `g·W` (the weight read
// down its columns) at about half the speed of the forward's `W·x`, and rounds its output to
// bf16. Reading W row by row into float32 accumulators (vecmat_simd.h) runs at memory bandwidth
// and keeps the sum in float32. float32 and float64 weights go to the BLAS product, which runs
// both orientations at bandwidth.
//
// Determinism: the rows are cut into parts of kPartRows (a fixed size, not a thread count), each
// summed into its own accumulator, and the parts added in order, so the result does not depend
// on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu/cpu_ops.h"
#include "cpu/simd_kernels.h"
#include "ops.h"

namespace vreason {

namespace {

constexpr int64_t kPartRows = 1024;

// The scalar row loop (no SIMD, or VREASON_DISABLE_SIMD): the same order of operations as
// vecmat_simd.h's, four rows at a time.
template <typename weight_t>
void vecmat_rows_scalar(const float* g, int64_t samples, int64_t g_stride, const weight_t* w, int64_t rows,
                        int64_t cols, float* acc) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const weight_t* w0 = w + r * cols;
    for (int64_t s = 0; s < samples; ++s) {
      const float* gs = g + s * g_stride + r;
      float* a = acc + s * cols;
      for (int64_t c = 0; c < cols; ++c) {
        float x = std::fma(gs[0], static_cast<float>(w0[c]), a[c]);
        x = std::fma(gs[1], static_cast<float>(w0[cols + c]), x);
        x = std::fma(gs[2], static_cast<float>(w0[2 * cols + c]), x);
        a[c] = std::fma(gs[3], static_cast<float>(w0[3 * cols + c]), x);
      }
    }
  }
  for (; r < rows; ++r) {
    for (int64_t s = 0; s < samples; ++s) {
      const float gr = g[s * g_stride + r];
      float* a = acc + s * cols;
      for (int64_t c = 0; c < cols; ++c) a[c] = std::fma(gr, static_cast<float>(w[r * cols + c]), a[c]);
    }
  }
}

template <typename weight_t>
void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const weight_t* w, int64_t rows, int64_t cols,
                 float* acc, int simd) {
  if constexpr (std::is_same_v<weight_t, c10::BFloat16>) {
    if (simd >= 2) return avx512::vecmat_rows(g, samples, g_stride, w, rows, cols, acc);
  }
  if (simd >= 1) return avx2::vecmat_rows(g, samples, g_stride, w, rows, cols, acc);
  vecmat_rows_scalar(g, samples, g_stride, w, rows, cols, acc);
}

template <typename weight_t>
at::Tensor vecmat_reduced(const at::Tensor& g, const at::Tensor& weight) {
  const int64_t samples = g.size(0), rows = weight.size(0), cols = weight.size(1);
  const at::Tensor gf = g.to(at::kFloat).contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t parts = std::max<int64_t>(1, (rows + kPartRows - 1) / kPartRows);
  at::Tensor acc = at::zeros({parts, samples, cols}, g.options().dtype(at::kFloat));
  const float* gp = gf.const_data_ptr<float>();
  const weight_t* wp = w.const_data_ptr<weight_t>();
  float* ap = acc.mutable_data_ptr<float>();
  const int simd = simd_level();
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t r0 = p * kPartRows, r1 = std::min(rows, r0 + kPartRows);
      vecmat_rows(gp + r0, samples, rows, wp + r0 * cols, r1 - r0, cols, ap + p * samples * cols, simd);
    }
  });
  if (parts == 1) return acc[0];
  // The parts in order, column block by column block (in parallel over columns only).
  at::Tensor out = at::empty({samples, cols}, acc.options());
  float* op = out.mutable_data_ptr<float>();
  const int64_t width = samples * cols;
  at::parallel_for(0, width, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float x = ap[i];
      for (int64_t p = 1; p < parts; ++p) x += ap[p * width + i];
      op[i] = x;
    }
  });
  return out;
}

at::Tensor vecmat_cpu(const at::Tensor& g, const at::Tensor& weight) {
  check_vecmat(g, weight);
  switch (weight.scalar_type()) {
    case at::kBFloat16: return vecmat_reduced<c10::BFloat16>(g, weight);
    case at::kHalf: return vecmat_reduced<c10::Half>(g, weight);
    default: return at::mm(g.to(weight.scalar_type()), weight);  // float32 / float64: BLAS
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(vreason, CPU, m) { m.impl("vecmat", &vecmat_cpu); }

}  // namespace vreason
