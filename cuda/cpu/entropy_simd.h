// The SIMD entropy row loops, written once over the vector width. `V` is a unit's vector
// traits (entropy_avx2.cpp: 8 lanes, entropy_avx512.cpp: 16), a struct of static functions:
//
//   kLanes, Reg (the register type), Mask (a lane mask), zero(), set1(f), load(p) (float32, and in
//   AVX2 also bf16/fp16), store(p, v), add/sub/mul, fmadd(a, b, c) = a·b + c, fnmadd = c − a·b,
//   max(a, acc) (acc where a is NaN), exp2n(y, shifted, magic) (y · 2^n, n held in `shifted`'s
//   low mantissa bits), not_below(x, lo) (x >= lo, or NaN), keep(mask, v) (0 outside the mask),
//   reduce_add, reduce_max.
//
// Included by those units only, after every other header and inside their
// `#pragma GCC target` region, so each instantiation is compiled for its unit's target and has
// internal linkage through its traits type (an anonymous-namespace struct): nothing here can
// leak an AVX instruction into code that runs on other CPUs.

namespace vreason::simd {

// Below this shift e^x is under float's normal range; such terms are dropped (set to 0), which
// changes s >= 1 by less than one ulp and keeps -inf logits (masked tokens) at exactly 0. At
// -86, 2^n stays a normal number for exp's exponent-field add.
constexpr float kMinShift = -86.0f;

// One pass over memory: each chunk (L1-resident) is read twice, once for its maximum and once
// for e^{z−m}, so every element costs one exp and the accumulators are rescaled at most once per
// chunk instead of per element (the element-wise online update needs two exps per element).
// A multiple of 4 vectors of either width, so only a row's last chunk has a remainder.
constexpr int64_t kChunk = 2048;

constexpr int64_t exp_chunks(int64_t n) { return (n + kChunk - 1) / kChunk; }

// e^x for x in [kMinShift, 0]; any other input gives garbage, which callers mask (Cephes
// expf: x = n ln2 + r, degree-5 polynomial in r; about 1 ulp). The FMA pipes bound this loop, so
// n is rounded with the 1.5·2^23 trick (its low mantissa bits then hold n as an integer) and
// 2^n is applied as an integer add to y's exponent field instead of a multiply.
template <typename V>
inline typename V::Reg exp_poly(typename V::Reg x) {
  const auto magic = V::set1(12582912.0f);  // 1.5 * 2^23
  const auto shifted = V::fmadd(x, V::set1(1.44269504088896341f), magic);
  const auto n = V::sub(shifted, magic);
  auto r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  auto y = V::set1(1.9875691500e-4f);
  y = V::fmadd(y, r, V::set1(1.3981999507e-3f));
  y = V::fmadd(y, r, V::set1(8.3334519073e-3f));
  y = V::fmadd(y, r, V::set1(4.1665795894e-2f));
  y = V::fmadd(y, r, V::set1(1.6666665459e-1f));
  y = V::fmadd(y, r, V::set1(5.0000001201e-1f));
  y = V::fmadd(y, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::exp2n(y, shifted, magic);
}

// e^x with terms below kMinShift (and -inf) exactly 0, and x with those lanes zeroed for the
// e·x term (so -inf gives 0, not 0·-inf). NaN lanes stay NaN in both, so a NaN logit turns the
// row's sum into NaN, which the caller reports.
template <typename V>
inline typename V::Reg exp_shifted(typename V::Reg x, typename V::Reg* masked_x) {
  const auto keep = V::not_below(x, V::set1(kMinShift));
  *masked_x = V::keep(keep, x);
  return V::keep(keep, exp_poly<V>(x));
}

// With kStore the pass also writes e[i] = e^{z_i − m_c} (0 for z_i − m_c below kMinShift) and
// chunk_m[c] = m_c, the running max chunk c was shifted by: the backward then rescales e by
// e^{m_c − m} once the row's max m is known, instead of evaluating a second exp per element.
template <typename V, typename T, bool kStore>
inline math::EntropyState<float> entropy_state_impl(const T* z, int64_t n, float* e, float* chunk_m) {
  constexpr int64_t L = V::kLanes;
  constexpr float kInf = INFINITY;
  float m = -kInf;
  auto s0 = V::zero(), s1 = V::zero(), t0 = V::zero(), t1 = V::zero();
  float tail_s = 0.f, tail_t = 0.f;  // the last chunk's elements past a multiple of L
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const T* p = z + c0;
    const int64_t len = std::min(kChunk, n - c0);
    // max(a, acc) returns acc when a is NaN, so NaN never becomes the chunk's max; NaN is
    // caught by the exp pass below (it makes the sums NaN).
    auto mx0 = V::set1(-kInf), mx1 = mx0;
    int64_t i = 0;
    for (; i + 2 * L <= len; i += 2 * L) {
      mx0 = V::max(V::load(p + i), mx0);
      mx1 = V::max(V::load(p + i + L), mx1);
    }
    for (; i + L <= len; i += L) mx0 = V::max(V::load(p + i), mx0);
    float chunk_max = V::reduce_max(V::max(mx0, mx1));
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
        const auto vd = V::set1(d), vscale = V::set1(scale);
        if (scale == 0.f) {
          // Everything so far is below float's range next to the new max; d·s may even
          // overflow to -inf (logits near ±FLT_MAX), and 0·(−inf) would read as NaN. A NaN
          // already in s (a NaN logit) survives as 0·NaN.
          s0 = V::mul(vscale, s0);
          s1 = V::mul(vscale, s1);
          t0 = s0;
          t1 = s1;
        } else {
          t0 = V::mul(vscale, V::fmadd(vd, s0, t0));
          t1 = V::mul(vscale, V::fmadd(vd, s1, t1));
          s0 = V::mul(vscale, s0);
          s1 = V::mul(vscale, s1);
        }
      }
      m = chunk_max;
    }
    const auto vm = V::set1(m);
    float* ep = kStore ? e + c0 : nullptr;
    if constexpr (kStore) chunk_m[c0 / kChunk] = m;
    i = 0;
    for (; i + 4 * L <= len; i += 4 * L) {
      typename V::Reg xa, xb, xc, xd;
      const auto ea = exp_shifted<V>(V::sub(V::load(p + i), vm), &xa);
      const auto eb = exp_shifted<V>(V::sub(V::load(p + i + L), vm), &xb);
      const auto ec = exp_shifted<V>(V::sub(V::load(p + i + 2 * L), vm), &xc);
      const auto ed = exp_shifted<V>(V::sub(V::load(p + i + 3 * L), vm), &xd);
      if constexpr (kStore) {
        V::store(ep + i, ea);
        V::store(ep + i + L, eb);
        V::store(ep + i + 2 * L, ec);
        V::store(ep + i + 3 * L, ed);
      }
      s0 = V::add(s0, V::add(ea, ec));
      s1 = V::add(s1, V::add(eb, ed));
      t0 = V::fmadd(ea, xa, V::fmadd(ec, xc, t0));
      t1 = V::fmadd(eb, xb, V::fmadd(ed, xd, t1));
    }
    for (; i + L <= len; i += L) {
      typename V::Reg xa;
      const auto ea = exp_shifted<V>(V::sub(V::load(p + i), vm), &xa);
      if constexpr (kStore) V::store(ep + i, ea);
      s0 = V::add(s0, ea);
      t0 = V::fmadd(ea, xa, t0);
    }
    // Only the last chunk has a remainder, so these scalar sums share the final m and need no
    // rescaling.
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
  return {m, V::reduce_add(V::add(s0, s1)) + tail_s, V::reduce_add(V::add(t0, t1)) + tail_t};
}

