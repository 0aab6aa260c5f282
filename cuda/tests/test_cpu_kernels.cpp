// The CPU kernels against naive double-precision loops on small inputs (entropy forward and
// backward, value_update forward and backward, the in-place update, vecmat), on every SIMD level the CPU
// has (scalar, AVX2, AVX-512F), each selected and labelled by its level, plus the operator
// registrations. VREASON_REQUIRE_SIMD_LEVEL=N fails the test on a CPU whose highest level is
// below N (CI sets it, so a missing path is a failure rather than a silent skip). Exit code 0 iff
// every check passes.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

bool close(double got, double want, double rtol, double atol) {
  return std::abs(got - want) <= atol + rtol * std::abs(want);
}

constexpr double kInf = std::numeric_limits<double>::infinity();

// Naive entropy of one row: p = softmax(z), H = −Σ p log p over the finite entries.
double naive_entropy(const std::vector<double>& z) {
  double m = -kInf;
  for (double v : z) m = std::max(m, v);
  double s = 0;
  for (double v : z) s += std::exp(v - m);
  double h = 0;
  for (double v : z) {
    if (v == -kInf) continue;
    const double p = std::exp(v - m) / s;
    h -= p * std::log(p);
  }
  return h;
}

std::vector<double> row_of(const at::Tensor& t, int64_t row) {
  const at::Tensor r = t.select(0, row).to(at::kDouble).contiguous();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

const char* level_name(int level) { return level == 2 ? "avx512" : level == 1 ? "avx2" : "scalar"; }

void test_entropy(at::ScalarType dtype, int level) {
  const std::string tag = std::string(" [") + c10::toString(dtype) + ", " + level_name(level) + "]";
  vreason::set_simd_level(level);
  check(vreason::simd_level() == level, "selecting SIMD level" + tag);
  at::Tensor z = (at::randn({5, 1037}) * 4).to(dtype);
  z.index_put_({1, at::indexing::Slice(1, at::indexing::None)}, -kInf);  // one finite logit: H = 0
  z.index_put_({2, at::indexing::Slice(0, 1000)}, -kInf);
  at::Tensor g = at::randn({5});
  at::Tensor h = vreason::entropy_cpu(z);
  at::Tensor grad = vreason::entropy_backward_cpu(g, z, h).to(at::kDouble);
  const double rtol = dtype == at::kFloat ? 1e-5 : 1e-3;
  const double grad_rtol = dtype == at::kFloat ? 1e-5 : 1e-2;  // reduced-precision gradient output
  for (int64_t r = 0; r < 5; ++r) {
    const auto row = row_of(z, r);
    const double want = naive_entropy(row);
    check(close(h[r].item<double>(), want, rtol, 1e-6), "entropy row " + std::to_string(r) + tag);
    double m = -kInf, s = 0;
    for (double v : row) m = std::max(m, v);
    for (double v : row) s += std::exp(v - m);
    bool ok = true;
    for (size_t i = 0; i < row.size(); ++i) {
      const double p = row[i] == -kInf ? 0 : std::exp(row[i] - m) / s;
      const double want_grad = p == 0 ? 0 : -g[r].item<double>() * p * (std::log(p) + want);
      ok &= close(grad[r][i].item<double>(), want_grad, grad_rtol, 1e-6);
    }
    check(ok, "entropy backward row " + std::to_string(r) + tag);
  }
  at::Tensor bad = at::randn({3, 40}).to(dtype);
  bad.index_put_({1}, -kInf);
  bool raised = false;
  try {
    vreason::entropy_cpu(bad);
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("row 1 of logits") != std::string::npos;
  }
  check(raised, "entropy raises on an all -inf row" + tag);
}

struct NaiveRow {
  std::vector<double> v, grad;
};

NaiveRow naive_value_update(const std::vector<double>& v0, const std::vector<double>& d, const std::vector<double>& g) {
  double s = 0, n = 0, ug = 0;
  for (size_t i = 0; i < v0.size(); ++i) {
    s += v0[i] * v0[i];
    n += (v0[i] + d[i]) * (v0[i] + d[i]);
    ug += (v0[i] + d[i]) * g[i];
  }
  s = std::sqrt(s);
  n = std::sqrt(n);
  NaiveRow out;
  for (size_t i = 0; i < v0.size(); ++i) {
    const double u = v0[i] + d[i];
    out.v.push_back(n == 0 ? v0[i] : u / n * s);
    out.grad.push_back(n == 0 ? 0 : s / n * (g[i] - u / n * (ug / n)));
  }
  return out;
}

void test_value_update() {
  at::Tensor v0 = at::randn({6, 24}), d = 0.5 * at::randn({6, 24}), g = at::randn({6, 24});
  d.select(0, 3).copy_(-v0.select(0, 3));  // zero-norm row: returns v0, gradient 0
  at::Tensor v = vreason::value_update_cpu(v0, d);
  at::Tensor gd = vreason::value_update_backward_cpu(g, v0, d);
  for (int64_t r = 0; r < 6; ++r) {
    const auto want = naive_value_update(row_of(v0, r), row_of(d, r), row_of(g, r));
    const auto got_v = row_of(v, r), got_g = row_of(gd, r);
    bool ok_v = true, ok_g = true;
    for (size_t i = 0; i < want.v.size(); ++i) {
      ok_v &= close(got_v[i], want.v[i], 1e-5, 1e-6);
      ok_g &= close(got_g[i], want.grad[i], 1e-5, 1e-6);
    }
    check(ok_v, "value_update row " + std::to_string(r));
    check(ok_g, "value_update backward row " + std::to_string(r));
  }
}

void test_value_update_inplace(at::ScalarType dtype) {
  const std::string tag = std::string(" [") + c10::toString(dtype) + "]";
  at::Tensor cache = at::randn({2, 3, 10, 8}).to(dtype);
  const at::Tensor before = cache.clone();
  const at::Tensor positions = at::tensor(std::vector<int64_t>{7, 2, 5}, at::kLong);
  at::Tensor v0 = at::randn({2, 3, 3, 8}), d = 0.3 * at::randn({2, 3, 3, 8});
  vreason::value_update_inplace_cpu(cache, positions, v0, d);
  const double rtol = dtype == at::kFloat ? 1e-5 : 1e-2;
  bool ok_written = true, ok_untouched = true;
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t h = 0; h < 3; ++h) {
      for (int64_t j = 0; j < 3; ++j) {
        const auto want = naive_value_update(row_of(v0[b][h], j), row_of(d[b][h], j), std::vector<double>(8, 0.0));
        const auto got = row_of(cache[b][h], positions[j].item<int64_t>());
        for (int64_t i = 0; i < 8; ++i) ok_written &= close(got[i], want.v[i], rtol, 1e-6);
      }
      for (int64_t p : {0, 1, 3, 4, 6, 8, 9}) {
        const at::Tensor now = cache[b][h][p].contiguous(), old = before[b][h][p].contiguous();
        ok_untouched &= std::memcmp(now.data_ptr(), old.data_ptr(), now.nbytes()) == 0;
      }
    }
  }
  check(ok_written, "value_update_ writes positions" + tag);
  check(ok_untouched, "value_update_ leaves other positions bit-identical" + tag);
  bool raised = false;
  try {
    vreason::value_update_inplace_cpu(cache, at::tensor(std::vector<int64_t>{7, 10, 5}, at::kLong), v0, d);
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("out of range") != std::string::npos;
  }
  check(raised, "value_update_ raises on an out-of-range position" + tag);
}

