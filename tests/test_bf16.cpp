// bf16 frozen weights (milora/core/weight_storage.hpp): the storage operations of each Bf16Backend
// against host references in double, and LoRA / PiSSA / MiLoRA on a Bf16Linear against the
// contract that defines them: products of bf16-rounded operands accumulated in the backend's
// scalar, one rounding per entry whenever a rank-r product is added to the weight.
//
// Tolerances. Accumulation in float over k terms: the Frobenius error of a product relative to
// its reference stays below ~sqrt(k) * 2^-24 (k <= 2100 here: <= 3e-6; checked at 1e-5, 1e-12 in
// double). A bf16 rounding is a relative error of at most 2^-8 per entry (bf16's unit roundoff:
// 8 significant bits).
#include "test_util.hpp"

using namespace test;

namespace {

constexpr double kBf16Roundoff = 0x1p-8;  // |round(v) - v| <= 2^-8 |v| for v in bf16's normal range

template <class B>
constexpr double bf16_product_tol = is_float<B> ? 1e-5 : 1e-12;

/// op(m) on the host.
HostMatrix op_host(const HostMatrix& m, milora::Trans t) { return t == milora::Trans::yes ? HostMatrix(m.transpose()) : m; }

/// The largest of |got_ij - want_ij| / (rel * |scale_ij| + abs): <= 1 when every entry is within
/// its bound.
double entrywise_ratio(const HostMatrix& got, const HostMatrix& want, const HostMatrix& scale, double rel, double abs) {
  double worst = 0;
  for (Index k = 0; k < got.size(); ++k)
    worst = std::max(worst, std::abs(got.data()[k] - want.data()[k]) / (rel * std::abs(scale.data()[k]) + abs));
  return worst;
}

/// ||got - want|| <= tol * max(||want||, 1): relative, or absolute where want is (near) zero.
bool close_bf16(const HostMatrix& got, const HostMatrix& want, double tol) {
  return (got - want).norm() <= tol * std::max(want.norm(), 1.0);
}

}  // namespace

TEST_CASE_TEMPLATE("bf16 storage: rounding to nearest even, exact widening, bits in and out", B, MILORA_TEST_BACKENDS) {
  HostMatrix x = random_normal(9, 13, 501);
  x(0, 0) = 1.0 + 0x1p-8;               // a tie: stays 1 (even)
  x(0, 1) = 1.0 + 0x1p-7 + 0x1p-8;      // a tie: rounds up to the even 1 + 2^-6
  x(0, 2) = -3.0e38;                    // bf16 keeps float's range
  x(0, 3) = 1.5e-39;                    // a float subnormal
  const auto xb = B::to_bf16(device<B>(x));
  const auto bits = B::bf16_to_host(xb);
  REQUIRE(bits.size() == 9 * 13);
  for (Index k = 0; k < x.size(); ++k) {
    CAPTURE(k);
    CHECK(bits[std::size_t(k)] == milora::float_to_bf16(float(x.data()[k])));
  }
  CHECK(bits[0] == 0x3f80);
  CHECK(bits[1] == 0x3f82);
  const HostMatrix widened = host<B>(B::from_bf16(xb));
  CHECK(widened == round_bf16(x));  // widening is exact
  CHECK(rel_err(widened, x) <= kBf16Roundoff);

  // Bits in, bits out, and blocks of a larger matrix (a row stride other than cols).
  const auto again = B::bf16_from_host(9, 13, bits);
  CHECK(B::bf16_to_host(again) == bits);
  CHECK(B::bf16_rows(again) == 9);
  CHECK(B::bf16_cols(again) == 13);
  auto big = device<B>(random_normal(12, 20, 502));
  const auto blk = B::to_bf16(B::cblock(big, 2, 3, 9, 13));
  CHECK(host_bf16<B>(blk) == round_bf16(host<B>(big).block(2, 3, 9, 13)));

  const std::vector<std::uint16_t> five(5);
  CHECK_THROWS_AS(B::bf16_from_host(2, 3, five), milora::shape_error);
}

