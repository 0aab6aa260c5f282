// Per-element and per-row arithmetic of the vreason operators, shared by the CPU kernels (g++)
// and the CUDA kernels (nvcc), so that the CPU tests exercise the math the GPU runs.
// No torch headers: nvcc compiles this without the ATen include tree.
#pragma once

#if defined(__CUDACC__)
#define VR_HD __host__ __device__ __forceinline__
#else
#define VR_HD inline
#include <cmath>
#endif

namespace vreason::math {

#if defined(__CUDACC__)
VR_HD float vr_exp(float x) { return expf(x); }
VR_HD double vr_exp(double x) { return exp(x); }
VR_HD float vr_log(float x) { return logf(x); }
VR_HD double vr_log(double x) { return log(x); }
VR_HD float vr_sqrt(float x) { return sqrtf(x); }
VR_HD double vr_sqrt(double x) { return sqrt(x); }
VR_HD bool vr_isfinite(float x) { return isfinite(x); }
VR_HD bool vr_isfinite(double x) { return isfinite(x); }
#else
inline float vr_exp(float x) { return std::exp(x); }
inline double vr_exp(double x) { return std::exp(x); }
inline float vr_log(float x) { return std::log(x); }
inline double vr_log(double x) { return std::log(x); }
inline float vr_sqrt(float x) { return std::sqrt(x); }
inline double vr_sqrt(double x) { return std::sqrt(x); }
inline bool vr_isfinite(float x) { return std::isfinite(x); }
inline bool vr_isfinite(double x) { return std::isfinite(x); }
#endif

// ---- entropy ---------------------------------------------------------------------------------
//
// A row's state relative to its running maximum m:  s = Σ e^{z−m},  t = Σ e^{z−m} (z−m).
// Then H = log s − t / s. Keeping t relative to m (instead of Σ p·z and H = log s + m − Σp z)
// avoids subtracting two numbers of the logits' magnitude: with |z| ~ 1e4 the absolute form
// loses ~1e-3 of H in float32, this form keeps full relative precision.
template <typename acc_t>
struct EntropyState {
  acc_t m;  // running max; -inf while every element seen so far is -inf
  acc_t s;
  acc_t t;
};

template <typename acc_t>
VR_HD EntropyState<acc_t> entropy_init() {
  return {-static_cast<acc_t>(INFINITY), acc_t(0), acc_t(0)};
}

// Re-expresses (s, t) relative to a new maximum m_new >= st.m. An empty state (s == 0) has
// nothing to rescale; testing it avoids -inf * 0 when st.m is still -inf.
template <typename acc_t>
VR_HD void entropy_rebase(EntropyState<acc_t>& st, acc_t m_new) {
  if (st.s == acc_t(0)) {
    st.m = m_new;
    return;
  }
  const acc_t d = st.m - m_new;  // <= 0
  const acc_t scale = vr_exp(d);
  if (scale == acc_t(0)) {
    // The old terms are below the type's range next to the new max. d·s may even overflow to
    // -inf (logits near ±FLT_MAX, or masked with finfo.min instead of -inf), and 0·(−inf)
    // would turn a row with a well-defined entropy into NaN. Only a NaN already in s (a NaN
    // logit) must survive, as 0·NaN.
    st.s = scale * st.s;
    st.t = st.s;
    st.m = m_new;
    return;
  }
  st.t = scale * (st.t + d * st.s);
  st.s = scale * st.s;
  st.m = m_new;
}

// Adds x = z − m (<= 0) of one element. `-inf` logits (masked tokens) contribute exactly 0;
// NaN makes s NaN, which entropy_row_ok reports.
template <typename acc_t>
VR_HD void entropy_add_shifted(EntropyState<acc_t>& st, acc_t x) {
  const acc_t e = vr_exp(x);
  st.s += e;
  st.t += e > acc_t(0) ? e * x : acc_t(0);
}

// Online update with one logit. +inf raises m to +inf and turns s into NaN (inf − inf).
template <typename acc_t>
VR_HD void entropy_push(EntropyState<acc_t>& st, acc_t z) {
  if (z > st.m) entropy_rebase(st, z);
  if (z == -static_cast<acc_t>(INFINITY)) return;
  entropy_add_shifted(st, z - st.m);
}

// Combines two states of disjoint parts of one row (threads, SIMD lanes, warps, row segments).
template <typename acc_t>
VR_HD EntropyState<acc_t> entropy_merge(EntropyState<acc_t> a, EntropyState<acc_t> b) {
  // NaN-safe ordering: a NaN s must survive the merge, so rebase both onto the larger max.
  const acc_t m = a.m > b.m ? a.m : b.m;
  entropy_rebase(a, m);
  entropy_rebase(b, m);
  return {m, a.s + b.s, a.t + b.t};
}

// A row has an entropy iff it has a finite maximum (not all -inf, no +inf) and no NaN.
template <typename acc_t>
VR_HD bool entropy_row_ok(const EntropyState<acc_t>& st) {
  return vr_isfinite(st.m) && vr_isfinite(st.s) && vr_isfinite(st.t) && st.s > acc_t(0);
}

template <typename acc_t>
VR_HD acc_t entropy_finish(const EntropyState<acc_t>& st) {
  const acc_t h = vr_log(st.s) - st.t / st.s;
  // H >= 0 exactly; rounding of a (nearly) one-hot row can land a few ulps below.
  return h > acc_t(0) ? h : acc_t(0);
}

// Per-row constants of the backward: dH/dz_i = −p_i (log p_i + H), p_i = e^{z_i−m}/s, so with
// x_i = z_i − m:  grad_i = coef · e^{x_i} · (x_i + offset), coef = −gH/s, offset = H − log s.
template <typename acc_t>
struct EntropyGradRow {
  acc_t m;
  acc_t coef;
  acc_t offset;
};

template <typename acc_t>
VR_HD EntropyGradRow<acc_t> entropy_grad_row(const EntropyState<acc_t>& st, acc_t h, acc_t grad_h) {
  return {st.m, -grad_h / st.s, h - vr_log(st.s)};
}

template <typename acc_t>
VR_HD acc_t entropy_grad_elem(const EntropyGradRow<acc_t>& row, acc_t z) {
  const acc_t x = z - row.m;
  const acc_t e = vr_exp(x);
  // p = 0 (a -inf logit, or one below the type's range): p log p -> 0. Tested on e rather than
  // on z, since x itself may be -inf for finite z (z − m overflows near ±FLT_MAX): 0·(−inf).
  if (e == acc_t(0)) return acc_t(0);
  return row.coef * e * (x + row.offset);
}

// ---- value_update ----------------------------------------------------------------------------
//
// v = (v0+δ)/‖v0+δ‖·‖v0‖ per row. Zero-norm rule: where ‖v0+δ‖ == 0 the direction is undefined
// (δ cancelled v0), and the map returns v0 unchanged; v then does not depend on δ there, so the
// gradient w.r.t. δ is 0. Forward and backward apply the same rule.
template <typename acc_t>
struct ValueUpdateRow {
  acc_t scale;  // ‖v0‖/‖u‖, u = v0+δ
  bool keep_v0; // ‖u‖ == 0
};

template <typename acc_t>
VR_HD ValueUpdateRow<acc_t> value_update_row(acc_t v0_sq, acc_t u_sq) {
  if (!(u_sq > acc_t(0))) return {acc_t(0), true};
  return {vr_sqrt(v0_sq) / vr_sqrt(u_sq), false};
}

template <typename acc_t>
VR_HD acc_t value_update_elem(const ValueUpdateRow<acc_t>& row, acc_t v0, acc_t delta) {
  return row.keep_v0 ? v0 : (v0 + delta) * row.scale;
}

// ∂L/∂δ = (s/n)(g − û ûᵀg) = a·g − b·u with a = s/n, b = s·(uᵀg)/n³.
template <typename acc_t>
struct ValueUpdateGradRow {
  acc_t a;
  acc_t b;
};

template <typename acc_t>
VR_HD ValueUpdateGradRow<acc_t> value_update_grad_row(acc_t v0_sq, acc_t u_sq, acc_t u_dot_g) {
  if (!(u_sq > acc_t(0))) return {acc_t(0), acc_t(0)};
  const acc_t a = vr_sqrt(v0_sq) / vr_sqrt(u_sq);
  return {a, a * u_dot_g / u_sq};
}

template <typename acc_t>
VR_HD acc_t value_update_grad_elem(const ValueUpdateGradRow<acc_t>& row, acc_t g, acc_t v0, acc_t delta) {
  return row.a * g - row.b * (v0 + delta);
}

}  // namespace vreason::math
