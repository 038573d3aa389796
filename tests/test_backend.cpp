// The Backend contract, checked operation by operation against plain loops / JacobiSVD in double.
#include "test_util.hpp"

using namespace test;
using milora::Trans;

static_assert(!milora::Backend<int>, "the concept must reject a non-backend");

TEST_CASE_TEMPLATE("backend: from_host / to_host / clone / copy / block round-trip", B, MILORA_TEST_BACKENDS) {
  const HostMatrix h = random_normal(5, 3, 1);
  auto m = device<B>(h);
  CHECK(B::rows(m) == 5);
  CHECK(B::cols(m) == 3);
  CHECK(rel_err(host<B>(m), h) < contract_tol<B>);
  auto c = B::clone(m);
  B::scale(c, 2);
  CHECK(rel_err(host<B>(m), h) < contract_tol<B>);  // clone is a deep copy
  auto z = B::zeros(2, 2);
  B::copy(B::cblock(m, 1, 1, 2, 2), z);
  CHECK(rel_err(host<B>(z), h.block(1, 1, 2, 2)) < contract_tol<B>);
  B::scale(B::block(m, 0, 0, 1, 3), 0);  // a block view writes through
  CHECK(host<B>(m).row(0).norm() == 0.0);
  CHECK(host<B>(m).row(1).norm() > 0.0);
  std::vector<typename B::scalar> three(3);
  CHECK_THROWS_AS(B::from_host(2, 2, three), milora::shape_error);
}

TEST_CASE_TEMPLATE("backend: gemm, all transpose combinations, alpha and beta", B, MILORA_TEST_BACKENDS) {
  const Index m = 7, n = 5, k = 4;
  for (Trans ta : {Trans::no, Trans::yes})
    for (Trans tb : {Trans::no, Trans::yes}) {
      const HostMatrix a = ta == Trans::no ? random_normal(m, k, 2) : random_normal(k, m, 2);
      const HostMatrix b = tb == Trans::no ? random_normal(k, n, 3) : random_normal(n, k, 3);
      const HostMatrix c0 = random_normal(m, n, 4);
      HostMatrix ref = 0.5 * c0;  // independent triple loop
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < n; ++j)
          for (Index p = 0; p < k; ++p)
            ref(i, j) += 1.5 * (ta == Trans::no ? a(i, p) : a(p, i)) * (tb == Trans::no ? b(p, j) : b(j, p));
      auto c = device<B>(c0);
      B::gemm(1.5, device<B>(a), ta, device<B>(b), tb, 0.5, c);
      CAPTURE(int(ta));
      CAPTURE(int(tb));
      CHECK(rel_err(host<B>(c), ref) < 10 * contract_tol<B>);
    }
  // beta = 0 overwrites even NaN (BLAS semantics, relied on for uninitialised outputs)
  auto c = device<B>(HostMatrix::Constant(2, 2, std::nan("")));
  B::gemm(1, device<B>(HostMatrix::Identity(2, 2)), Trans::no, device<B>(HostMatrix::Ones(2, 2)), Trans::no, 0, c);
  CHECK(host<B>(c) == HostMatrix::Ones(2, 2));
}

TEST_CASE_TEMPLATE("backend: element-wise operations", B, MILORA_TEST_BACKENDS) {
  const HostMatrix x = random_normal(3, 4, 5), y0 = random_normal(3, 4, 6);
  auto y = device<B>(y0);
  B::axpy(-2, device<B>(x), y);
  CHECK(rel_err(host<B>(y), y0 - 2 * x) < contract_tol<B>);

  const HostMatrix row = random_normal(1, 4, 7), col = random_normal(3, 1, 8);
  auto m = device<B>(y0);
  B::add_diagonal(m, 0.25);  // 3 x 4: the 3 diagonal entries
  CHECK(rel_err(host<B>(m), y0 + 0.25 * HostMatrix::Identity(3, 4)) < contract_tol<B>);
  m = device<B>(y0);
  B::add_row_broadcast(m, device<B>(row));
  CHECK(rel_err(host<B>(m), y0.rowwise() + row.row(0)) < contract_tol<B>);
  m = device<B>(y0);
  B::scale_rows(m, device<B>(col));  // an n x 1 vector works as well as 1 x n
  CHECK(rel_err(host<B>(m), col.col(0).asDiagonal() * y0) < contract_tol<B>);
  m = device<B>(y0);
  B::scale_columns(m, device<B>(row));
  CHECK(rel_err(host<B>(m), y0 * row.row(0).asDiagonal()) < contract_tol<B>);

  CHECK(B::squared_norm(device<B>(x)) == doctest::Approx(x.squaredNorm()).epsilon(1e-6));
  CHECK(B::all_finite(device<B>(x)));
  HostMatrix bad = x;
  bad(2, 1) = INFINITY;
  CHECK_FALSE(B::all_finite(device<B>(bad)));
  bad(2, 1) = NAN;
  CHECK_FALSE(B::all_finite(device<B>(bad)));
}