TEST_CASE_TEMPLATE("round_into_bf16 / from_bf16_into: the same rounding and widening into existing storage, shapes checked",
                   B, MILORA_TEST_BACKENDS) {
  const HostMatrix x = random_normal(7, 10, 505);
  auto dst = B::to_bf16(B::zeros(7, 10));
  B::round_into_bf16(device<B>(x), dst);
  CHECK(B::bf16_to_host(dst) == B::bf16_to_host(B::to_bf16(device<B>(x))));
  auto big = device<B>(random_normal(9, 14, 506));  // widened into a block: a row stride other than cols
  const HostMatrix around = host<B>(big);
  B::from_bf16_into(dst, B::block(big, 1, 2, 7, 10));
  HostMatrix want = around;
  want.block(1, 2, 7, 10) = round_bf16(host<B>(device<B>(x)));
  CHECK(host<B>(big) == want);
  auto wrong = B::to_bf16(B::zeros(10, 7));
  CHECK_THROWS_WITH_AS(B::round_into_bf16(device<B>(x), wrong), "round_into_bf16: 7x10 into 10x7", milora::shape_error);
  CHECK_THROWS_WITH_AS(B::from_bf16_into(wrong, B::block(big, 0, 0, 7, 10)), "from_bf16_into: 10x7 into 7x10", milora::shape_error);
  CHECK(host<B>(big) == want);  // a refused call writes nothing
}

TEST_CASE_TEMPLATE("gemm_bf16 multiplies the bf16-rounded operands", B, MILORA_TEST_BACKENDS) {
  using milora::Trans;
  for (const Trans tx : {Trans::no, Trans::yes})
    for (const Trans tw : {Trans::no, Trans::yes}) {
      CAPTURE(int(tx));
      CAPTURE(int(tw));
      const Index m = 7, k = 33, n = 11;
      // x and the output are blocks of larger matrices: strided views, as a framework's tensors are.
      const HostMatrix xs = tx == Trans::no ? random_normal(m + 2, k + 3, 511) : random_normal(k + 2, m + 3, 511);
      const HostMatrix w = tw == Trans::no ? random_normal(k, n, 512) : random_normal(n, k, 512);
      const HostMatrix c0 = random_normal(m + 1, n + 4, 513);
      auto xd = device<B>(xs);
      auto cd = device<B>(c0);
      const auto wb = device_bf16<B>(w);
      const auto xv = tx == Trans::no ? B::cblock(xd, 1, 2, m, k) : B::cblock(xd, 1, 2, k, m);
      auto cv = B::block(cd, 1, 3, m, n);
      B::gemm_bf16(0.75, xv, tx, wb, tw, -0.5, cv);

      const HostMatrix xh = tx == Trans::no ? HostMatrix(xs.block(1, 2, m, k)) : HostMatrix(xs.block(1, 2, k, m));
      const HostMatrix want = 0.75 * op_host(round_bf16(xh), tx) * op_host(round_bf16(w), tw) - 0.5 * HostMatrix(c0.block(1, 3, m, n));
      const HostMatrix got = host<B>(cd);
      CHECK(rel_err(HostMatrix(got.block(1, 3, m, n)), want) <= bf16_product_tol<B>);
      HostMatrix outside = got, outside0 = host<B>(device<B>(c0));  // the rest of C is untouched
      outside.block(1, 3, m, n).setZero();
      outside0.block(1, 3, m, n).setZero();
      CHECK(outside == outside0);
      // The test can tell a rounded x from an unrounded one: they differ by ~2^-9, far above tolerance.
      const HostMatrix unrounded = 0.75 * op_host(xh, tx) * op_host(round_bf16(w), tw) - 0.5 * HostMatrix(c0.block(1, 3, m, n));
      CHECK(rel_err(unrounded, want) > 100 * bf16_product_tol<B>);
    }
  auto c = B::zeros(3, 4);
  CHECK_THROWS_AS(B::gemm_bf16(1, device<B>(random_normal(3, 5, 514)), Trans::no, device_bf16<B>(random_normal(4, 6, 515)),
                               Trans::yes, 0, c),
                  milora::shape_error);
}

