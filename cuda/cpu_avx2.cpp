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
// changes s >= 1 by less than one ulp and keeps -inf logits (masked tokens) at exactly 0. At
// -86, 2^n stays a normal number for exp8's exponent-field add.
constexpr float kMinShift = -86.0f;

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

// e^x for x in [kMinShift, 0]; any other input gives garbage, which callers mask (Cephes
// expf: x = n ln2 + r, degree-5 polynomial in r; about 1 ulp). The FMA pipes bound this loop, so
// n is rounded with the 1.5·2^23 trick (its low mantissa bits then hold n as an integer) and
// 2^n is applied as an integer add to y's exponent field instead of a multiply.
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
  const __m256i n_int = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(magic));
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(n_int, 23)));
}

// e^x with terms below kMinShift (and -inf) exactly 0, and x with those lanes zeroed for the
// e·x term (so -inf gives 0, not 0·-inf). NaN lanes stay NaN in both, so a NaN logit turns the
// row's sum into NaN, which the caller reports.
VR_AVX2 inline __m256 exp_shifted(__m256 x, __m256* masked_x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(kMinShift), _CMP_NLT_UQ);  // x >= min, or NaN
  *masked_x = _mm256_and_ps(x, keep);
  return _mm256_and_ps(exp8(x), keep);
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