TEST_CASE_TEMPLATE("backend: random fills are deterministic and have the right law", B, MILORA_TEST_BACKENDS) {
  auto u = B::zeros(200, 100), u2 = B::zeros(200, 100), n = B::zeros(200, 100);
  B::fill_uniform(u, -0.5, 1.5, 42);
  B::fill_uniform(u2, -0.5, 1.5, 42);
  B::fill_normal(n, 1.0, 3.0, 42);
  const HostMatrix hu = host<B>(u), hn = host<B>(n);
  CHECK(hu == host<B>(u2));
  CHECK(hu.minCoeff() >= -0.5);
  CHECK(hu.maxCoeff() < 1.5);
  // 20000 samples: the standard error of the mean is sd/141, so 5 standard errors is safe.
  CHECK(std::abs(hu.mean() - 0.5) < 5 * (2 / std::sqrt(12.0)) / 141);
  CHECK(std::abs(hn.mean() - 1.0) < 5 * 3.0 / 141);
  const double sd = std::sqrt((hn.array() - hn.mean()).square().mean());
  CHECK(std::abs(sd - 3.0) < 0.05 * 3.0);
  B::fill_uniform(u2, -0.5, 1.5, 43);
  CHECK(host<B>(u2) != hu);  // another seed, another stream
}

TEST_CASE_TEMPLATE("backend: thin SVD matches an independent Jacobi SVD", B, MILORA_TEST_BACKENDS) {
  for (auto [m, n] : {std::pair<Index, Index>{9, 5}, {5, 9}, {6, 6}}) {
    const HostMatrix a = random_normal(m, n, 11);
    const auto f = B::svd(device<B>(a));
    const Index k = std::min(m, n);
    REQUIRE(B::rows(f.U) == m);
    REQUIRE(B::cols(f.U) == k);
    REQUIRE(B::cols(f.S) == k);
    REQUIRE(B::rows(f.Vt) == k);
    REQUIRE(B::cols(f.Vt) == n);
    const HostMatrix U = host<B>(f.U), S = host<B>(f.S), Vt = host<B>(f.Vt);
    const ReferenceSVD ref(a);
    for (Index i = 0; i < k; ++i) CHECK(S(0, i) == doctest::Approx(ref.S(i)).epsilon(10 * contract_tol<B>));
    CHECK(rel_err(U * S.row(0).asDiagonal() * Vt, a) < 10 * contract_tol<B>);
    CHECK((U.transpose() * U - HostMatrix::Identity(k, k)).norm() < 10 * contract_tol<B> * k);
    CHECK((Vt * Vt.transpose() - HostMatrix::Identity(k, k)).norm() < 10 * contract_tol<B> * k);
  }
}