TEST_CASE_TEMPLATE("gemm_bf16 on weights larger than a widening panel", B, MILORA_TEST_BACKENDS) {
  // 2100 x 1100: 9.2 MB in float, 18 MB in double, so the CPU backend widens it in two or three
  // panels of 8 MiB (the last one partial); the GPU backend in one product.
  using milora::Trans;
  const HostMatrix w = random_normal(2100, 1100, 521);
  const auto wb = device_bf16<B>(w);
  const HostMatrix wr = round_bf16(w);
  const HostMatrix x = random_normal(5, 1100, 522), dy = random_normal(5, 2100, 523);
  auto y = B::zeros(5, 2100), dx = B::zeros(5, 1100);
  B::gemm_bf16(1, device<B>(x), Trans::no, wb, Trans::yes, 0, y);   // a forward: y = x W^T
  B::gemm_bf16(1, device<B>(dy), Trans::no, wb, Trans::no, 0, dx);  // a backward: dx = dy W
  CHECK(rel_err(host<B>(y), round_bf16(x) * wr.transpose()) <= bf16_product_tol<B>);
  CHECK(rel_err(host<B>(dx), round_bf16(dy) * wr) <= bf16_product_tol<B>);
}

TEST_CASE_TEMPLATE("add_product_to_bf16 rounds each entry once", B, MILORA_TEST_BACKENDS) {
  const HostMatrix w = random_normal(2100, 1100, 531), b = random_normal(2100, 4, 532), a = random_normal(4, 1100, 533);
  auto wb = device_bf16<B>(w);
  B::add_product_to_bf16(-0.3, device<B>(b), device<B>(a), wb);
  const HostMatrix exact = round_bf16(w) - 0.3 * b * a;
  const HostMatrix got = host_bf16<B>(wb);
  // Each entry is round(v) for the v computed in the backend's scalar, which is within a few
  // float ulps of exact: so within bf16's unit roundoff of exact plus that, and equal to round(exact)
  // except where exact lies that close to a rounding boundary (a fraction ~1e-4 of the entries).
  CHECK(entrywise_ratio(got, exact, exact, kBf16Roundoff, is_float<B> ? 1e-6 : 1e-14) <= 1);
  const HostMatrix nearest = round_bf16(exact);
  Index differ = 0;
  for (Index k = 0; k < got.size(); ++k) differ += got.data()[k] != nearest.data()[k];
  CHECK(differ <= got.size() / 1000);  // truncating instead of rounding would differ in about half
  auto bad = device<B>(random_normal(3, 5, 534));
  CHECK_THROWS_AS(B::add_product_to_bf16(1, device<B>(b), bad, wb), milora::shape_error);
}

TEST_CASE_TEMPLATE("OwningLinear / owning_linear_from: the storage's own layer, holding W or round(W)", B, MILORA_TEST_BACKENDS) {
  static_assert(std::is_same_v<milora::OwningLinear<B, milora::NativeWeights>, milora::Linear<B>>);
  static_assert(std::is_same_v<milora::OwningLinear<B, milora::Bf16Weights>, milora::Bf16Linear<B>>);
  const HostMatrix w = random_normal(5, 7, 271);
  const auto native = milora::owning_linear_from<milora::NativeWeights, B>(device<B>(w));
  CHECK(host<B>(native.weight()) == host<B>(device<B>(w)));
  const auto bf16 = milora::owning_linear_from<milora::Bf16Weights, B>(device<B>(w));
  CHECK(host_bf16<B>(bf16.weight()) == round_bf16(host<B>(device<B>(w))));
  CHECK(bf16.out_features() == 5);
  CHECK(bf16.in_features() == 7);
}

