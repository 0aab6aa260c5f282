// The CUDA kernels (cuda/gpu/*.cu, compiled for the host with the emulation in emulation/)
// against a float64 ATen oracle and the CPU kernels, through the launchers the host wrappers
// call, so each launch has the configuration a GPU gets: entropy forward and backward (float32,
// float16, bfloat16; vocab 152,064, lengths no block size divides, one-element rows, rows masked
// with -inf or with the dtype's lowest finite value, and all -inf / NaN / +inf rows with the
// error flag), value_update forward and backward (head_dim 1 to 1500, zero-norm rows) and the
// in-place update (every cache dtype, strided caches, bad and repeated positions).
// Exit code 0 iff every check passes; each failure prints one "FAIL:" line.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/cpu_ops.h"
#include "emulation/cuda_host_emulation.h"
#include "gpu/kernels.h"

namespace {

namespace gpu = vreason::gpu;
using at::indexing::Slice;

int failures = 0;
constexpr unsigned long long kNone = ~0ull;
constexpr double kInf = std::numeric_limits<double>::infinity();

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

gpu::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return gpu::DType::Float32;
    case at::kHalf: return gpu::DType::Float16;
    case at::kBFloat16: return gpu::DType::BFloat16;
    default: return gpu::DType::Float64;
  }
}

std::string tag(at::ScalarType t, int64_t rows, int64_t n) {
  return std::string(" [") + c10::toString(t) + ", " + std::to_string(rows) + "x" + std::to_string(n) + "]";
}

// Worst |got − want| / (atol + rtol·|want|) over the rows where `keep` is true (≤ 1 passes).
double worst(const at::Tensor& got, const at::Tensor& want, double rtol, double atol) {
  return ((got.to(at::kDouble) - want).abs() / (atol + rtol * want.abs())).max().item<double>();
}

// H and dH/dz·g in float64 (the oracle: softmax in double on the same rounded inputs).
std::pair<at::Tensor, at::Tensor> oracle_entropy(const at::Tensor& z, const at::Tensor& g) {
  const at::Tensor zd = z.to(at::kDouble);
  const at::Tensor log_p = at::log_softmax(zd, -1), p = log_p.exp();
  const at::Tensor plogp = at::where(p > 0, p * log_p, at::zeros_like(p));
  const at::Tensor h = -plogp.sum(-1);
  const at::Tensor grad = at::where(p > 0, -p * (log_p + h.unsqueeze(-1)), at::zeros_like(p)) * g.to(at::kDouble).unsqueeze(-1);
  return {h, grad};
}

// Rows of one test matrix: random logits, then special rows where the length allows.
at::Tensor entropy_input(int64_t rows, int64_t n, at::ScalarType dtype, std::vector<int64_t>* bad) {
  at::Tensor z = at::randn({rows, n}, at::kDouble) * 4;
  const double lowest = dtype == at::kFloat ? std::numeric_limits<float>::lowest()
                        : dtype == at::kHalf ? -65504.0 : -3.3895313892515355e38;
  if (rows >= 8 && n >= 2) {
    z.index_put_({1, Slice(1, at::indexing::None)}, -kInf);           // one finite logit: H = 0
    z.index_put_({2, Slice(0, n - std::max<int64_t>(1, n / 8))}, -kInf);                  // mostly masked
    z.index_put_({3, Slice(1, at::indexing::None)}, lowest);          // masked with the lowest finite value
    z.index_put_({4}, -kInf);                                         // bad: all -inf
    z.index_put_({5, n / 2}, std::nan(""));                           // bad: NaN
    z.index_put_({6, n - 1}, kInf);                                   // bad: +inf
    z.index_put_({7, Slice(0, n - 1)}, lowest);                       // ascending to a finite max
    z.index_put_({7, n - 1}, 3.0);
    bad->assign({4, 5, 6});
  }
  return z.to(dtype);
}

