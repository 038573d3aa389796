// Bad input: a clear exception naming the shape or value, and nothing changed.
#include <cstring>
#include <limits>
#include <string>

#include "test_util.hpp"

using namespace test;

namespace {
template <class Ex, class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Ex& e) {
    return e.what();
  }
  FAIL("expected an exception");
  return {};
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE_TEMPLATE("bad rank or alpha: shape_error / value_error, layer untouched", B, MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(6, 4, 101);
  milora::Linear<B> layer(device<B>(w0));
  const HostMatrix before = host<B>(layer.weight());

  auto msg = message_of<milora::shape_error>([&] { milora::MiLoRA<B> a(layer, {.rank = 0}); });
  CHECK(contains(msg, "rank 0"));
  CHECK(contains(msg, "6x4"));
  msg = message_of<milora::shape_error>([&] { milora::PiSSA<B> a(layer, {.rank = 5}); });
  CHECK(contains(msg, "rank 5"));
  CHECK(contains(msg, "min(out, in) = 4"));
  msg = message_of<milora::value_error>([&] { milora::MiLoRA<B> a(layer, {.rank = 2, .alpha = -1}); });
  CHECK(contains(msg, "alpha"));
  CHECK(host<B>(layer.weight()) == before);
}

TEST_CASE_TEMPLATE("NaN or Inf in W: value_error naming the value and where, layer untouched", B, MILORA_TEST_BACKENDS) {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    HostMatrix w0 = random_normal(6, 4, 102);
    w0(3, 2) = bad;
    milora::Linear<B> layer(device<B>(w0));
    const auto before = B::to_host(layer.weight());
    const auto msg = message_of<milora::value_error>([&] { milora::MiLoRA<B> a(layer, {.rank = 2}); });
    CAPTURE(msg);
    CHECK(contains(msg, "(3, 2)"));
    CHECK(contains(msg, std::isnan(bad) ? "nan" : "inf"));
    const auto after = B::to_host(layer.weight());
    CHECK(std::memcmp(before.data(), after.data(), before.size() * sizeof(before[0])) == 0);
  }
}

TEST_CASE_TEMPLATE("wrong input width or gradient shapes: shape_error, nothing written", B, MILORA_TEST_BACKENDS) {
  milora::Linear<B> layer(device<B>(random_normal(6, 4, 103)));
  milora::MiLoRA<B> ad(layer, {.rank = 2, .alpha = 2});
  const HostMatrix w_before = host<B>(layer.weight());

  auto x = device<B>(random_normal(3, 5, 104));  // 5 columns, in_features = 4
  const auto msg = message_of<milora::shape_error>([&] { (void)ad.forward(x); });
  CHECK(contains(msg, "3x5"));
  CHECK(contains(msg, "in_features = 4"));

  auto good_x = device<B>(random_normal(3, 4, 105));
  auto y = device<B>(HostMatrix::Constant(3, 6, 7.0)), h = B::zeros(3, 2), small_y = B::zeros(2, 6);
  CHECK_THROWS_AS(ad.forward(good_x, small_y, h), milora::shape_error);
  auto bad_h = B::zeros(3, 3);
  CHECK_THROWS_AS(ad.forward(good_x, y, bad_h), milora::shape_error);
  CHECK(host<B>(y) == HostMatrix::Constant(3, 6, 7.0));  // outputs untouched on failure

  ad.forward(good_x, y, h);
  ad.zero_grad();
  auto dy_wrong = B::zeros(3, 5), dx = device<B>(HostMatrix::Constant(3, 4, 9.0)), dx_wrong = B::zeros(3, 3);
  CHECK_THROWS_AS(ad.backward(good_x, h, dy_wrong, dx), milora::shape_error);
  CHECK_THROWS_AS(ad.backward(good_x, h, device<B>(random_normal(3, 6, 106)), dx_wrong), milora::shape_error);
  CHECK_THROWS_AS(ad.backward(x, h, device<B>(random_normal(3, 6, 106))), milora::shape_error);
  CHECK(host<B>(ad.grad_A()).norm() == 0.0);  // no partial accumulation
  CHECK(host<B>(ad.grad_B()).norm() == 0.0);
  CHECK(host<B>(dx) == HostMatrix::Constant(3, 4, 9.0));
  CHECK(host<B>(layer.weight()) == w_before);
}

