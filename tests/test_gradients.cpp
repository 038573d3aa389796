// Backward against central finite differences in double precision.
//
// Loss L = sum(G .* y) for a fixed random G, so dL/dy = G. y is linear in A (B fixed), in B (A fixed)
// and in x, so a central difference in one entry is exact but for rounding, ~1e-16 / h = 1e-11
// with h = 1e-5. The bound (1e-6, the issue's) leaves a wide margin yet catches a missing factor s
// or a transposed product, which give O(1) errors.
#include "test_util.hpp"

using namespace test;

namespace {

template <class B, class Adapter>
double loss(const Adapter& ad, const HostMatrix& x, const HostMatrix& g) {
  return (host<B>(ad.forward(device<B>(x))).array() * g.array()).sum();
}

// Central difference of `loss` with respect to every entry of `m` (a host mirror is rebuilt each time).
template <class B, class Adapter, class Set>
HostMatrix numeric_grad(const HostMatrix& m, const Set& set, const Adapter& ad, const HostMatrix& x,
                        const HostMatrix& g, double h) {
  HostMatrix d(m.rows(), m.cols());
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) {
      HostMatrix p = m, q = m;
      p(i, j) += h;
      q(i, j) -= h;
      set(p);
      const double lp = loss<B>(ad, x, g);
      set(q);
      const double lq = loss<B>(ad, x, g);
      d(i, j) = (lp - lq) / (2 * h);
    }
  set(m);
  return d;
}

template <class B, class AdapterT>
void check_gradients(bool rslora, bool with_bias, Index r = 3, const typename AdapterT::init_policy& init = {}) {
  CAPTURE(rslora);
  CAPTURE(with_bias);
  const Index out = 7, in = 5, t = 4;
  const HostMatrix w0 = random_normal(out, in, 71), bias = random_normal(1, out, 72);
  milora::Linear<B> layer(device<B>(w0), with_bias ? device<B>(bias) : B::zeros(0, 0));
  AdapterT ad(layer, {.rank = r, .alpha = 5, .use_rslora = rslora}, init);
  // LoRA starts with B = 0, which would hide a wrong dA; give both factors generic values.
  ad.B() = device<B>(random_normal(out, r, 73));
  ad.A() = device<B>(random_normal(r, in, 74));

  const HostMatrix x = random_normal(t, in, 75), g = random_normal(t, out, 76);
  auto y = B::zeros(t, out), h = B::zeros(t, r), dx = B::zeros(t, in);
  ad.forward(device<B>(x), y, h);
  ad.zero_grad();
  ad.backward(device<B>(x), h, device<B>(g), dx);

  const double step = 1e-5;
  const HostMatrix a0 = host<B>(ad.A()), b0 = host<B>(ad.B());
  const HostMatrix dA = numeric_grad<B>(a0, [&](const HostMatrix& v) { ad.A() = device<B>(v); }, ad, x, g, step);
  const HostMatrix dB = numeric_grad<B>(b0, [&](const HostMatrix& v) { ad.B() = device<B>(v); }, ad, x, g, step);
  HostMatrix dX(t, in);
  for (Index i = 0; i < t; ++i)
    for (Index j = 0; j < in; ++j) {
      HostMatrix p = x, q = x;
      p(i, j) += step;
      q(i, j) -= step;
      dX(i, j) = (loss<B>(ad, p, g) - loss<B>(ad, q, g)) / (2 * step);
    }
  // A frozen B (MiCA) gets no gradient at all: it is not a parameter.
  CHECK(rel_err(host<B>(ad.grad_A()), dA) <= 1e-6);
  if (ad.frozen_B()) CHECK(host<B>(ad.grad_B()).norm() == 0.0);
  else CHECK(rel_err(host<B>(ad.grad_B()), dB) <= 1e-6);
  CHECK(rel_err(host<B>(dx), dX) <= 1e-6);

  // Gradients accumulate across backward calls (as .grad does) until zero_grad().
  ad.backward(device<B>(x), h, device<B>(g));
  CHECK(rel_err(host<B>(ad.grad_A()), 2 * dA) <= 1e-6);
  if (ad.frozen_B()) CHECK(host<B>(ad.grad_B()).norm() == 0.0);
  else CHECK(rel_err(host<B>(ad.grad_B()), 2 * dB) <= 1e-6);
  ad.zero_grad();
  CHECK(host<B>(ad.grad_A()).norm() == 0.0);
  CHECK(host<B>(ad.grad_B()).norm() == 0.0);
}

}  // namespace

TEST_CASE_TEMPLATE("backward matches central finite differences (double)", B, MILORA_TEST_DOUBLE_BACKENDS) {
  for (bool rslora : {false, true})
    for (bool bias : {false, true}) {
      check_gradients<B, milora::LoRA<B>>(rslora, bias);
      check_gradients<B, milora::MiLoRA<B>>(rslora, bias);
      check_gradients<B, milora::PiSSA<B>>(rslora, bias);
      check_gradients<B, milora::OLoRA<B>>(rslora, bias);
      check_gradients<B, milora::OrthogonalLoRA<B>>(rslora, bias, 2);  // needs an even rank
      check_gradients<B, milora::MiCA<B>>(rslora, bias);                // B frozen: dA and dx only
      // the data-driven starts, from calibration inputs / a gradient of this layer's shape (7 x 5)
      auto stats = std::make_shared<milora::InputStatistics<B>>(5);
      stats->observe(device<B>(random_normal(12, 5, 77)));
      check_gradients<B, milora::CorDA<B>>(rslora, bias, 3, {stats});
      check_gradients<B, milora::EVA<B>>(rslora, bias, 3, {stats});
      check_gradients<B, milora::LoRAGA<B>>(rslora, bias, 2, {std::make_shared<const milora::matrix_t<B>>(device<B>(random_normal(7, 5, 78)))});  // 2r <= 5
    }
}