// g @ W over row counts with unroll remainders and several of the kernel's 1,024-row parts, and
// column counts with lane remainders.
void test_vecmat(at::ScalarType dtype, int level) {
  const std::string tag = std::string(" [") + c10::toString(dtype) + ", " + level_name(level) + "]";
  vreason::set_simd_level(level);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vreason::vecmat", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 9, 2}, {2051, 33, 3}, {1024, 16, 1}};
  for (const auto& shape : shapes) {
    const int64_t rows = shape[0], cols = shape[1], samples = shape[2];
    const at::Tensor w = at::randn({rows, cols}).to(dtype);
    const at::Tensor g = at::randn({samples, rows});
    const at::Tensor out = op.call(g, w);
    const at::Tensor wd = w.to(at::kDouble).contiguous(), gd = g.to(at::kDouble).contiguous();
    const double* wp = wd.const_data_ptr<double>();
    const double* gp = gd.const_data_ptr<double>();
    bool ok = out.scalar_type() == at::kFloat && out.size(0) == samples && out.size(1) == cols;
    const at::Tensor got = out.to(at::kDouble).contiguous();
    const double* op_out = got.const_data_ptr<double>();
    for (int64_t s = 0; ok && s < samples; ++s) {
      for (int64_t c = 0; c < cols; ++c) {
        double want = 0.0, scale = 0.0;
        for (int64_t r = 0; r < rows; ++r) {
          const double term = gp[s * rows + r] * wp[r * cols + c];
          want += term;
          scale += std::fabs(term);
        }
        ok = ok && std::fabs(op_out[s * cols + c] - want) <= 1e-6 * scale + 1e-6;
      }
    }
    check(ok, "vecmat " + std::to_string(rows) + "x" + std::to_string(cols) + " rows " + std::to_string(samples) + tag);
  }
}

void test_registrations() {
  for (const char* name : {"vreason::entropy", "vreason::entropy_backward", "vreason::value_update",
                           "vreason::value_update_backward", "vreason::value_update_", "vreason::vecmat"}) {
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    check(op.has_value() && op->hasKernelForDispatchKey(c10::DispatchKey::CPU),
          std::string("CPU kernel registered for ") + name);
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  const int top = vreason::max_simd_level();
  if (const char* required = std::getenv("VREASON_REQUIRE_SIMD_LEVEL")) {
    check(top >= std::atoi(required), std::string("this CPU's highest SIMD level is ") + std::to_string(top) + " (" +
                                          level_name(top) + "), below the required " + required);
  }
  for (int level = top; level >= 0; --level) {
    for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) test_entropy(dtype, level);
    for (auto dtype : {at::kBFloat16, at::kHalf}) test_vecmat(dtype, level);
  }
  vreason::set_simd_level(top);
  test_value_update();
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) test_value_update_inplace(dtype);
  test_registrations();
  if (failures == 0) std::printf("vreason CPU kernels: all checks passed (SIMD levels %s down to scalar)\n", level_name(top));
  return failures == 0 ? 0 : 1;
}