void test_entropy(at::ScalarType dtype, int64_t rows, int64_t n, int64_t offset = 0) {
  const std::string t = tag(dtype, rows, n) + (offset ? " misaligned" : "");
  std::vector<int64_t> bad;
  at::Tensor z = entropy_input(rows, n, dtype, &bad);
  at::Tensor buf = at::empty({rows * n + offset}, z.options());
  buf.index_put_({Slice(offset, at::indexing::None)}, z.reshape(-1));
  const void* zp = static_cast<const char*>(buf.data_ptr()) + offset * buf.element_size();
  const at::Tensor g = at::randn({rows});
  const auto [h_want, grad_want] = oracle_entropy(z, g);

  at::Tensor h = at::empty({rows});
  unsigned long long flag = kNone;
  check(gpu::entropy_forward(dtype_of(dtype), zp, rows, n, h.data_ptr<float>(), &flag, nullptr) == cudaSuccess,
        "entropy_forward launch" + t);
  at::Tensor good = at::ones({rows}, at::kBool);
  for (int64_t r : bad) good[r] = false;
  check(worst(h.index({good}), h_want.index({good}), 1e-5, 2e-6) <= 1, "entropy forward vs oracle" + t);
  check(flag == (bad.empty() ? kNone : static_cast<unsigned long long>(bad.front())),
        "entropy forward flags the first bad row" + t);
  for (int64_t r : bad) check(std::isnan(h[r].item<float>()), "entropy forward gives NaN for bad row " + std::to_string(r) + t);
  if (!bad.empty()) {  // the CPU op names the same row
    bool same = false;
    try {
      vreason::entropy_cpu(z);
    } catch (const c10::Error& e) {
      same = std::string(e.what()).find("row " + std::to_string(bad.front()) + " of logits") != std::string::npos;
    }
    check(same, "CPU entropy raises for the row the kernel flags" + t);
  }

  at::Tensor grad = at::empty({rows * n + offset}, z.options());
  void* gp = static_cast<char*>(grad.data_ptr()) + offset * grad.element_size();
  flag = kNone;
  const at::Tensor hc = at::where(good, h, at::zeros_like(h));
  check(gpu::entropy_backward(dtype_of(dtype), g.data_ptr<float>(), zp, hc.data_ptr<float>(), rows, n, gp, &flag,
                              nullptr) == cudaSuccess,
        "entropy_backward launch" + t);
  const at::Tensor got = grad.index({Slice(offset, at::indexing::None)}).reshape({rows, n});
  const double rtol = dtype == at::kFloat ? 1e-4 : 1e-2;
  const at::Tensor scale = grad_want.abs().amax(-1, true).clamp_min(1e-30);  // per-row magnitude
  check(worst(got.index({good}).to(at::kDouble) / scale.index({good}), grad_want.index({good}) / scale.index({good}),
              rtol, 1e-5) <= 1,
        "entropy backward vs oracle" + t);
  check(flag == (bad.empty() ? kNone : static_cast<unsigned long long>(bad.front())),
        "entropy backward flags the first bad row" + t);
}

// value_update in float64: v = u/‖u‖·‖v0‖ (v0 where ‖u‖ = 0) and ∂L/∂δ = (s/n)(g − û ûᵀg).
std::pair<at::Tensor, at::Tensor> oracle_value_update(const at::Tensor& v0, const at::Tensor& d, const at::Tensor& g) {
  const at::Tensor a = v0.to(at::kDouble), u = a + d.to(at::kDouble), gd = g.to(at::kDouble);
  const at::Tensor n = u.norm(2, -1, true), s = a.norm(2, -1, true);
  const at::Tensor safe = at::where(n > 0, n, at::ones_like(n));
  const at::Tensor v = at::where(n > 0, u / safe * s, a);
  const at::Tensor uh = u / safe;
  const at::Tensor grad = at::where(n > 0, s / safe * (gd - uh * (uh * gd).sum(-1, true)), at::zeros_like(u));
  return {v, grad};
}

void test_value_update(int64_t rows, int64_t dim) {
  const std::string t = " [" + std::to_string(rows) + "x" + std::to_string(dim) + "]";
  at::Tensor v0 = at::randn({rows, dim}), d = 0.5 * at::randn({rows, dim}), g = at::randn({rows, dim});
  if (rows >= 3) {
    d[1].copy_(-v0[1]);  // zero-norm rule: v0 back, gradient 0
    v0[2].zero_();       // ‖v0‖ = 0: the update is 0
  }
  const auto [v_want, g_want] = oracle_value_update(v0, d, g);
  at::Tensor v = at::empty_like(v0), gd = at::empty_like(v0);
  check(gpu::value_update_forward(v0.data_ptr<float>(), d.data_ptr<float>(), rows, dim, v.data_ptr<float>(), nullptr) ==
            cudaSuccess,
        "value_update_forward launch" + t);
  check(worst(v, v_want, 1e-5, 1e-6) <= 1, "value_update forward vs oracle" + t);
  check(gpu::value_update_backward(g.data_ptr<float>(), v0.data_ptr<float>(), d.data_ptr<float>(), rows, dim,
                                   gd.data_ptr<float>(), nullptr) == cudaSuccess,
        "value_update_backward launch" + t);
  check(worst(gd, g_want, 1e-4, 1e-5) <= 1, "value_update backward vs oracle" + t);
}

