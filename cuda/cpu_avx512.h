// AVX-512F row loops of the float32 CPU entropy kernels: the AVX2 algorithm (cpu_avx2.h) on
// 16 lanes. Only float32 has them (the forward and the exp-reusing backward, the hot paths at
// vocab scale); bf16/fp16 keep the AVX2 loops. Same build rule as cpu_avx2.cpp: functions carry
// target("avx512f"), and callers check avx512::supported() first.
#pragma once

#include <cstdint>

#include "vreason_math.cuh"

namespace vreason::avx512 {

bool supported();

// As avx2::entropy_state, for float32.
math::EntropyState<float> entropy_state(const float* z, int64_t n);

// As avx2::exp_chunks / entropy_state_exp / entropy_grad_from_exp; chunk_m written by this
// entropy_state_exp must be read by this entropy_grad_from_exp (the chunking is this file's).
int64_t exp_chunks(int64_t n);
math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m);
void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out);

}  // namespace vreason::avx512

namespace vreason {

// Which CPU entropy path runs: 0 scalar, 1 AVX2, 2 AVX-512F (float32; bf16/fp16 use AVX2 at
// level 2). The default is the highest the CPU supports, or 0 when VREASON_DISABLE_SIMD was set
// at load time; set_simd_enabled (ops.h) maps on to this (true: the highest, false: 0). Tests
// select each level to compare the paths.
int max_simd_level();
int simd_level();
int set_simd_level(int level);  // clamped to [0, max_simd_level()]; returns the previous level

}  // namespace vreason