TEST_CASE_TEMPLATE("Bf16Linear: forward and backward_input are the bf16 products", B, MILORA_TEST_BACKENDS) {
  const HostMatrix w = random_normal(12, 9, 541), bias = random_normal(1, 12, 542), x = random_normal(4, 9, 543),
                   dy = random_normal(4, 12, 544);
  const auto layer = milora::Bf16Linear<B>::rounded(device<B>(w), device<B>(bias));
  CHECK(layer.out_features() == 12);
  CHECK(layer.in_features() == 9);
  CHECK(host_bf16<B>(layer.weight()) == round_bf16(w));
  auto y = B::zeros(4, 12), dx = B::zeros(4, 9);
  layer.forward(device<B>(x), y);
  layer.backward_input(device<B>(dy), dx);
  HostMatrix want = round_bf16(x) * round_bf16(w).transpose();
  want.rowwise() += bias.row(0);
  CHECK(rel_err(host<B>(y), want) <= bf16_product_tol<B>);
  CHECK(rel_err(host<B>(dx), round_bf16(dy) * round_bf16(w)) <= bf16_product_tol<B>);
  CHECK_THROWS_AS(milora::Bf16Linear<B>(device_bf16<B>(w), device<B>(random_normal(1, 5, 545))), milora::shape_error);
}

namespace {

// One adapter of each kind on a Bf16Linear against the same adapter on a Linear holding the same
// (bf16-representable) values, and against host references of the bf16 contract.
template <class Bf16Adapter, class NativeAdapter>
void check_bf16_adapter() {
  using B = typename Bf16Adapter::backend;
  const Index out = 24, in = 20, r = 4;
  const HostMatrix w0 = round_bf16(with_spectrum(out, in, gapped_spectrum(in, r), 551));
  const HostMatrix bias = random_normal(1, out, 552), x = random_normal(6, in, 553), dy = random_normal(6, out, 554);
  const milora::AdapterConfig cfg{.rank = r, .alpha = 8, .seed = 77};
  milora::Bf16Linear<B> layer(device_bf16<B>(w0), device<B>(bias));
  milora::Linear<B> native_layer(device<B>(w0), device<B>(bias));
  Bf16Adapter ad(layer, cfg);
  NativeAdapter native(native_layer, cfg);

  // The init saw W widened exactly, so its factors are the native adapter's, bit for bit.
  CHECK(host<B>(ad.A()) == host<B>(native.A()));
  CHECK(host<B>(ad.B()) == host<B>(native.B()));
  const double s = ad.scale();
  const HostMatrix A = host<B>(ad.A()), Bm = host<B>(ad.B());
  // Contract: W' = round(W - s B A), so W' + s B A = W entry by entry to bf16's roundoff of W'.
  const HostMatrix w_res = host_bf16<B>(layer.weight());
  const HostMatrix w_res_exact = w0 - s * Bm * A;
  CHECK(entrywise_ratio(w_res + s * Bm * A, w0, w_res_exact, kBf16Roundoff, is_float<B> ? 1e-6 : 1e-14) <= 1);
  if (!ad.residual()) CHECK(w_res == w0);  // LoRA leaves the weight as it was: not even rounded again

  // forward: y = round(x) W'^T + b + s (x A^T) B^T; h = x A^T (the adapter's path is not rounded).
  auto y = B::zeros(6, out), h = B::zeros(6, r), dx = B::zeros(6, in);
  ad.forward(device<B>(x), y, h);
  HostMatrix y_want = round_bf16(x) * w_res.transpose() + s * (x * A.transpose()) * Bm.transpose();
  y_want.rowwise() += bias.row(0);
  CHECK(rel_err(host<B>(y), y_want) <= bf16_product_tol<B>);
  CHECK(rel_err(host<B>(h), x * A.transpose()) <= bf16_product_tol<B>);
  // Against the native adapter: the difference is bf16's, within the 1e-2 docs/cuda.md allows bf16.
  const HostMatrix y_native = host<B>(native.forward(device<B>(x)));
  CHECK(rel_err(host<B>(y), y_native) <= 1e-2);

  // backward: dB = s dy^T h, dA = (s dy B)^T x, dx = round(dy) W' + s dy B A.
  ad.backward(device<B>(x), h, device<B>(dy), dx);
  const HostMatrix hh = x * A.transpose(), dh = s * dy * Bm;
  CHECK(close_bf16(host<B>(ad.grad_B()), s * dy.transpose() * hh, bf16_product_tol<B>));
  CHECK(close_bf16(host<B>(ad.grad_A()), dh.transpose() * x, bf16_product_tol<B>));  // 0 for LoRA: B = 0
  CHECK(rel_err(host<B>(dx), round_bf16(dy) * w_res + dh * A) <= bf16_product_tol<B>);

  // merge: W' <- round(W' + s B A) with a B as after training; unmerge returns within two roundings.
  ad.B() = device<B>(random_normal(out, r, 555));
  const HostMatrix delta = s * host<B>(ad.B()) * A;
  const HostMatrix y_unmerged = host<B>(ad.forward(device<B>(x)));
  ad.merge();
  const HostMatrix merged_exact = w_res + delta;
  CHECK(entrywise_ratio(host_bf16<B>(layer.weight()), merged_exact, merged_exact, kBf16Roundoff, is_float<B> ? 1e-6 : 1e-14) <= 1);
  CHECK(rel_err(host<B>(ad.forward(device<B>(x))), y_unmerged) <= 1e-2);
  ad.unmerge();
  const HostMatrix scale = w_res.cwiseAbs() + delta.cwiseAbs();
  CHECK(entrywise_ratio(host_bf16<B>(layer.weight()), w_res, scale, 2 * kBf16Roundoff, is_float<B> ? 1e-6 : 1e-14) <= 1);
}

}  // namespace