gpu::CacheView view_of(at::Tensor& cache) {
  return {cache.data_ptr(), dtype_of(cache.scalar_type()), cache.size(0), cache.size(1), cache.size(2), cache.size(3),
          cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)};
}

// Runs the in-place launcher with one set of positions for every batch row; returns the first
// bad index it reports (-1 for none).
int64_t run_inplace(at::Tensor& cache, const std::vector<int64_t>& positions, const at::Tensor& v0, const at::Tensor& d,
                    const std::string& t) {
  std::vector<unsigned long long> scratch(cache.size(2) + 1, 12345);
  const gpu::CacheView view = view_of(cache);
  const gpu::Positions where{positions.data(), 1, static_cast<int64_t>(positions.size()), 0, nullptr};
  check(gpu::value_update_inplace(view, where, v0.data_ptr<float>(), d.data_ptr<float>(), scratch.data(), nullptr) ==
            cudaSuccess,
        "value_update_inplace launch" + t);
  return scratch.back() == kNone ? -1 : static_cast<int64_t>(scratch.back());
}

// Per-row positions [batch, num] with counts: row b writes its first counts[b] slots at its own
// positions, nothing else; a bad position in a row's written slots is reported (flat index) and
// nothing is written; without scratch nothing is checked.
void test_value_update_inplace_per_row() {
  const int64_t batch = 3, heads = 2, seq = 9, dim = 33, num = 4;
  at::Tensor cache = at::randn({batch, heads, seq, dim});
  const at::Tensor before = cache.clone();
  // Row 0 writes 4 slots, row 1 two (its padding slots repeat a written position), row 2 none.
  std::vector<int64_t> positions{8, 1, 4, 0, 2, 7, 2, 2, 5, 5, 5, 5};
  const std::vector<int64_t> counts{4, 2, 0};
  const at::Tensor v0 = at::randn({batch, heads, num, dim}), d = 0.3 * at::randn({batch, heads, num, dim});
  std::vector<unsigned long long> scratch(batch * seq + 1, 7);
  gpu::Positions where{positions.data(), batch, num, num, counts.data()};
  check(gpu::value_update_inplace(view_of(cache), where, v0.data_ptr<float>(), d.data_ptr<float>(), scratch.data(),
                                  nullptr) == cudaSuccess && scratch.back() == kNone,
        "value_update_ per row: launch, no bad position");
  const at::Tensor want = oracle_value_update(v0, d, at::zeros_like(v0)).first;
  at::Tensor expected = before.to(at::kDouble);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t j = 0; j < counts[b]; ++j)
      expected.index_put_({b, Slice(), positions[b * num + j]}, want.index({b, Slice(), j}));
  check(worst(cache, expected, 1e-5, 1e-6) <= 1, "value_update_ per row writes each row's own slots only");
  // A repeat inside row 1's written slots: flat index 1·num + 1, nothing written.
  positions[5] = 2;
  at::Tensor fresh = before.clone();
  std::fill(scratch.begin(), scratch.end(), 7);
  check(gpu::value_update_inplace(view_of(fresh), where, v0.data_ptr<float>(), d.data_ptr<float>(), scratch.data(),
                                  nullptr) == cudaSuccess && scratch.back() == static_cast<unsigned long long>(num + 1),
        "value_update_ per row reports the first bad flat index");
  check(at::equal(fresh, before), "value_update_ per row writes nothing on a bad position");
  // Unchecked (positions validated by an earlier call): the same call writes.
  check(gpu::value_update_inplace(view_of(fresh), where, v0.data_ptr<float>(), d.data_ptr<float>(), nullptr, nullptr) ==
            cudaSuccess && !at::equal(fresh, before),
        "value_update_ without scratch writes unchecked");
}

