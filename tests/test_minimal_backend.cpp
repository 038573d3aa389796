// A backend written from scratch in this file, with nothing but std::vector and loops, to show that
// the backend concepts (milora/core/backend.hpp) name everything generic code calls: it satisfies
// ProductBackend, so LoRA's adapter runs on it (forward, backward, AdamW, merge) with the same
// numbers as EigenBackend<double> from the same seed; it is not a Backend (no factorisations), so
// the policies that need one are refused by their concepts, not by an error deep inside.
#include <cmath>
#include <span>
#include <vector>

#include "test_util.hpp"

namespace {

// A row-major view of someone's doubles: pointer, shape, row stride. T is double or const double.
template <class T>
struct VecView {
  T* data = nullptr;
  milora::Index rows = 0, cols = 0, ld = 0;
  T& operator()(milora::Index i, milora::Index j) const { return data[i * ld + j]; }
  operator VecView<const T>() const { return {data, rows, cols, ld}; }  // NOLINT: a view is a const view
};

struct VecMatrix {
  std::vector<double> values;
  milora::Index rows = 0, cols = 0;
  operator VecView<double>() { return {values.data(), rows, cols, cols}; }  // NOLINT: a matrix& is a view
  operator VecView<const double>() const { return {values.data(), rows, cols, cols}; }  // NOLINT
};

struct MinimalBackend {
  using scalar = double;
  using matrix = VecMatrix;
  using view = VecView<double>;
  using const_view = VecView<const double>;
  using Index = milora::Index;
  using Trans = milora::Trans;

  static matrix zeros(Index r, Index c) { return {std::vector<double>(std::size_t(r * c)), r, c}; }
  static matrix from_host(Index r, Index c, std::span<const double> h) { return {{h.begin(), h.end()}, r, c}; }
  static std::vector<double> to_host(const_view m) {
    std::vector<double> out;
    for (Index i = 0; i < m.rows; ++i)
      for (Index j = 0; j < m.cols; ++j) out.push_back(m(i, j));
    return out;
  }
  static matrix clone(const_view m) { return from_host(m.rows, m.cols, to_host(m)); }
  static void copy(const_view s, view d) { each(d, [&](Index i, Index j) { d(i, j) = s(i, j); }); }
  static Index rows(const_view m) { return m.rows; }
  static Index cols(const_view m) { return m.cols; }
  static view block(view m, Index r0, Index c0, Index nr, Index nc) { return {&m(r0, c0), nr, nc, m.ld}; }
  static const_view cblock(const_view m, Index r0, Index c0, Index nr, Index nc) { return {&m(r0, c0), nr, nc, m.ld}; }

  static void gemm(double alpha, const_view a, Trans ta, const_view b, Trans tb, double beta, view c) {
    const Index k = ta == Trans::yes ? a.rows : a.cols;
    each(c, [&](Index i, Index j) {
      double sum = 0;
      for (Index p = 0; p < k; ++p) sum += (ta == Trans::yes ? a(p, i) : a(i, p)) * (tb == Trans::yes ? b(j, p) : b(p, j));
      c(i, j) = alpha * sum + (beta == 0 ? 0.0 : beta * c(i, j));
    });
  }
  static void syrk(double alpha, const_view a, Trans ta, double beta, view c) {
    gemm(alpha, a, ta, a, ta == Trans::yes ? Trans::no : Trans::yes, beta, c);
  }
  static void trsm(const_view l, Trans tl, view x) {  // forward or back substitution, column by column
    const Index n = l.rows;
    for (Index c = 0; c < x.cols; ++c)
      for (Index s = 0; s < n; ++s) {
        const Index i = tl == Trans::no ? s : n - 1 - s;
        double v = x(i, c);
        for (Index p = 0; p < n; ++p)
          if (tl == Trans::no ? p < i : p > i) v -= (tl == Trans::no ? l(i, p) : l(p, i)) * x(p, c);
        x(i, c) = v / l(i, i);
      }
  }
  static void scale(view m, double a) { each(m, [&](Index i, Index j) { m(i, j) = a == 0 ? 0.0 : a * m(i, j); }); }
  static void axpy(double a, const_view x, view y) { each(y, [&](Index i, Index j) { y(i, j) += a * x(i, j); }); }
  static void add_diagonal(view m, double a) {
    for (Index i = 0; i < std::min(m.rows, m.cols); ++i) m(i, i) += a;
  }
  static void add_row_broadcast(view m, const_view row) { each(m, [&](Index i, Index j) { m(i, j) += at(row, j); }); }
  static void scale_rows(view m, const_view d) { each(m, [&](Index i, Index j) { m(i, j) *= at(d, i); }); }
  static void scale_columns(view m, const_view d) { each(m, [&](Index i, Index j) { m(i, j) *= at(d, j); }); }
  static bool all_finite(const_view m) {
    for (double v : to_host(m))
      if (!std::isfinite(v)) return false;
    return true;
  }
  static double squared_norm(const_view m) {
    double s = 0;
    for (double v : to_host(m)) s += v * v;
    return s;
  }
  static void adamw_update(view p, const_view g, view m, view v, const milora::AdamWStep& s) {
    each(p, [&](Index i, Index j) {
      p(i, j) *= 1 - s.lr * s.weight_decay;
      m(i, j) += (g(i, j) - m(i, j)) * (1 - s.beta1);
      v(i, j) = v(i, j) * s.beta2 + (1 - s.beta2) * g(i, j) * g(i, j);
      p(i, j) -= (s.lr / s.bias_correction1) * m(i, j) / (std::sqrt(v(i, j)) / s.bias_correction2_sqrt + s.eps);
    });
  }
  // element (i, j) is draw i * cols + j of milora's counter-based stream, as on every backend
  static void fill_uniform(view m, double lo, double hi, std::uint64_t seed) {
    each(m, [&](Index i, Index j) { m(i, j) = milora::random::uniform(seed, std::uint64_t(i * m.cols + j), lo, hi); });
  }
  static void fill_normal(view m, double mean, double sd, std::uint64_t seed) {
    each(m, [&](Index i, Index j) { m(i, j) = mean + sd * milora::random::normal(seed, std::uint64_t(i * m.cols + j)); });
  }

