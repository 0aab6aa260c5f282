// The SIMD entropy loops (entropy_simd.h) at 16 lanes: AVX-512F, float32 only (bf16/fp16 keep
// the AVX2 loops); and vecmat's row loop (vecmat_simd.h) for bf16 weights. Only AVX-512F instructions are used (masks instead of the DQ-only and_ps), so
// any AVX-512 CPU runs them; only this unit's own functions are compiled for that target (the
// pragma region below, opened after every library header), so the extension still loads on CPUs
// without AVX-512.

// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself, and every intrinsic
// that uses it (max_ps, reduce_*, maskz_mov_ps) then warns -Wmaybe-uninitialized where it is
// inlined: a false positive (GCC bug 105593, fixed in 13), silenced for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "cpu/simd_kernels.h"

namespace vreason::avx512 {

bool supported() {
  __builtin_cpu_init();
  // libgcc's check also requires the OS to save the zmm/mask state (XCR0), not just CPUID.
  return __builtin_cpu_supports("avx512f");
}

}  // namespace vreason::avx512

#pragma GCC push_options
#pragma GCC target("avx512f")

namespace vreason::avx512 {
namespace {

struct Vec {
  static constexpr int64_t kLanes = 16;
  using Reg = __m512;
  using Mask = __mmask16;

  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float v) { return _mm512_set1_ps(v); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  // bf16 → float32 is a 16-bit shift into the high half (exact).
  static Reg load(const c10::BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg fnmadd(Reg a, Reg b, Reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static Reg max(Reg a, Reg acc) { return _mm512_max_ps(a, acc); }
  static Reg exp2n(Reg y, Reg shifted, Reg magic) {
    const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), _mm512_slli_epi32(n, 23)));
  }
  static Mask not_below(Reg x, Reg lo) { return _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ); }
  static Reg keep(Mask k, Reg v) { return _mm512_maskz_mov_ps(k, v); }
  static float reduce_add(Reg v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(Reg v) { return _mm512_reduce_max_ps(v); }
};

}  // namespace
}  // namespace vreason::avx512

#include "cpu/entropy_simd.h"
#include "cpu/vecmat_simd.h"

namespace vreason::avx512 {

math::EntropyState<float> entropy_state(const float* z, int64_t n) {
  return simd::entropy_state_impl<Vec, float, false>(z, n, nullptr, nullptr);
}

int64_t exp_chunks(int64_t n) { return simd::exp_chunks(n); }

math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
  return simd::entropy_state_impl<Vec, float, true>(z, n, e, chunk_m);
}

void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out) {
  simd::entropy_grad_from_exp_impl<Vec>(z, n, e, chunk_m, row, out);
}

void vecmat_rows(const float* g, int64_t samples, int64_t g_stride, const c10::BFloat16* w, int64_t rows,
                 int64_t cols, float* acc) {
  simd::vecmat_rows_impl<Vec>(g, samples, g_stride, w, rows, cols, acc);
}

}  // namespace vreason::avx512

#pragma GCC pop_options
