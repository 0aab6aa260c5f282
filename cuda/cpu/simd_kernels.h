// The SIMD row loops of the CPU kernels: one algorithm each (entropy_simd.h and vecmat_simd.h,
// templates over the vector width) compiled once per target in its own unit, entropy_avx2.cpp
// (8 lanes) and entropy_avx512.cpp (16 lanes). Those units compile their functions for their target only, so
// the extension still loads and runs (scalar path) on CPUs without it; callers check supported()
// first.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdint>

#include "vreason_math.cuh"

namespace vreason::avx2 {

bool supported();  // AVX2 + FMA + F16C

// The entropy state of n contiguous logits (a row or a segment of one).
math::EntropyState<float> entropy_state(const float* z, int64_t n);
math::EntropyState<float> entropy_state(const c10::BFloat16* z, int64_t n);
math::EntropyState<float> entropy_state(const c10::Half* z, int64_t n);

// The backward's first pass over n float32 logits: the state as entropy_state computes it, and
// e[i] = e^{z_i − m_c} with the per-chunk shifts m_c in chunk_m (exp_chunks(n) entries), so that
// entropy_grad_from_exp needs no second exp per element. e may be the gradient's own buffer.
int64_t exp_chunks(int64_t n);
math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m);
// out[i] = dH/dz_i · gH from the first pass's e and chunk_m; out may alias e.
void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out);

// out[i] = dH/dz_i · gH for n contiguous logits of one row (constants from entropy_grad_row).
void entropy_grad(const float* z, int64_t n, const math::EntropyGradRow<float>& row, float* out);
void entropy_grad(const c10::BFloat16* z, int64_t n, const math::EntropyGradRow<float>& row, c10::BFloat16* out);
void entropy_grad(const c10::Half* z, int64_t n, const math::EntropyGradRow<float>& row, c10::Half* out);

// vecmat's row loop (vecmat_simd.h): acc[s, :] += Σ_r g[s·g_stride + r] · w[r, :] over `rows`
// rows of a row-major [rows, cols] weight, float32 accumulators.
void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::BFloat16* w, int64_t rows,
                 int64_t cols, float* acc);
void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::Half* w, int64_t rows, int64_t cols,
                 float* acc);

}  // namespace vreason::avx2

// AVX-512F: float32 only (the forward and the exp-reusing backward, the hot paths at vocab
// scale); bf16/fp16 keep the AVX2 loops. chunk_m written by this entropy_state_exp must be read
// by this entropy_grad_from_exp (each unit owns its chunking).
namespace vreason::avx512 {

bool supported();  // AVX-512F, with the OS saving the zmm/mask state

math::EntropyState<float> entropy_state(const float* z, int64_t n);
int64_t exp_chunks(int64_t n);
math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m);
void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out);

// vecmat's row loop for bf16 weights (fp16 keeps the AVX2 one).
void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::BFloat16* w, int64_t rows,
                 int64_t cols, float* acc);

}  // namespace vreason::avx512