 private:
  template <class F>
  static void each(view m, F f) {
    for (Index i = 0; i < m.rows; ++i)
      for (Index j = 0; j < m.cols; ++j) f(i, j);
  }
  static double at(const_view v, Index k) { return v.rows == 1 ? v(0, k) : v(k, 0); }  // a vector stored either way
};

static_assert(milora::ProductBackend<MinimalBackend>, "the minimal backend names everything an adapter calls");
static_assert(!milora::Backend<MinimalBackend>, "it has no factorisations");
static_assert(!milora::Bf16Backend<MinimalBackend>, "nor bf16 storage");
static_assert(milora::InitPolicy<milora::KaimingUniform, MinimalBackend>);
static_assert(milora::InitPolicy<milora::AnyInit<MinimalBackend>, MinimalBackend>);
static_assert(!milora::InitPolicy<milora::MinorSVD<>, MinimalBackend>, "MiLoRA needs a Backend: its concept says so");
static_assert(!milora::InitPolicy<milora::LeadingQR, MinimalBackend>, "OLoRA needs qr");

// Two steps of training a LoRA adapter on B, then merged: every number the test compares.
template <class B>
std::vector<std::vector<double>> lora_run() {
  const test::HostMatrix w = test::random_normal(9, 7, 31), x = test::random_normal(5, 7, 32), dy = test::random_normal(5, 9, 33);
  const auto host = [](const auto& m) { return B::to_host(m); };
  const auto on = [](const test::HostMatrix& h) {
    return B::from_host(h.rows(), h.cols(), std::vector<double>(h.data(), h.data() + h.size()));
  };
  milora::Linear<B> layer(on(w));
  milora::LoRA<B> adapter(layer, {.rank = 3, .alpha = 6, .seed = 7});
  milora::AdamW<B> opt({.lr = 1e-2});
  opt.add_all(adapter.parameters());
  auto y = B::zeros(5, 9), h = B::zeros(5, 3), dx = B::zeros(5, 7);
  const auto xs = on(x), dys = on(dy);
  std::vector<std::vector<double>> out;
  for (int step = 0; step < 2; ++step) {
    adapter.forward(xs, y, h);
    adapter.zero_grad();
    adapter.backward(xs, h, dys, dx);
    opt.step();
    for (const auto* m : {&y, &dx}) out.push_back(host(*m));
    out.push_back(host(adapter.A()));
    out.push_back(host(adapter.B()));
  }
  adapter.merge();
  out.push_back(host(layer.weight()));
  return out;
}

}  // namespace

TEST_CASE("a minimal backend written in the test satisfies ProductBackend and runs LoRA as EigenBackend<double> does") {
  const auto mine = lora_run<MinimalBackend>(), eigen = lora_run<milora::EigenBackend<double>>();
  REQUIRE(mine.size() == eigen.size());
  for (std::size_t k = 0; k < mine.size(); ++k) {
    CAPTURE(k);
    REQUIRE(mine[k].size() == eigen[k].size());
    for (std::size_t i = 0; i < mine[k].size(); ++i) CHECK(mine[k][i] == doctest::Approx(eigen[k][i]).epsilon(1e-12));
  }
  // the adapter did train: LoRA's B starts at zero, and one AdamW step moved it
  double moved = 0;
  for (double b : mine[3]) moved += b * b;
  CHECK(moved > 0);
}
