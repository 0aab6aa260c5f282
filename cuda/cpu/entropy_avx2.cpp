// The SIMD entropy loops (entropy_simd.h) at 8 lanes: AVX2 + FMA + F16C, float32, bf16 and fp16.
// Only this unit's own functions are compiled for that target (the pragma region below, opened
// after every library header), so the extension still loads and runs on CPUs without AVX2.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu/simd_kernels.h"

namespace vreason::avx2 {

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace vreason::avx2

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace vreason::avx2 {
namespace {

struct Vec {
  static constexpr int64_t kLanes = 8;
  using Reg = __m256;
  using Mask = __m256;  // all-ones lanes

  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float v) { return _mm256_set1_ps(v); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const c10::BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static Reg load(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  // Round to nearest even, as c10::BFloat16's conversion does; NaN stays a quiet NaN.
  static void store(c10::BFloat16* p, Reg v) {
    __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    bits = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    bits = _mm256_srli_epi32(bits, 16);
    const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    bits = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(bits), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc0)), is_nan));
    // packus works per 128-bit lane: words [0..3 0..3 | 4..7 4..7]; gather qwords 0 and 2.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static void store(c10::Half* p, Reg v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg fnmadd(Reg a, Reg b, Reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static Reg max(Reg a, Reg acc) { return _mm256_max_ps(a, acc); }
  static Reg exp2n(Reg y, Reg shifted, Reg magic) {
    const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(magic));
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(n, 23)));
  }
  static Mask not_below(Reg x, Reg lo) { return _mm256_cmp_ps(x, lo, _CMP_NLT_UQ); }
  static Reg keep(Mask k, Reg v) { return _mm256_and_ps(v, k); }
  static float reduce_add(Reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(Reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace
}  // namespace vreason::avx2

#include "cpu/entropy_simd.h"
#include "cpu/vecmat_simd.h"

namespace vreason::avx2 {

math::EntropyState<float> entropy_state(const float* z, int64_t n) {
  return simd::entropy_state_impl<Vec, float, false>(z, n, nullptr, nullptr);
}
math::EntropyState<float> entropy_state(const c10::BFloat16* z, int64_t n) {
  return simd::entropy_state_impl<Vec, c10::BFloat16, false>(z, n, nullptr, nullptr);
}
math::EntropyState<float> entropy_state(const c10::Half* z, int64_t n) {
  return simd::entropy_state_impl<Vec, c10::Half, false>(z, n, nullptr, nullptr);
}

int64_t exp_chunks(int64_t n) { return simd::exp_chunks(n); }

math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
  return simd::entropy_state_impl<Vec, float, true>(z, n, e, chunk_m);
}

void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out) {
  simd::entropy_grad_from_exp_impl<Vec>(z, n, e, chunk_m, row, out);
}

void entropy_grad(const float* z, int64_t n, const math::EntropyGradRow<float>& row, float* out) {
  simd::entropy_grad_impl<Vec>(z, n, row, out);
}
void entropy_grad(const c10::BFloat16* z, int64_t n, const math::EntropyGradRow<float>& row, c10::BFloat16* out) {
  simd::entropy_grad_impl<Vec>(z, n, row, out);
}
void entropy_grad(const c10::Half* z, int64_t n, const math::EntropyGradRow<float>& row, c10::Half* out) {
  simd::entropy_grad_impl<Vec>(z, n, row, out);
}

void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::BFloat16* w, int64_t rows,
                 int64_t cols, float* acc) {
  simd::vecmat_rows_impl<Vec>(g, samples, g_stride, w, rows, cols, acc);
}
void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::Half* w, int64_t rows, int64_t cols,
                 float* acc) {
  simd::vecmat_rows_impl<Vec>(g, samples, g_stride, w, rows, cols, acc);
}

}  // namespace vreason::avx2

#pragma GCC pop_options
