// AVX-512F entropy row loops for float32: cpu_avx2.cpp's algorithm and exp approximation widened
// to 16 lanes. Each function carries the target attribute rather than the file being compiled
// with -mavx512f, so the extension still loads on CPUs without AVX-512 (ops dispatch on
// avx512::supported()). Only AVX-512F instructions are used (masks instead of the DQ-only
// and_ps), so any AVX-512 CPU runs them.
#include "cpu_avx512.h"

// GCC 12's avx512fintrin.h initialises _mm512_undefined_ps() from itself, and every intrinsic
// that uses it (max_ps, reduce_*, maskz_mov_ps) then warns -Wmaybe-uninitialized where it is
// inlined: a false positive (GCC bug 105593, fixed in 13), silenced for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#define VR_AVX512 __attribute__((target("avx512f")))

namespace vreason::avx512 {

bool supported() {
  __builtin_cpu_init();
  // libgcc's check also requires the OS to save the zmm/mask state (XCR0), not just CPUID.
  return __builtin_cpu_supports("avx512f");
}

namespace {

// As in cpu_avx2.cpp: terms below this shift are dropped (exactly 0), -inf included, and 2^n
// stays a normal number for exp16's exponent-field add.
constexpr float kMinShift = -86.0f;

// e^x for x in [kMinShift, 0] (other inputs give garbage the callers mask): cpu_avx2.cpp's exp8,
// the same constants and operation order, so both paths round alike.
VR_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 magic = _mm512_set1_ps(12582912.0f);  // 1.5 * 2^23
  const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic);
  const __m512 n = _mm512_sub_ps(shifted, magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i n_int = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
  return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(y), _mm512_slli_epi32(n_int, 23)));
}

// Lanes with x below kMinShift (and -inf) give 0 in both e^x and masked_x, so -inf contributes
// 0 rather than 0·-inf; NaN lanes pass the unordered compare and stay NaN, so a NaN logit makes
// the row's sums NaN, which the caller reports.
VR_AVX512 inline __m512 exp_shifted(__m512 x, __m512* masked_x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kMinShift), _CMP_NLT_UQ);
  *masked_x = _mm512_maskz_mov_ps(keep, x);
  return _mm512_maskz_mov_ps(keep, exp16(x));
}

// Same chunking as cpu_avx2.cpp (L1-resident chunks read twice: max, then one exp per element);
// a multiple of 64, so only a row's last chunk has a remainder.
constexpr int64_t kChunk = 2048;

template <bool kStore>
VR_AVX512 math::EntropyState<float> entropy_state_impl(const float* z, int64_t n, float* e, float* chunk_m) {
  constexpr float kInf = INFINITY;
  float m = -kInf;
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  __m512 t0 = _mm512_setzero_ps(), t1 = _mm512_setzero_ps();
  float tail_s = 0.f, tail_t = 0.f;  // the last chunk's elements past a multiple of 16
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const float* p = z + c0;
    const int64_t len = std::min(kChunk, n - c0);
    // max_ps(a, mx) returns mx when a is NaN, so NaN never becomes the chunk's max; the exp pass
    // below catches it.
    __m512 mx0 = _mm512_set1_ps(-kInf), mx1 = mx0;
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      mx0 = _mm512_max_ps(_mm512_loadu_ps(p + i), mx0);
      mx1 = _mm512_max_ps(_mm512_loadu_ps(p + i + 16), mx1);
    }
    for (; i + 16 <= len; i += 16) mx0 = _mm512_max_ps(_mm512_loadu_ps(p + i), mx0);
    float chunk_max = _mm512_reduce_max_ps(_mm512_max_ps(mx0, mx1));
    for (int64_t j = i; j < len; ++j) chunk_max = p[j] > chunk_max ? p[j] : chunk_max;
    if (chunk_max == -kInf) {  // every element -inf (contributes 0) or NaN: the rare path
      for (int64_t j = 0; j < len; ++j) {
        if (std::isnan(p[j])) return {m, NAN, NAN};
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
        const __m512 vd = _mm512_set1_ps(d), vscale = _mm512_set1_ps(std::exp(d));
        t0 = _mm512_mul_ps(vscale, _mm512_fmadd_ps(vd, s0, t0));
        t1 = _mm512_mul_ps(vscale, _mm512_fmadd_ps(vd, s1, t1));
        s0 = _mm512_mul_ps(vscale, s0);
        s1 = _mm512_mul_ps(vscale, s1);
      }
      m = chunk_max;
    }
    const __m512 vm = _mm512_set1_ps(m);
    float* ep = kStore ? e + c0 : nullptr;
    if constexpr (kStore) chunk_m[c0 / kChunk] = m;
    i = 0;
    for (; i + 64 <= len; i += 64) {
      __m512 xa, xb, xc, xd;
      const __m512 ea = exp_shifted(_mm512_sub_ps(_mm512_loadu_ps(p + i), vm), &xa);
      const __m512 eb = exp_shifted(_mm512_sub_ps(_mm512_loadu_ps(p + i + 16), vm), &xb);
      const __m512 ec = exp_shifted(_mm512_sub_ps(_mm512_loadu_ps(p + i + 32), vm), &xc);
      const __m512 ed = exp_shifted(_mm512_sub_ps(_mm512_loadu_ps(p + i + 48), vm), &xd);
      if constexpr (kStore) {
        _mm512_storeu_ps(ep + i, ea);
        _mm512_storeu_ps(ep + i + 16, eb);
        _mm512_storeu_ps(ep + i + 32, ec);
        _mm512_storeu_ps(ep + i + 48, ed);
      }
      s0 = _mm512_add_ps(s0, _mm512_add_ps(ea, ec));
      s1 = _mm512_add_ps(s1, _mm512_add_ps(eb, ed));
      t0 = _mm512_fmadd_ps(ea, xa, _mm512_fmadd_ps(ec, xc, t0));
      t1 = _mm512_fmadd_ps(eb, xb, _mm512_fmadd_ps(ed, xd, t1));
    }
    for (; i + 16 <= len; i += 16) {
      __m512 xa;
      const __m512 ea = exp_shifted(_mm512_sub_ps(_mm512_loadu_ps(p + i), vm), &xa);
      if constexpr (kStore) _mm512_storeu_ps(ep + i, ea);
      s0 = _mm512_add_ps(s0, ea);
      t0 = _mm512_fmadd_ps(ea, xa, t0);
    }
    // Only the last chunk has a remainder, so these scalar sums share the final m.
    for (; i < len; ++i) {
      const float x = p[i] - m;
      const float ex = p[i] == -kInf ? 0.f : std::exp(x);
      if constexpr (kStore) ep[i] = ex;
      if (ex == 0.f) continue;  // -inf (masked), or too small to change s and t
      tail_s += ex;
      tail_t += ex * x;
    }
  }
  return {m, _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) + tail_s,
          _mm512_reduce_add_ps(_mm512_add_ps(t0, t1)) + tail_t};
}

