// The literature's other starts as policies (OLoRA, PEFT's orthogonal, MiCA): the property each paper
// states, checked against an independent computation in double (Eigen's own QR / a normal-equation
// projection / a Jacobi SVD, none of which is the code under test), plus the adapter-level
// contract (W' + s*B*A = W, output unchanged), merge / unmerge and bad input, on every backend.
// Their gradients are checked with the others' in test_gradients.cpp.
#include "test_util.hpp"

using namespace test;

namespace {

constexpr std::pair<Index, Index> kPolicyShapes[] = {{24, 16}, {16, 24}, {20, 20}};

// Float carries ~1e-7 per operation; these products have a few dozen terms.
template <class B>
constexpr double factor_tol = is_float<B> ? 2e-5 : 1e-12;

}  // namespace

TEST_CASE_TEMPLATE("OLoRA: B = Q[:, :r] orthonormal, A = R[:r, :], B*A = W projected on its first r columns, W' + s*B*A = W",
                   B, MILORA_TEST_BACKENDS) {
  for (auto [out, in] : kPolicyShapes) {
    CAPTURE(out);
    CAPTURE(in);
    const Index r = 5;
    const HostMatrix w0 = random_normal(out, in, 201), bias = random_normal(1, out, 202);
    milora::Linear<B> layer(device<B>(w0), device<B>(bias));
    const HostMatrix w = host<B>(layer.weight());  // w0 rounded to the backend's scalar
    milora::OLoRA<B> ad(layer, {.rank = r, .alpha = 7});
    const HostMatrix a = host<B>(ad.A()), b = host<B>(ad.B());
    REQUIRE(a.rows() == r);
    REQUIRE(b.cols() == r);

    // orthonormal columns
    CHECK((b.transpose() * b - HostMatrix::Identity(r, r)).norm() <= factor_tol<B> * r);
    // A = R[:r, :] of the full Householder QR of W (Eigen's, in double), row by row up to sign:
    // the sign of a Householder column is the implementation's choice, B*A is not affected by it
    Eigen::HouseholderQR<Eigen::MatrixXd> qr{Eigen::MatrixXd(w)};
    const Eigen::MatrixXd R = qr.matrixQR().triangularView<Eigen::Upper>();
    for (Index i = 0; i < r; ++i) {
      CAPTURE(i);
      const double sign = a.row(i).dot(R.row(i)) >= 0 ? 1.0 : -1.0;
      CHECK((a.row(i) - sign * R.row(i)).norm() <= 10 * factor_tol<B> * R.row(i).norm());
    }
    // B*A is the projection of W onto span(W[:, :r]), by the normal equations
    const HostMatrix wr = w.leftCols(r);
    const HostMatrix projected = wr * (wr.transpose() * wr).ldlt().solve(wr.transpose() * w);
    CHECK(rel_err(b * a, projected) <= 10 * factor_tol<B>);
    // the contract, from the factors the adapter holds
    CHECK(rel_err(host<B>(layer.weight()) + ad.scale() * b * a, w) <= contract_tol<B>);
    const HostMatrix x = random_normal(4, in, 203);
    const HostMatrix y_ref = (x * w.transpose()).rowwise() + bias.row(0);
    CHECK(rel_err(host<B>(ad.forward(device<B>(x))), y_ref) <= 10 * contract_tol<B>);
  }
}