TEST_CASE_TEMPLATE("bad bias, or a layer whose sizes disagree with its weight", B, MILORA_TEST_BACKENDS) {
  CHECK_THROWS_AS(milora::Linear<B>(device<B>(random_normal(6, 4, 107)), device<B>(random_normal(1, 5, 108))),
                  milora::shape_error);
  struct Liar {  // claims 5 inputs, has 4
    typename B::matrix w = B::zeros(6, 4);
    typename B::matrix& weight() { return w; }
    Index in_features() const { return 5; }
    Index out_features() const { return 6; }
  } liar;
  const auto msg = message_of<milora::shape_error>([&] { milora::LoRA<B> a(liar, {.rank = 2}); });
  CHECK(contains(msg, "6x4"));
  CHECK(contains(msg, "6x5"));
}

TEST_CASE_TEMPLATE("PiSSA / MiLoRA on an all-zero W: value_error naming the init, layer untouched, LoRA's init is fine", B,
                   MILORA_TEST_BACKENDS) {
  milora::Linear<B> layer(device<B>(HostMatrix::Zero(6, 4)));
  auto msg = message_of<milora::value_error>([&] { milora::MiLoRA<B> a(layer, {.rank = 2}); });
  CAPTURE(msg);
  CHECK(contains(msg, "milora init: 2 of the 2 singular values"));
  CHECK(contains(msg, "W 6x4 is all zero"));
  msg = message_of<milora::value_error>([&] { milora::PiSSA<B> a(layer, {.rank = 3}); });
  CHECK(contains(msg, "pissa init: 3 of the 3 singular values"));
  CHECK(host<B>(layer.weight()).isZero(0));
  milora::LoRA<B> lora(layer, {.rank = 2});  // random A, zero B: trains from a zero weight
  CHECK(host<B>(lora.A()).norm() > 0);
}

// An exactly rank-3 weight: the minor singular values are rounding-level, not zero, so both inits
// give an adapter, and W' + s*B*A gives W back (to 1e-12 relative, double precision); exact zeros,
// if a solver returns them, must give the rank-deficient error and leave W as it was.
TEST_CASE("PiSSA / MiLoRA on a rank-deficient W (rank 3 of 12 x 16, double): W' + s*B*A = W, or the clear error") {
  using DBE = milora::EigenBackend<double>;
  const HostMatrix w = random_normal(12, 3, 5) * random_normal(3, 16, 6);
  for (milora::Index rank : {2, 4, 8}) {
    CAPTURE(rank);
    auto check = [&](auto init) {
      using Init = decltype(init);
      milora::Linear<DBE> layer(device<DBE>(w));
      try {
        milora::Adapter<DBE, Init> a(layer, {.rank = rank, .alpha = double(rank)});
        const HostMatrix back = host<DBE>(layer.weight()) + a.scale() * host<DBE>(a.B()) * host<DBE>(a.A());
        CHECK((back - w).norm() <= 1e-12 * w.norm());
      } catch (const milora::value_error& e) {
        CHECK_MESSAGE(contains(e.what(), "is rank-deficient"), e.what());
        CHECK(host<DBE>(layer.weight()) == w);
      }
    };
    check(milora::MinorSVD<>{});
    check(milora::PrincipalSVD<>{});
  }
}

// The two-step construction a model uses (every init first, then every adapter) gives the same
// adapter as the one-step constructor, and factors that do not fit are refused before W changes.
TEST_CASE_TEMPLATE("initial_factors + the factors constructor: the one-step adapter, wrong factors: shape_error, layer untouched", B,
                   MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(7, 5, 103);
  milora::Linear<B> one(device<B>(w0)), two(device<B>(w0));
  const HostMatrix before = host<B>(two.weight());  // w0 rounded to the backend's scalar
  milora::MiLoRA<B> a(one, {.rank = 2});
  auto factors = milora::MiLoRA<B>::initial_factors(two, {.rank = 2});
  CHECK(host<B>(two.weight()) == before);  // computing the init changes nothing
  milora::MiLoRA<B> b(two, {.rank = 2}, std::move(factors));
  CHECK(host<B>(b.A()) == host<B>(a.A()));
  CHECK(host<B>(b.B()) == host<B>(a.B()));
  CHECK(host<B>(two.weight()) == host<B>(one.weight()));

  milora::Linear<B> three(device<B>(w0));
  auto wrong = milora::MiLoRA<B>::initial_factors(three, {.rank = 3});
  const auto msg = message_of<milora::shape_error>([&] { milora::MiLoRA<B> c(three, {.rank = 2}, std::move(wrong)); });
  CAPTURE(msg);
  CHECK(contains(msg, "init policy's A"));
  CHECK(host<B>(three.weight()) == before);
}