// With kStore the pass also writes e[i] = e^{z_i − m_c} (0 for z_i − m_c below kMinShift) and
// chunk_m[c] = m_c, the running max chunk c was shifted by: the backward then rescales e by
// e^{m_c − m} once the row's max m is known, instead of evaluating a second exp per element.
template <typename T, bool kStore>
VR_AVX2 math::EntropyState<float> entropy_state_impl(const T* z, int64_t n, float* e, float* chunk_m) {
  constexpr float kInf = INFINITY;
  float m = -kInf;
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
  float tail_s = 0.f, tail_t = 0.f;  // the last chunk's elements past a multiple of 8
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const T* p = z + c0;
    const int64_t len = std::min(kChunk, n - c0);
    // max_ps(a, mx) returns mx when a is NaN, so NaN never becomes the chunk's max; NaN is
    // caught by the exp pass below (it makes the sums NaN).
    __m256 mx0 = _mm256_set1_ps(-kInf), mx1 = mx0;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      mx0 = _mm256_max_ps(load8(p + i), mx0);
      mx1 = _mm256_max_ps(load8(p + i + 8), mx1);
    }
    for (; i + 8 <= len; i += 8) mx0 = _mm256_max_ps(load8(p + i), mx0);
    float chunk_max = hmax(_mm256_max_ps(mx0, mx1));
    for (int64_t j = i; j < len; ++j) {
      const float v = static_cast<float>(p[j]);
      chunk_max = v > chunk_max ? v : chunk_max;
    }
    if (chunk_max == -kInf) {  // every element -inf (contributes 0) or NaN: the rare path
      for (int64_t j = 0; j < len; ++j) {
        if (std::isnan(static_cast<float>(p[j]))) return {m, NAN, NAN};
      }
      if constexpr (kStore) {
        std::fill(e + c0, e + c0 + len, 0.f);
        chunk_m[c0 / kChunk] = m;
      }
      continue;
    }
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
    float* ep = kStore ? e + c0 : nullptr;
    if constexpr (kStore) chunk_m[c0 / kChunk] = m;
    i = 0;
    for (; i + 32 <= len; i += 32) {
      __m256 xa, xb, xc, xd;
      const __m256 ea = exp_shifted(_mm256_sub_ps(load8(p + i), vm), &xa);
      const __m256 eb = exp_shifted(_mm256_sub_ps(load8(p + i + 8), vm), &xb);
      const __m256 ec = exp_shifted(_mm256_sub_ps(load8(p + i + 16), vm), &xc);
      const __m256 ed = exp_shifted(_mm256_sub_ps(load8(p + i + 24), vm), &xd);
      if constexpr (kStore) {
        store8(ep + i, ea);
        store8(ep + i + 8, eb);
        store8(ep + i + 16, ec);
        store8(ep + i + 24, ed);
      }
      s0 = _mm256_add_ps(s0, _mm256_add_ps(ea, ec));
      s1 = _mm256_add_ps(s1, _mm256_add_ps(eb, ed));
      t0 = _mm256_fmadd_ps(ea, xa, _mm256_fmadd_ps(ec, xc, t0));
      t1 = _mm256_fmadd_ps(eb, xb, _mm256_fmadd_ps(ed, xd, t1));
    }
    for (; i + 8 <= len; i += 8) {
      __m256 xa;
      const __m256 ea = exp_shifted(_mm256_sub_ps(load8(p + i), vm), &xa);
      if constexpr (kStore) store8(ep + i, ea);
      s0 = _mm256_add_ps(s0, ea);
      t0 = _mm256_fmadd_ps(ea, xa, t0);
    }
    // Only the last chunk has a remainder (kChunk is a multiple of 16), so these scalar sums
    // share the final m and need no rescaling.
    for (; i < len; ++i) {
      const float v = static_cast<float>(p[i]);
      const float x = v - m;
      const float ex = v == -kInf ? 0.f : std::exp(x);
      if constexpr (kStore) ep[i] = ex;
      if (ex == 0.f) continue;  // -inf (masked), or too small to change s and t
      tail_s += ex;
      tail_t += ex * x;
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

// out[i] = coef · e^{z_i−m} · (z_i − m + offset) with e^{z_i−m} = e[i] · e^{m_c − m}: loads and
// FMAs only, one exp per chunk. Lanes with z_i − m below kMinShift (and -inf) give exactly 0,
// as in entropy_grad_impl. out may alias e (each vector is read before it is written).
VR_AVX2 void entropy_grad_from_exp_impl(const float* z, int64_t n, const float* e, const float* chunk_m,
                                        const math::EntropyGradRow<float>& row, float* out) {
  const __m256 vm = _mm256_set1_ps(row.m);
  const __m256 offset = _mm256_set1_ps(row.offset);
  const __m256 vmin = _mm256_set1_ps(kMinShift);
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    // chunk_m <= m; an all -inf chunk before the first finite logit has chunk_m = -inf: scale 0.
    const float scale = row.coef * std::exp(chunk_m[c0 / kChunk] - row.m);
    const __m256 vscale = _mm256_set1_ps(scale);
    const float* zp = z + c0;
    const float* ep = e + c0;
    float* op = out + c0;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m256 xa = _mm256_sub_ps(_mm256_loadu_ps(zp + i), vm);
      const __m256 xb = _mm256_sub_ps(_mm256_loadu_ps(zp + i + 8), vm);
      const __m256 ka = _mm256_cmp_ps(xa, vmin, _CMP_NLT_UQ);
      const __m256 kb = _mm256_cmp_ps(xb, vmin, _CMP_NLT_UQ);
      const __m256 ga = _mm256_mul_ps(_mm256_mul_ps(vscale, _mm256_loadu_ps(ep + i)), _mm256_add_ps(xa, offset));
      const __m256 gb = _mm256_mul_ps(_mm256_mul_ps(vscale, _mm256_loadu_ps(ep + i + 8)), _mm256_add_ps(xb, offset));
      _mm256_storeu_ps(op + i, _mm256_and_ps(ga, ka));
      _mm256_storeu_ps(op + i + 8, _mm256_and_ps(gb, kb));
    }
    for (; i + 8 <= len; i += 8) {
      const __m256 xa = _mm256_sub_ps(_mm256_loadu_ps(zp + i), vm);
      const __m256 ka = _mm256_cmp_ps(xa, vmin, _CMP_NLT_UQ);
      const __m256 ga = _mm256_mul_ps(_mm256_mul_ps(vscale, _mm256_loadu_ps(ep + i)), _mm256_add_ps(xa, offset));
      _mm256_storeu_ps(op + i, _mm256_and_ps(ga, ka));
    }
    for (; i < len; ++i) {
      const float x = zp[i] - row.m;
      op[i] = zp[i] == -INFINITY ? 0.f : scale * ep[i] * (x + row.offset);
    }
  }
}

}  // namespace

math::EntropyState<float> entropy_state(const float* z, int64_t n) {
  return entropy_state_impl<float, false>(z, n, nullptr, nullptr);
}
math::EntropyState<float> entropy_state(const c10::BFloat16* z, int64_t n) {
  return entropy_state_impl<c10::BFloat16, false>(z, n, nullptr, nullptr);
}
math::EntropyState<float> entropy_state(const c10::Half* z, int64_t n) {
  return entropy_state_impl<c10::Half, false>(z, n, nullptr, nullptr);
}

int64_t exp_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
  return entropy_state_impl<float, true>(z, n, e, chunk_m);
}

void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out) {
  entropy_grad_from_exp_impl(z, n, e, chunk_m, row, out);
}

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