TEST_CASE_TEMPLATE("orthogonal: both factors random and non-zero, B*A = 0 (base and output unchanged), halves orthogonal",
                   B, MILORA_TEST_BACKENDS) {
  for (auto [out, in] : kPolicyShapes) {
    CAPTURE(out);
    CAPTURE(in);
    const Index r = 6;
    const HostMatrix w0 = random_normal(out, in, 211);
    milora::Linear<B> layer(device<B>(w0));
    const HostMatrix w = host<B>(layer.weight());
    milora::OrthogonalLoRA<B> ad(layer, {.rank = r, .alpha = 6, .seed = 9});
    const HostMatrix a = host<B>(ad.A()), b = host<B>(ad.B());
    CHECK(host<B>(layer.weight()) == w);  // not a residual method: the base is untouched
    CHECK((b * a).norm() <= factor_tol<B> * b.norm() * a.norm());
    // the stronger statement: B's rows and A's columns live in orthogonal halves of R^r
    CHECK((b.transpose() * b * a * a.transpose()).norm() <= factor_tol<B> * b.squaredNorm() * a.squaredNorm());
    // each factor has rank r/2 (Jacobi SVD in double: r/2 clear singular values, then zeros)
    for (const HostMatrix& f : {a, HostMatrix(b.transpose())}) {
      const Eigen::VectorXd s = Eigen::JacobiSVD<Eigen::MatrixXd>(Eigen::MatrixXd(f)).singularValues();
      CHECK(s(r / 2 - 1) > 1e-3 * s(0));
      CHECK(s(r / 2) <= factor_tol<B> * s(0));
    }
    const HostMatrix x = random_normal(3, in, 212);
    CHECK(rel_err(host<B>(ad.forward(device<B>(x))), x * w.transpose()) <= 10 * contract_tol<B>);
  }
}

TEST_CASE_TEMPLATE("orthogonal: PEFT's scale (entries of A have mean square 1/200), the seed decides, odd rank refused",
                   B, MILORA_TEST_BACKENDS) {
  // A = q_odd^T G_A^T / 10 with q_odd's r/2 orthonormal rows: E[sum of A_ij^2 over a column] =
  // (r/2) / 100, so the mean square over all r x in entries is 1/200 (B likewise, 1/200).
  milora::Linear<B> big(device<B>(random_normal(300, 200, 221)));
  milora::OrthogonalLoRA<B> ad(big, {.rank = 8, .alpha = 8, .seed = 3});
  const HostMatrix a = host<B>(ad.A()), b = host<B>(ad.B());
  CHECK(a.squaredNorm() / double(a.size()) == doctest::Approx(1.0 / 200).epsilon(0.15));  // 1600 entries: ~4 % noise
  CHECK(b.squaredNorm() / double(b.size()) == doctest::Approx(1.0 / 200).epsilon(0.15));

  milora::Linear<B> l1(device<B>(random_normal(12, 10, 222))), l2(device<B>(random_normal(12, 10, 222)));
  milora::OrthogonalLoRA<B> same1(l1, {.rank = 4, .seed = 17}), same2(l2, {.rank = 4, .seed = 17});
  CHECK(host<B>(same1.A()) == host<B>(same2.A()));
  CHECK(host<B>(same1.B()) == host<B>(same2.B()));
  milora::Linear<B> l3(device<B>(random_normal(12, 10, 222)));
  milora::OrthogonalLoRA<B> other(l3, {.rank = 4, .seed = 18});
  CHECK(host<B>(other.A()) != host<B>(same1.A()));

  milora::Linear<B> l4(device<B>(random_normal(12, 10, 223)));
  const HostMatrix before = host<B>(l4.weight());
  try {
    milora::OrthogonalLoRA<B> odd(l4, {.rank = 3});
    FAIL("an odd rank was accepted");
  } catch (const milora::value_error& e) {
    CHECK(std::string(e.what()).find("even rank") != std::string::npos);
    CHECK(std::string(e.what()).find("got 3") != std::string::npos);
  }
  CHECK(host<B>(l4.weight()) == before);
}