TEST_CASE_TEMPLATE("backend: eigh with an index range, qr and cholesky", B, MILORA_TEST_BACKENDS) {
  const HostMatrix g = random_normal(8, 6, 12);
  const HostMatrix spd = g.transpose() * g + 0.1 * HostMatrix::Identity(6, 6);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ref((Eigen::MatrixXd(spd)));

  const auto e = B::eigh(device<B>(spd), 1, 3);  // eigenpairs 1..3, ascending
  const HostMatrix vals = host<B>(e.values), vecs = host<B>(e.vectors);
  REQUIRE(vals.cols() == 3);
  REQUIRE(vecs.rows() == 6);
  REQUIRE(vecs.cols() == 3);
  for (Index i = 0; i < 3; ++i) {
    CHECK(vals(0, i) == doctest::Approx(ref.eigenvalues()(i + 1)).epsilon(100 * contract_tol<B>));
    CHECK((spd * vecs.col(i) - vals(0, i) * vecs.col(i)).norm() < 100 * contract_tol<B> * spd.norm());
  }
  CHECK_THROWS_AS(B::eigh(device<B>(spd), 3, 6), milora::shape_error);

  const auto q = B::qr(device<B>(g));
  const HostMatrix Q = host<B>(q.Q), R = host<B>(q.R);
  CHECK(rel_err(Q * R, g) < 10 * contract_tol<B>);
  CHECK((Q.transpose() * Q - HostMatrix::Identity(6, 6)).norm() < 10 * contract_tol<B> * 6);
  CHECK(R.triangularView<Eigen::StrictlyLower>().toDenseMatrix().norm() == 0.0);
  CHECK_THROWS_AS(B::qr(device<B>(random_normal(3, 5, 1))), milora::shape_error);

  const HostMatrix L = host<B>(B::cholesky(device<B>(spd)));
  CHECK(rel_err(L * L.transpose(), spd) < 10 * contract_tol<B>);
  CHECK(L.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().norm() == 0.0);
  CHECK_THROWS_AS(B::cholesky(device<B>(-spd)), milora::numerical_error);
}

// Views of interior blocks are how the adapter writes into slices of fused or foreign weights: an
// operation on a block must change exactly that block (a backend that ignored the row stride, or
// wrote through a temporary, would smear values into the gaps).
TEST_CASE_TEMPLATE("backend: operations on an interior block write only that block", B, MILORA_TEST_BACKENDS) {
  const HostMatrix big0 = host<B>(device<B>(random_normal(6, 7, 21)));  // exactly representable in B
  const HostMatrix a = random_normal(3, 2, 22), b = random_normal(2, 4, 23);
  const HostMatrix x = random_normal(3, 4, 24), row = random_normal(1, 4, 25), col = random_normal(3, 1, 26);
  const auto inside = [](const HostMatrix& m) { return HostMatrix(m.block(1, 2, 3, 4)); };
  const auto outside_unchanged = [&](const HostMatrix& m) {
    HostMatrix d = m - big0;
    d.block(1, 2, 3, 4).setZero();
    return d.norm() == 0.0;
  };
  const auto on_block = [&](auto op) {
    auto big = device<B>(big0);
    op(B::block(big, 1, 2, 3, 4));
    return host<B>(big);
  };
  const double tol = 10 * contract_tol<B>;
  const HostMatrix blk0 = inside(big0);

  HostMatrix r = on_block([&](auto v) { B::gemm(2, device<B>(a), Trans::no, device<B>(b), Trans::no, 0.5, v); });
  CHECK(outside_unchanged(r));
  CHECK(rel_err(inside(r), 0.5 * blk0 + 2 * a * b) < tol);

  r = on_block([&](auto v) { B::axpy(3, device<B>(x), v); });
  CHECK(outside_unchanged(r));
  CHECK(rel_err(inside(r), blk0 + 3 * x) < tol);

  r = on_block([&](auto v) { B::scale(v, 0); });
  CHECK(outside_unchanged(r));
  CHECK(inside(r).norm() == 0.0);

  r = on_block([&](auto v) { B::add_row_broadcast(v, device<B>(row)); });
  CHECK(outside_unchanged(r));
  CHECK(rel_err(inside(r), blk0.rowwise() + row.row(0)) < tol);

  r = on_block([&](auto v) { B::scale_rows(v, device<B>(col)); });
  CHECK(outside_unchanged(r));
  CHECK(rel_err(inside(r), col.col(0).asDiagonal() * blk0) < tol);

  r = on_block([&](auto v) { B::copy(device<B>(x), v); });
  CHECK(outside_unchanged(r));
  CHECK(rel_err(inside(r), x) < tol);

  r = on_block([&](auto v) { B::fill_normal(v, 0, 1, 5); });
  CHECK(outside_unchanged(r));

  // Reading a block: a strided const view gives the block's values, and a vector stored as a
  // column of a bigger matrix (row stride 7) works as a broadcast operand.
  CHECK(rel_err(host<B>(B::clone(B::cblock(device<B>(big0), 1, 2, 3, 4))), blk0) < tol);
  const auto bigd = device<B>(big0);
  auto m = device<B>(x);
  B::scale_columns(m, B::cblock(bigd, 0, 3, 4, 1));
  CHECK(rel_err(host<B>(m), x * big0.block(0, 3, 4, 1).col(0).asDiagonal()) < tol);
  CHECK(B::squared_norm(B::cblock(bigd, 1, 2, 3, 4)) == doctest::Approx(blk0.squaredNorm()).epsilon(1e-6));
}

