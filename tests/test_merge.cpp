// Merge / unmerge: W' + s*B*A folded into the weight and taken out again.
#include "test_util.hpp"

using namespace test;

TEST_CASE_TEMPLATE("merge then unmerge restores W', and merged forward equals unmerged", B, MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(32, 24, 81), bias = random_normal(1, 32, 82);
  milora::Linear<B> layer(device<B>(w0), device<B>(bias));
  milora::MiLoRA<B> ad(layer, {.rank = 4, .alpha = 8});
  ad.B() = device<B>(random_normal(32, 4, 83));  // as after training: B A is a real update
  const HostMatrix w_res = host<B>(layer.weight());
  const HostMatrix x = random_normal(6, 24, 84);
  const HostMatrix y_unmerged = host<B>(ad.forward(device<B>(x)));

  ad.merge();
  CHECK(ad.merged());
  const HostMatrix delta = ad.scale() * host<B>(ad.B()) * host<B>(ad.A());
  CHECK(rel_err(host<B>(layer.weight()), w_res + delta) <= 10 * contract_tol<B>);
  CHECK(rel_err(host<B>(ad.forward(device<B>(x))), y_unmerged) <= 10 * contract_tol<B>);

  ad.unmerge();
  CHECK_FALSE(ad.merged());
  CHECK(rel_err(host<B>(layer.weight()), w_res) <= (is_float<B> ? 1e-6 : 1e-14));
  CHECK(rel_err(host<B>(ad.forward(device<B>(x))), y_unmerged) <= 10 * contract_tol<B>);
}

TEST_CASE_TEMPLATE("merge state is enforced", B, MILORA_TEST_BACKENDS) {
  milora::Linear<B> layer(device<B>(random_normal(6, 5, 85)));
  milora::LoRA<B> ad(layer, {.rank = 2, .alpha = 2});
  CHECK_THROWS_AS(ad.unmerge(), milora::state_error);
  ad.merge();
  CHECK_THROWS_AS(ad.merge(), milora::state_error);
  auto x = device<B>(random_normal(3, 5, 86));
  auto h = B::zeros(3, 2), dy = B::zeros(3, 6);
  CHECK_THROWS_AS(ad.backward(x, h, dy), milora::state_error);
}
