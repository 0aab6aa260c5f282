// vecmat through a BLAS that reads a reduced-precision weight in its own dtype (cuBLAS), without
// rounding the float32 gradient g to that dtype: the CUDA backend's vecmat for bf16/fp16 weights.
// Written once for every device, so the CPU runs the very composition the GPU runs (tests, and
// `vreason doctor` on any machine); only the product below differs by device.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <vector>

#include "ops.h"

// aten::mm.dtype (bf16/fp16 operands, float32 output) came with torch 2.8, for CUDA only.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define VREASON_HAVE_MM_DTYPE 1
#else
#define VREASON_HAVE_MM_DTYPE 0
#endif

namespace vreason {
namespace {

// a @ w in float32 for reduced-precision a and w. On CUDA one cuBLAS GEMM with float32
// accumulation and float32 output (w read once, in its dtype). Elsewhere the same arithmetic:
// the product of two bf16 (or fp16) values is exact in float32, so float32 operands multiplied
// with float32 accumulation give what that GEMM gives, up to the order of summation; `w` is
// widened a block of columns at a time, so no float32 copy of the whole weight exists.
at::Tensor widened_product(const at::Tensor& a, const at::Tensor& w) {
#if VREASON_HAVE_MM_DTYPE
  if (a.is_cuda()) return at::mm(a, w, at::kFloat);
#endif
  constexpr int64_t kBlock = 8192;
  const at::Tensor a32 = a.to(at::kFloat);
  std::vector<at::Tensor> parts;
  for (int64_t c = 0; c < w.size(1); c += kBlock) {
    parts.push_back(at::mm(a32, w.narrow(1, c, std::min(kBlock, w.size(1) - c)).to(at::kFloat)));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

}  // namespace

at::Tensor vecmat_split(const at::Tensor& g, const at::Tensor& weight) {
  check_vecmat(g, weight);
  const auto t = weight.scalar_type();
  TORCH_CHECK(t == at::kBFloat16 || t == at::kHalf, "vreason.ops.vecmat_split: weight must be bfloat16 or float16, ",
              "got ", t);
  if (g.size(1) == 0) return at::zeros({g.size(0), weight.size(1)}, g.options().dtype(at::kFloat));
  // fp16: each row of g is scaled by a power of two to a largest magnitude in [1, 2) (exact), so
  // fp16's narrow exponent range cannot flush a small gradient to zero; a non-finite row stays
  // non-finite. bf16 has float32's exponent range: no scaling (five fewer small kernels).
  const at::Tensor g32 = g.to(at::kFloat);
  at::Tensor scale;
  if (t == at::kHalf) {
    const at::Tensor amax = g32.abs().amax(1, /*keepdim=*/true);
    scale = at::where(amax > 0, at::exp2(at::floor(at::log2(amax))), at::ones_like(amax));
  }
  const at::Tensor x = scale.defined() ? g32 / scale : g32;
  // x = hi + lo + r with hi, lo in the weight's dtype and |r| <= 2^-16 |x| (bf16; 2^-22 for
  // fp16): the float32 gradient to about 16 significant bits where rounding g kept 8, at the cost
  // of a second row in the same GEMM (the weight is still read once).
  const at::Tensor hi = x.to(t);
  const at::Tensor lo = (x - hi.to(at::kFloat)).to(t);
  const int64_t samples = g.size(0);
  const at::Tensor both = widened_product(at::cat({hi, lo}, 0), weight);
  const at::Tensor sum = both.narrow(0, 0, samples) + both.narrow(0, samples, samples);
  return scale.defined() ? sum * scale : sum;
}

TORCH_LIBRARY_IMPL(vreason, CompositeExplicitAutograd, m) { m.impl("vecmat_split", &vecmat_split); }

}  // namespace vreason