TEST_CASE_TEMPLATE("backend: syrk (full symmetric result) and trsm with a lower factor", B, MILORA_TEST_BACKENDS) {
  const HostMatrix a = random_normal(5, 7, 31), c0 = random_normal(5, 5, 32);
  const HostMatrix sym0 = c0 + c0.transpose();
  auto c = device<B>(sym0);
  B::syrk(2, device<B>(a), Trans::no, 0.5, c);
  CHECK(rel_err(host<B>(c), 2 * a * a.transpose() + 0.5 * sym0) < 10 * contract_tol<B>);
  auto ct = B::zeros(7, 7);
  B::syrk(1, device<B>(a), Trans::yes, 0, ct);
  CHECK(rel_err(host<B>(ct), a.transpose() * a) < 10 * contract_tol<B>);

  const HostMatrix g = random_normal(9, 6, 33);
  const HostMatrix spd = g.transpose() * g + HostMatrix::Identity(6, 6);
  const HostMatrix l = host<B>(B::cholesky(device<B>(spd))), rhs = random_normal(6, 3, 34);
  auto x = device<B>(rhs);
  B::trsm(device<B>(l), Trans::no, x);
  CHECK(rel_err(l * host<B>(x), rhs) < 100 * contract_tol<B>);
  x = device<B>(rhs);
  B::trsm(device<B>(l), Trans::yes, x);
  CHECK(rel_err(l.transpose() * host<B>(x), rhs) < 100 * contract_tol<B>);
  auto wrong = B::zeros(5, 2);
  CHECK_THROWS_AS(B::trsm(device<B>(l), Trans::no, wrong), milora::shape_error);

  // n = 300: more than two of the host backends' 128-row panels, the last one partial; X a block
  // of a wider matrix (row stride 9, not 5), whose other columns must stay as they were.
  const HostMatrix g3 = random_normal(320, 300, 35);
  const HostMatrix spd3 = g3.transpose() * g3 / 320.0 + HostMatrix::Identity(300, 300);
  const HostMatrix l3 = host<B>(B::cholesky(device<B>(spd3))), wide = random_normal(300, 9, 36);
  const HostMatrix rhs3 = wide.block(0, 2, 300, 5), stored = host<B>(device<B>(wide));  // rounded to B's scalar
  for (const Trans t : {Trans::no, Trans::yes}) {
    CAPTURE(t == Trans::yes);
    auto x3 = device<B>(wide);
    B::trsm(device<B>(l3), t, B::block(x3, 0, 2, 300, 5));
    const HostMatrix got = host<B>(x3);
    const HostMatrix op = t == Trans::yes ? HostMatrix(l3.transpose()) : l3;
    // against a direct solve in double on the host
    const HostMatrix expected = t == Trans::yes ? HostMatrix(l3.transpose().template triangularView<Eigen::Upper>().solve(rhs3))
                                                : HostMatrix(l3.template triangularView<Eigen::Lower>().solve(rhs3));
    CHECK(rel_err(op * got.block(0, 2, 300, 5), rhs3) < 100 * contract_tol<B>);
    CHECK(rel_err(got.block(0, 2, 300, 5), expected) < 100 * contract_tol<B>);
    CHECK(got.block(0, 0, 300, 2) == stored.block(0, 0, 300, 2));
    CHECK(got.block(0, 7, 300, 2) == stored.block(0, 7, 300, 2));
  }
}
