// AVX2 row loops of the CPU entropy kernels. They live in their own translation unit whose
// functions carry target("avx2,fma,f16c"), so the extension still loads and runs (scalar path)
// on CPUs without AVX2; callers check avx2::supported() first.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstdint>

#include "vreason_math.cuh"

namespace vreason::avx2 {

bool supported();

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

}  // namespace vreason::avx2