// out[i] = coef · e^{z_i−m} · (z_i − m + offset): the two-exp backward (bf16/fp16 outputs).
template <typename V, typename T>
inline void entropy_grad_impl(const T* z, int64_t n, const math::EntropyGradRow<float>& row, T* out) {
  constexpr int64_t L = V::kLanes;
  const auto vm = V::set1(row.m), coef = V::set1(row.coef), offset = V::set1(row.offset);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    typename V::Reg x;
    const auto e = exp_shifted<V>(V::sub(V::load(z + i), vm), &x);
    V::store(out + i, V::mul(V::mul(coef, e), V::add(x, offset)));
  }
  for (; i < n; ++i) out[i] = static_cast<T>(math::entropy_grad_elem(row, static_cast<float>(z[i])));
}

// out[i] = coef · e^{z_i−m} · (z_i − m + offset) with e^{z_i−m} = e[i] · e^{m_c − m}: loads and
// FMAs only, one exp per chunk. Lanes with z_i − m below kMinShift (and -inf) give exactly 0,
// as in entropy_grad_impl. out may alias e (each vector is read before it is written).
template <typename V>
inline void entropy_grad_from_exp_impl(const float* z, int64_t n, const float* e, const float* chunk_m,
                                       const math::EntropyGradRow<float>& row, float* out) {
  constexpr int64_t L = V::kLanes;
  const auto vm = V::set1(row.m), offset = V::set1(row.offset), vmin = V::set1(kMinShift);
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
    // chunk_m <= m; an all -inf chunk before the first finite logit has chunk_m = -inf: scale 0.
    const float scale = row.coef * std::exp(chunk_m[c0 / kChunk] - row.m);
    const auto vscale = V::set1(scale);
    const float* zp = z + c0;
    const float* ep = e + c0;
    float* op = out + c0;
    int64_t i = 0;
    for (; i + 2 * L <= len; i += 2 * L) {
      const auto xa = V::sub(V::load(zp + i), vm), xb = V::sub(V::load(zp + i + L), vm);
      const auto ka = V::not_below(xa, vmin), kb = V::not_below(xb, vmin);
      const auto ga = V::mul(V::mul(vscale, V::load(ep + i)), V::add(xa, offset));
      const auto gb = V::mul(V::mul(vscale, V::load(ep + i + L)), V::add(xb, offset));
      V::store(op + i, V::keep(ka, ga));
      V::store(op + i + L, V::keep(kb, gb));
    }
    for (; i + L <= len; i += L) {
      const auto xa = V::sub(V::load(zp + i), vm);
      const auto ga = V::mul(V::mul(vscale, V::load(ep + i)), V::add(xa, offset));
      V::store(op + i, V::keep(V::not_below(xa, vmin), ga));
    }
    for (; i < len; ++i) {
      // e == 0 (masked, or below float's range): p = 0, and x may be -inf (|z| near FLT_MAX).
      op[i] = ep[i] == 0.f ? 0.f : scale * ep[i] * ((zp[i] - row.m) + row.offset);
    }
  }
}

}  // namespace vreason::simd
