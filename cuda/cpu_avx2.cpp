// AVX2 entropy row loops. Every function here carries the target attribute instead of the
// whole file being compiled with -mavx2: the extension is built once and must still load on
// CPUs without AVX2, where the scalar path runs (ops dispatch on avx2::supported()).
#include "cpu_avx2.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define VR_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace vreason::avx2 {

bool supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

namespace {

// Below this shift e^x is under float's normal range; such terms are dropped (set to 0), which
// changes s >= 1 by less than one ulp and keeps -inf logits (masked tokens) at exactly 0.
constexpr float kMinShift = -87.0f;

VR_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

VR_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

VR_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

VR_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }

// Round to nearest even, as c10::BFloat16's conversion does; NaN stays a quiet NaN.
VR_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
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

VR_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// e^x for x in [kMinShift, 0] (callers clamp; Cephes expf: x = n ln2 + r, degree-5 polynomial
// in r, 2^n from the exponent bits); about 1 ulp. n is rounded with the 1.5·2^23 trick: after
// the add its low mantissa bits hold n as an integer, saving a round and a convert.
VR_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 magic = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23
  const __m256 shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(shifted, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // n + 127 in [1, 127] sits in the low bits of `shifted`; move it into the exponent field.
  const __m256i pow2n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(magic)),
                       _mm256_set1_epi32(127)),
      23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2n));
}

// e^x with terms below kMinShift (and -inf) exactly 0, and the clamped shift for the e·x term.
VR_AVX2 inline __m256 exp_shifted(__m256 x, __m256* clamped) {
  const __m256 lo = _mm256_set1_ps(kMinShift);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
  *clamped = _mm256_max_ps(x, lo);
  return _mm256_and_ps(exp8(*clamped), keep);
}

VR_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

VR_AVX2 inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One pass over memory: each chunk (L1-resident) is read twice, once for its maximum and once
// for e^{z−m}, so every element costs one exp and the accumulators are rescaled at most once per
// chunk instead of per element (the element-wise online update needs two exps per element).
constexpr int64_t kChunk = 2048;

template <typename T>
VR_AVX2 math::EntropyState<float> entropy_state_impl(const T* z, int64_t n) {
  constexpr float kInf = INFINITY;
  float m = -kInf;
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
  float tail_s = 0.f, tail_t = 0.f;  // the last chunk's elements past a multiple of 8
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const T* p = z + c0;
    const int64_t len = std::min(kChunk, n - c0);
    __m256 mx0 = _mm256_set1_ps(-kInf), mx1 = mx0;
    __m256 unordered = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m256 a = load8(p + i), b = load8(p + i + 8);
      mx0 = _mm256_max_ps(mx0, a);
      mx1 = _mm256_max_ps(mx1, b);
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    }
    for (; i + 8 <= len; i += 8) {
      const __m256 a = load8(p + i);
      mx0 = _mm256_max_ps(mx0, a);
      unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
    float chunk_max = hmax(_mm256_max_ps(mx0, mx1));
    bool has_nan = _mm256_movemask_ps(unordered) != 0;
    for (int64_t j = i; j < len; ++j) {
      const float v = static_cast<float>(p[j]);
      has_nan |= std::isnan(v);
      chunk_max = v > chunk_max ? v : chunk_max;
    }
    if (has_nan) return {m, NAN, NAN};
    if (chunk_max == -kInf) continue;  // every element masked: contributes 0
    if (chunk_max == kInf) return {kInf, NAN, NAN};
    if (chunk_max > m) {
      if (m != -kInf) {
        const float d = m - chunk_max;
        const float scale = std::exp(d);
        const __m256 vd = _mm256_set1_ps(d), vscale = _mm256_set1_ps(scale);
        t0 = _mm256_mul_ps(vscale, _mm256_fmadd_ps(vd, s0, t0));
        t1 = _mm256_mul_ps(vscale, _mm256_fmadd_ps(vd, s1, t1));
        s0 = _mm256_mul_ps(vscale, s0);
        s1 = _mm256_mul_ps(vscale, s1);
      }
      m = chunk_max;
    }
    const __m256 vm = _mm256_set1_ps(m);
    i = 0;
    for (; i + 16 <= len; i += 16) {
      __m256 xa, xb;
      const __m256 ea = exp_shifted(_mm256_sub_ps(load8(p + i), vm), &xa);
      const __m256 eb = exp_shifted(_mm256_sub_ps(load8(p + i + 8), vm), &xb);
      s0 = _mm256_add_ps(s0, ea);
      s1 = _mm256_add_ps(s1, eb);
      t0 = _mm256_fmadd_ps(ea, xa, t0);
      t1 = _mm256_fmadd_ps(eb, xb, t1);
    }
    for (; i + 8 <= len; i += 8) {
      __m256 xa;
      const __m256 ea = exp_shifted(_mm256_sub_ps(load8(p + i), vm), &xa);
      s0 = _mm256_add_ps(s0, ea);
      t0 = _mm256_fmadd_ps(ea, xa, t0);
    }
    // Only the last chunk has a remainder (kChunk is a multiple of 16), so these scalar sums
    // share the final m and need no rescaling.
    for (; i < len; ++i) {
      const float v = static_cast<float>(p[i]);
      if (v == -kInf) continue;
      const float x = v - m;
      const float e = std::exp(x);
      tail_s += e;
      tail_t += e * x;
    }
  }
  return {m, hsum(_mm256_add_ps(s0, s1)) + tail_s, hsum(_mm256_add_ps(t0, t1)) + tail_t};
}

template <typename T>
VR_AVX2 void entropy_grad_impl(const T* z, int64_t n, const math::EntropyGradRow<float>& row, T* out) {
  const __m256 vm = _mm256_set1_ps(row.m);
  const __m256 coef = _mm256_set1_ps(row.coef);
  const __m256 offset = _mm256_set1_ps(row.offset);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x;
    const __m256 e = exp_shifted(_mm256_sub_ps(load8(z + i), vm), &x);
    store8(out + i, _mm256_mul_ps(_mm256_mul_ps(coef, e), _mm256_add_ps(x, offset)));
  }
  for (; i < n; ++i) out[i] = static_cast<T>(math::entropy_grad_elem(row, static_cast<float>(z[i])));
}

}  // namespace

math::EntropyState<float> entropy_state(const float* z, int64_t n) { return entropy_state_impl(z, n); }
math::EntropyState<float> entropy_state(const c10::BFloat16* z, int64_t n) { return entropy_state_impl(z, n); }
math::EntropyState<float> entropy_state(const c10::Half* z, int64_t n) { return entropy_state_impl(z, n); }

void entropy_grad(const float* z, int64_t n, const math::EntropyGradRow<float>& row, float* out) {
  entropy_grad_impl(z, n, row, out);
}
void entropy_grad(const c10::BFloat16* z, int64_t n, const math::EntropyGradRow<float>& row, c10::BFloat16* out) {
  entropy_grad_impl(z, n, row, out);
}
void entropy_grad(const c10::Half* z, int64_t n, const math::EntropyGradRow<float>& row, c10::Half* out) {
  entropy_grad_impl(z, n, row, out);
}

}  // namespace vreason::avx2
