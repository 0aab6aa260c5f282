// The vector-times-matrix row loop of `vecmat` (vecmat.cpp), written once over the vector width
// like entropy_simd.h and included by the same per-target units after their traits `V`: it
// needs kLanes, set1, load (float32, and the weight's dtype), store and fmadd.
//
// acc[s, c] += Σ_r g[s·g_stride + r] · w[r, c] for `rows` rows of a row-major [rows, cols]
// weight. `g·W` reads W row by row (contiguous) and adds each row, scaled, into a float32
// accumulator row that stays in L1/L2; four weight rows per pass, so each accumulator vector is
// loaded and stored once per four rows. Per column the sum runs over r in order, one rounding
// per fused multiply-add, and the tail columns do the same with std::fma, so every column gets
// the same arithmetic whichever lane it falls in. (std::fma: the including unit has <cmath>.)

namespace vreason::simd {

template <typename V, typename weight_t>
void vecmat_rows_impl(const float* g, int64_t samples, int64_t g_stride, const weight_t* w, int64_t rows,
                      int64_t cols, float* acc) {
  constexpr int64_t L = V::kLanes;
  const int64_t vec_cols = cols - cols % L;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const weight_t* w0 = w + r * cols;
    const weight_t* w1 = w0 + cols;
    const weight_t* w2 = w1 + cols;
    const weight_t* w3 = w2 + cols;
    for (int64_t s = 0; s < samples; ++s) {
      const float* gs = g + s * g_stride + r;
      const auto g0 = V::set1(gs[0]), g1 = V::set1(gs[1]), g2 = V::set1(gs[2]), g3 = V::set1(gs[3]);
      float* a = acc + s * cols;
      for (int64_t c = 0; c < vec_cols; c += L) {
        auto x = V::load(a + c);
        x = V::fmadd(g0, V::load(w0 + c), x);
        x = V::fmadd(g1, V::load(w1 + c), x);
        x = V::fmadd(g2, V::load(w2 + c), x);
        x = V::fmadd(g3, V::load(w3 + c), x);
        V::store(a + c, x);
      }
      for (int64_t c = vec_cols; c < cols; ++c) {
        float x = std::fma(gs[0], static_cast<float>(w0[c]), a[c]);
        x = std::fma(gs[1], static_cast<float>(w1[c]), x);
        x = std::fma(gs[2], static_cast<float>(w2[c]), x);
        a[c] = std::fma(gs[3], static_cast<float>(w3[c]), x);
      }
    }
  }
  for (; r < rows; ++r) {
    const weight_t* w0 = w + r * cols;
    for (int64_t s = 0; s < samples; ++s) {
      const float gr = g[s * g_stride + r];
      const auto g0 = V::set1(gr);
      float* a = acc + s * cols;
      for (int64_t c = 0; c < vec_cols; c += L) V::store(a + c, V::fmadd(g0, V::load(w0 + c), V::load(a + c)));
      for (int64_t c = vec_cols; c < cols; ++c) a[c] = std::fma(gr, static_cast<float>(w0[c]), a[c]);
    }
  }
}

}  // namespace vreason::simd