void test_value_update_inplace(at::ScalarType dtype, int64_t dim, bool strided) {
  const std::string t = std::string(" [") + c10::toString(dtype) + ", dim " + std::to_string(dim) +
                        (strided ? ", strided]" : "]");
  const int64_t batch = 2, heads = 3, seq = 11;
  // A strided cache: [batch, heads, seq, dim] viewed out of a [batch, seq, heads, dim] buffer.
  at::Tensor cache = strided ? at::randn({batch, seq, heads, dim}).to(dtype).transpose(1, 2)
                             : at::randn({batch, heads, seq, dim}).to(dtype);
  const std::vector<int64_t> positions{7, 0, 10, 3};
  const int64_t num = static_cast<int64_t>(positions.size());
  const at::Tensor v0 = at::randn({batch, heads, num, dim}), d = 0.3 * at::randn({batch, heads, num, dim});
  const at::Tensor before = cache.clone();
  check(run_inplace(cache, positions, v0, d, t) == -1, "value_update_ reports no bad position" + t);
  const at::Tensor want = oracle_value_update(v0, d, at::zeros_like(v0)).first.to(dtype).to(at::kDouble);
  const at::Tensor pos = at::tensor(positions, at::kLong);
  const double rtol = dtype == at::kFloat || dtype == at::kDouble ? 1e-5 : 1e-2;
  check(worst(cache.index({Slice(), Slice(), pos}), want, rtol, 1e-5) <= 1, "value_update_ writes positions" + t);
  at::Tensor untouched = at::ones({seq}, at::kBool);
  untouched.index_put_({pos}, false);
  check(at::equal(cache.index({Slice(), Slice(), untouched}), before.index({Slice(), Slice(), untouched})),
        "value_update_ leaves other positions bit-identical" + t);

  // Bad positions: reported (the first bad index), and nothing written at all.
  struct Case {
    std::vector<int64_t> positions;
    int64_t first_bad;
    const char* what;
  };
  for (const Case& c : {Case{{7, 11, 3, 0}, 1, "out of range"}, Case{{7, -1, 3, 0}, 1, "negative"},
                        Case{{7, 0, 3, 7}, 3, "repeated"}, Case{{2, 2, 2, 2}, 1, "all repeated"}}) {
    at::Tensor fresh = before.clone();
    const int64_t got = run_inplace(fresh, c.positions, v0, d, t);
    check(got == c.first_bad, std::string("value_update_ reports the first bad index (") + c.what + ")" + t);
    check(at::equal(fresh, before), std::string("value_update_ writes nothing on a bad position (") + c.what + ")" + t);
  }
}

void test_inplace_without_rows() {
  // Zero batch: no update kernel, but the positions are still checked.
  at::Tensor cache = at::randn({0, 2, 5, 8});
  const at::Tensor v0 = at::randn({0, 2, 2, 8});
  check(run_inplace(cache, {1, 9}, v0, v0, " [batch 0]") == 1, "value_update_ checks positions when batch is 0");
  at::Tensor empty_seq = at::randn({1, 1, 0, 8});
  const at::Tensor v1 = at::randn({1, 1, 1, 8});
  check(run_inplace(empty_seq, {0}, v1, v1, " [seq 0]") == 0, "value_update_ rejects every position of an empty cache");
}

}  // namespace

int main(int argc, char** argv) {
  vr_emu::start_watchdog(argc > 1 ? std::atoi(argv[1]) : 100);
  vr_emu::set_seed(2024);
  at::manual_seed(0);
  at::set_num_threads(1);
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (int64_t n : {1, 7, 64, 513, 1001, 4099}) test_entropy(dtype, n == 1 ? 3 : 9, n);
    test_entropy(dtype, 9, 2048, /*offset=*/1);  // a row start off the 16-byte vector loads
    test_entropy(dtype, 9, 152064);
  }
  for (int64_t dim : {1, 31, 32, 33, 80, 128, 129, 1000, 1024, 1500}) test_value_update(3, dim);
  test_value_update(64, 128);
  test_value_update_inplace_per_row();
  for (auto dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble}) {
    for (int64_t dim : {8, 128, 129}) test_value_update_inplace(dtype, dim, /*strided=*/dim == 129);
  }
  test_inplace_without_rows();
  check(vr_emu::failures() == 0, "the emulation saw no deadlock or invalid shuffle");
  if (failures == 0) std::printf("vreason CUDA kernels on the host emulation: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