TEST_CASE_TEMPLATE("LoRA, PiSSA and MiLoRA on a Bf16Linear keep the bf16 contract", B, MILORA_TEST_BACKENDS) {
  SUBCASE("LoRA") { check_bf16_adapter<milora::LoRA<B, milora::Bf16Weights>, milora::LoRA<B>>(); }
  SUBCASE("PiSSA") { check_bf16_adapter<milora::PiSSA<B, milora::ExactSVD, milora::Bf16Weights>, milora::PiSSA<B>>(); }
  SUBCASE("MiLoRA") { check_bf16_adapter<milora::MiLoRA<B, milora::ExactSVD, milora::Bf16Weights>, milora::MiLoRA<B>>(); }
}

TEST_CASE_TEMPLATE("bf16 adapter: bad input is refused and the weight keeps its bits", B, MILORA_TEST_BACKENDS) {
  using Ad = milora::MiLoRA<B, milora::ExactSVD, milora::Bf16Weights>;
  HostMatrix w = random_normal(10, 8, 561);
  w(3, 5) = std::numeric_limits<double>::quiet_NaN();
  milora::Bf16Linear<B> nan_layer(device_bf16<B>(w));
  const auto nan_bits = B::bf16_to_host(nan_layer.weight());
  CHECK_THROWS_AS(Ad(nan_layer, {.rank = 2, .alpha = 4}), milora::value_error);
  CHECK(B::bf16_to_host(nan_layer.weight()) == nan_bits);

  milora::Bf16Linear<B> layer(device_bf16<B>(random_normal(10, 8, 562)));
  const auto bits = B::bf16_to_host(layer.weight());
  CHECK_THROWS_AS(Ad(layer, {.rank = 9, .alpha = 4}), milora::shape_error);  // rank > min(out, in)
  CHECK(B::bf16_to_host(layer.weight()) == bits);
  Ad ad(layer, {.rank = 2, .alpha = 4});
  CHECK_THROWS_AS(ad.forward(device<B>(random_normal(3, 7, 563))), milora::shape_error);
}
