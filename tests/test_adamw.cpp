// AdamW against PyTorch's documented update rule (torch.optim.AdamW docs, "Algorithm"):
//   theta <- theta - lr*wd*theta;  m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
//   m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t);  theta <- theta - lr * m^ / (sqrt(v^) + eps)
#include "test_util.hpp"

using namespace test;

TEST_CASE_TEMPLATE("AdamW: three steps of one scalar, worked by hand", B, MILORA_TEST_BACKENDS) {
  // lr = 0.1, betas = (0.9, 0.999), eps = 1e-8, weight_decay = 0.1, theta0 = 1, g = 0.5, -0.25, 1.
  // Step 1: theta = 0.99; m = 0.05; v = 0.00025; m^ = 0.5; v^ = 0.25;
  //         theta = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.890000002
  // Step 2: theta = 0.8811000020; m = 0.02; v = 0.00031225; m^ = 0.02/0.19; v^ = 0.00031225/0.001999;
  //         theta = 0.8811000020 - 0.1 * 0.1052632 / 0.3952252 = 0.8544662987
  // Step 3: likewise, theta = 0.7801104767; m = 0.118; v = 0.00131193775
  auto p = B::zeros(1, 1), g = B::zeros(1, 1);
  B::copy(device<B>(HostMatrix::Constant(1, 1, 1.0)), p);
  milora::AdamW<B> opt({.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1});
  opt.add({"p", p, g});
  const double grads[] = {0.5, -0.25, 1.0};
  const double theta[] = {0.890000002, 0.8544662987, 0.7801104767};
  const double tol = is_float<B> ? 1e-6 : 1e-9;
  for (int t = 0; t < 3; ++t) {
    B::copy(device<B>(HostMatrix::Constant(1, 1, grads[t])), g);
    opt.step();
    CHECK(host<B>(p)(0, 0) == doctest::Approx(theta[t]).epsilon(tol));
  }
  CHECK(opt.steps() == 3);
  CHECK(host<B>(opt.exp_avg(0))(0, 0) == doctest::Approx(0.118).epsilon(tol));
  CHECK(host<B>(opt.exp_avg_sq(0))(0, 0) == doctest::Approx(0.00131193775).epsilon(tol));
}

TEST_CASE_TEMPLATE("AdamW: matrices follow the documented rule element by element", B, MILORA_TEST_BACKENDS) {
  const milora::AdamWConfig cfg{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6, .weight_decay = 0.05};
  HostMatrix theta = random_normal(4, 3, 91), m = HostMatrix::Zero(4, 3), v = HostMatrix::Zero(4, 3);
  auto p = device<B>(theta), g = B::zeros(4, 3);
  milora::AdamW<B> opt(cfg);
  opt.add({"p", p, g});
  for (int t = 1; t <= 3; ++t) {
    const HostMatrix grad = random_normal(4, 3, 92 + t);
    B::copy(device<B>(grad), g);
    opt.step();
    theta *= 1 - cfg.lr * cfg.weight_decay;
    m = cfg.beta1 * m + (1 - cfg.beta1) * grad;
    v = cfg.beta2 * v + (1 - cfg.beta2) * grad.cwiseProduct(grad);
    const HostMatrix mh = m / (1 - std::pow(cfg.beta1, t)), vh = v / (1 - std::pow(cfg.beta2, t));
    theta -= cfg.lr * mh.cwiseQuotient((vh.cwiseSqrt().array() + cfg.eps).matrix());
    CHECK(rel_err(host<B>(p), theta) <= (is_float<B> ? 1e-6 : 1e-13));
  }
  opt.zero_grad();
  CHECK(host<B>(g).norm() == 0.0);
}

TEST_CASE_TEMPLATE("AdamW: trains an adapter's parameters, bad hyperparameters are refused", B, MILORA_TEST_BACKENDS) {
  milora::Linear<B> layer(device<B>(random_normal(6, 5, 95)));
  milora::MiLoRA<B> ad(layer, {.rank = 2, .alpha = 2});
  milora::AdamW<B> opt;
  opt.add_all(ad.parameters());
  CHECK(opt.size() == 2);
  const HostMatrix a0 = host<B>(ad.A());
  B::copy(device<B>(HostMatrix::Ones(2, 5)), ad.parameters()[0].grad);
  opt.step();
  CHECK(host<B>(ad.A()) != a0);

  CHECK_THROWS_AS(milora::AdamW<B>({.lr = -1}), milora::value_error);
  CHECK_THROWS_AS(milora::AdamW<B>({.beta1 = 1.0}), milora::value_error);
  CHECK_THROWS_AS(milora::AdamW<B>({.beta2 = -0.1}), milora::value_error);
  CHECK_THROWS_AS(milora::AdamW<B>({.eps = NAN}), milora::value_error);
  CHECK_THROWS_AS(opt.set_lr(-0.5), milora::value_error);
  CHECK(opt.lr() == doctest::Approx(1e-3));  // unchanged by the refused call
  auto p = B::zeros(2, 2), wrong = B::zeros(2, 3);
  CHECK_THROWS_AS(opt.add({"p", p, wrong}), milora::shape_error);
  CHECK(opt.size() == 2);
}