// As cpu_avx2.cpp's entropy_grad_from_exp_impl: loads and multiplies, one exp per chunk; lanes
// with z_i − m below kMinShift (and -inf) give exactly 0. out may alias e.
VR_AVX512 void entropy_grad_from_exp_impl(const float* z, int64_t n, const float* e, const float* chunk_m,
                                          const math::EntropyGradRow<float>& row, float* out) {
  const __m512 vm = _mm512_set1_ps(row.m);
  const __m512 offset = _mm512_set1_ps(row.offset);
  const __m512 vmin = _mm512_set1_ps(kMinShift);
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    // chunk_m <= m; an all -inf chunk before the first finite logit has chunk_m = -inf: scale 0.
    const float scale = row.coef * std::exp(chunk_m[c0 / kChunk] - row.m);
    const __m512 vscale = _mm512_set1_ps(scale);
    const float* zp = z + c0;
    const float* ep = e + c0;
    float* op = out + c0;
    int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      const __m512 xa = _mm512_sub_ps(_mm512_loadu_ps(zp + i), vm);
      const __m512 xb = _mm512_sub_ps(_mm512_loadu_ps(zp + i + 16), vm);
      const __mmask16 ka = _mm512_cmp_ps_mask(xa, vmin, _CMP_NLT_UQ);
      const __mmask16 kb = _mm512_cmp_ps_mask(xb, vmin, _CMP_NLT_UQ);
      const __m512 ga = _mm512_mul_ps(_mm512_mul_ps(vscale, _mm512_loadu_ps(ep + i)), _mm512_add_ps(xa, offset));
      const __m512 gb = _mm512_mul_ps(_mm512_mul_ps(vscale, _mm512_loadu_ps(ep + i + 16)), _mm512_add_ps(xb, offset));
      _mm512_storeu_ps(op + i, _mm512_maskz_mov_ps(ka, ga));
      _mm512_storeu_ps(op + i + 16, _mm512_maskz_mov_ps(kb, gb));
    }
    for (; i + 16 <= len; i += 16) {
      const __m512 xa = _mm512_sub_ps(_mm512_loadu_ps(zp + i), vm);
      const __mmask16 ka = _mm512_cmp_ps_mask(xa, vmin, _CMP_NLT_UQ);
      const __m512 ga = _mm512_mul_ps(_mm512_mul_ps(vscale, _mm512_loadu_ps(ep + i)), _mm512_add_ps(xa, offset));
      _mm512_storeu_ps(op + i, _mm512_maskz_mov_ps(ka, ga));
    }
    for (; i < len; ++i) {
      const float x = zp[i] - row.m;
      op[i] = zp[i] == -INFINITY ? 0.f : scale * ep[i] * (x + row.offset);
    }
  }
}

}  // namespace

math::EntropyState<float> entropy_state(const float* z, int64_t n) {
  return entropy_state_impl<false>(z, n, nullptr, nullptr);
}

int64_t exp_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

math::EntropyState<float> entropy_state_exp(const float* z, int64_t n, float* e, float* chunk_m) {
  return entropy_state_impl<true>(z, n, e, chunk_m);
}

void entropy_grad_from_exp(const float* z, int64_t n, const float* e, const float* chunk_m,
                           const math::EntropyGradRow<float>& row, float* out) {
  entropy_grad_from_exp_impl(z, n, e, chunk_m, row, out);
}

}  // namespace vreason::avx512