TEST_CASE_TEMPLATE("MiCA: B = the r minor left singular vectors (frozen), A = 0, base and output unchanged, only A trains, "
                   "every update stays in the minor subspace",
                   B, MILORA_TEST_BACKENDS) {
  const Index r = 3;
  for (auto [out, in] : kPolicyShapes) {
    CAPTURE(out);
    CAPTURE(in);
    // A clear gap above the r smallest singular values, so the minor subspace is well defined.
    const HostMatrix w0 = host<B>(device<B>(with_spectrum(out, in, gapped_spectrum(std::min(out, in), r), 241)));
    milora::Linear<B> layer(device<B>(w0));
    milora::MiCA<B> ad(layer, {.rank = r, .alpha = 6});
    CHECK(ad.frozen_B());
    CHECK_FALSE(ad.residual());
    CHECK(host<B>(layer.weight()) == w0);  // the base is not touched at all
    CHECK(host<B>(ad.A()).norm() == 0.0);

    // B against an independent Jacobi SVD in double: orthonormal columns spanning U's last r.
    const ReferenceSVD ref(w0);
    const Eigen::MatrixXd u_minor = ref.U.rightCols(r);
    const HostMatrix b = host<B>(ad.B());
    CHECK((b.transpose() * b - HostMatrix::Identity(r, r)).norm() <= factor_tol<B>);
    // 1 - overlap ~ (eps * sigma_max / gap)^2: 1e-13 in float here, so 1e-6 is a wide margin.
    CHECK((u_minor.transpose() * b).squaredNorm() / double(r) >= 1 - (is_float<B> ? 1e-6 : 1e-12));

    // Output unchanged at init; only A is a parameter; r * in numbers train.
    const HostMatrix x = random_normal(6, in, 242), g = random_normal(6, out, 243);
    CHECK(rel_err(host<B>(ad.forward(device<B>(x))), x * w0.transpose()) <= contract_tol<B>);
    auto params = ad.parameters();
    REQUIRE(params.size() == 1);
    CHECK(params[0].name == "lora_A");
    CHECK(ad.num_trainable() == r * in);

    // Three AdamW steps: A moves, B does not change by a bit, and s*B*A lies in span(U_minor).
    milora::AdamW<B> opt({.lr = 1e-2});
    opt.add_all(ad.parameters());
    for (int step = 0; step < 3; ++step) {
      auto y = B::zeros(6, out), h = B::zeros(6, r), dx = B::zeros(6, in);
      ad.forward(device<B>(x), y, h);
      opt.zero_grad();
      ad.backward(device<B>(x), h, device<B>(g), dx);
      opt.step();
    }
    CHECK(host<B>(ad.B()) == b);
    CHECK(host<B>(ad.grad_B()).norm() == 0.0);
    const HostMatrix delta = ad.scale() * b * host<B>(ad.A());
    CHECK(delta.norm() > 0);
    const HostMatrix outside = delta - u_minor * (u_minor.transpose() * delta);
    CHECK(outside.norm() <= (is_float<B> ? 1e-5 : 1e-10) * delta.norm());
  }
}

TEST_CASE_TEMPLATE("OLoRA, orthogonal and MiCA: merge then unmerge restores the base, merged forward equals unmerged", B,
                   MILORA_TEST_BACKENDS) {
  auto check = [](auto init) {
    using Init = decltype(init);
    CAPTURE(Init::name);
    const HostMatrix w0 = random_normal(14, 10, 231);
    milora::Linear<B> layer(device<B>(w0));
    milora::Adapter<B, Init> ad(layer, {.rank = 4, .alpha = 8});
    CHECK(ad.residual() == (Init::name == "olora"));  // OLoRA's base gave up s*B0*A0; orthogonal's did not
    ad.B() = device<B>(random_normal(14, 4, 232));  // as after training
    const HostMatrix base = host<B>(layer.weight()), x = random_normal(5, 10, 233);
    const HostMatrix y = host<B>(ad.forward(device<B>(x)));
    ad.merge();
    CHECK(rel_err(host<B>(ad.forward(device<B>(x))), y) <= 10 * contract_tol<B>);
    ad.unmerge();
    CHECK(rel_err(host<B>(layer.weight()), base) <= (is_float<B> ? 1e-6 : 1e-14));
  };
  check(milora::LeadingQR{});
  check(milora::OrthogonalInit{});
  check(milora::MinorLeftSingular<>{});
}
