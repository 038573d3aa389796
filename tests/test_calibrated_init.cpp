// The data-driven starts (CorDA, EVA, LoRA-GA) and the statistics they are built from, on every
// backend, each against an independent computation in double on the host: the calibration inputs'
// second moment and covariance formed directly, CorDA's decomposition with Eigen's Jacobi SVD and
// an explicit inverse, EVA's components with Eigen's SelfAdjointEigenSolver, LoRA-GA's first step
// against the rank-2r truncation of the gradient by a Jacobi SVD (none of them the code under test).
#include "test_util.hpp"

using namespace test;

namespace {

// Calibration inputs with structure: t tokens of a few directions with decreasing spread, plus a
// non-zero mean (so that centred and uncentred statistics differ) and a little isotropic noise.
HostMatrix calibration_inputs(Index t, Index in, unsigned seed) {
  const Index k = std::min<Index>(in, 8);
  HostMatrix z = random_normal(t, k, seed);
  for (Index j = 0; j < k; ++j) z.col(j) *= 6.0 / double(j + 1);  // spreads 6, 3, 2, 1.5, ...: clear gaps
  HostMatrix x = z * random_orthonormal(in, k, seed + 1).transpose() + 0.05 * random_normal(t, in, seed + 2);
  x.rowwise() += 0.7 * random_normal(1, in, seed + 3).row(0);
  return x;
}

template <class B>
std::shared_ptr<milora::InputStatistics<B>> statistics_of(const HostMatrix& x, Index batches) {
  auto stats = std::make_shared<milora::InputStatistics<B>>(x.cols());
  const Index per = x.rows() / batches;
  for (Index i = 0; i < batches; ++i)
    stats->observe(device<B>(x.middleRows(i * per, i + 1 == batches ? x.rows() - i * per : per)));
  return stats;
}

template <class B>
constexpr double stat_tol = is_float<B> ? 1e-5 : 1e-12;

}  // namespace

TEST_CASE_TEMPLATE("InputStatistics: second moment and covariance over batches equal X^T X / n and the centred covariance",
                   B, MILORA_TEST_BACKENDS) {
  const HostMatrix x = calibration_inputs(60, 12, 301);
  const auto stats = statistics_of<B>(x, 3);
  CHECK(stats->tokens() == 60);
  const HostMatrix xs = host<B>(device<B>(x));  // x as the backend holds it
  const HostMatrix m2 = xs.transpose() * xs / 60.0;
  const HostMatrix centred = xs.rowwise() - xs.colwise().mean();
  const HostMatrix cov = centred.transpose() * centred / 60.0;
  CHECK(rel_err(host<B>(stats->second_moment()), m2) <= stat_tol<B>);
  CHECK(rel_err(host<B>(stats->covariance()), cov) <= 10 * stat_tol<B>);  // a difference of two sums
}

TEST_CASE_TEMPLATE("InputStatistics: a wrong width or a NaN is refused and changes nothing, no tokens is a state error",
                   B, MILORA_TEST_BACKENDS) {
  milora::InputStatistics<B> stats(4);
  CHECK_THROWS_AS(stats.second_moment(), milora::state_error);
  CHECK_THROWS_AS(milora::InputStatistics<B>(0), milora::value_error);
  stats.observe(device<B>(random_normal(5, 4, 311)));
  const HostMatrix before = host<B>(stats.second_moment());
  CHECK_THROWS_WITH_AS(stats.observe(device<B>(random_normal(5, 3, 312))), doctest::Contains("5x3"), milora::shape_error);
  HostMatrix bad = random_normal(2, 4, 313);
  bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(stats.observe(device<B>(bad)), doctest::Contains("at (1, 2)"), milora::value_error);
  CHECK(stats.tokens() == 5);
  CHECK(host<B>(stats.second_moment()) == before);
}

TEST_CASE_TEMPLATE("CorDA (KPM and IPM): s*B*A is the selected part of (W C~) C~^-1, W' + s*B*A = W, A C~ has orthogonal rows",
                   B, MILORA_TEST_BACKENDS) {
  const Index r = 3;
  for (auto [out, in] : {std::pair<Index, Index>{24, 16}, {16, 24}}) {
    CAPTURE(out);
    CAPTURE(in);
    const HostMatrix x = calibration_inputs(80, in, 321);
    const auto stats = statistics_of<B>(x, 2);
    const HostMatrix w0 = host<B>(device<B>(random_normal(out, in, 322)));

    // The reference, in double: C~ = C + 0.01 mean(diag C) I (positive definite here, so PEFT's
    // doubling never starts), Jacobi SVD of W C~, V'^T = Vt C~^-1 with an explicit inverse.
    const HostMatrix xs = host<B>(device<B>(x));
    Eigen::MatrixXd c = xs.transpose() * xs / double(xs.rows());
    c.diagonal().array() += 0.01 * c.diagonal().mean();
    const ReferenceSVD ref(HostMatrix(w0 * c));
    const Eigen::MatrixXd c_inv = c.inverse();
    const Index k = std::min(out, in);

    auto check_mode = [&]<milora::CordaMode Mode>(Index first) {
      CAPTURE(first);
      milora::Linear<B> layer(device<B>(w0));
      milora::CorDA<B, Mode> ad(layer, {.rank = r, .alpha = 6}, {stats});
      CHECK(ad.residual());
      const double s = ad.scale();
      const HostMatrix a = host<B>(ad.A()), b = host<B>(ad.B()), w1 = host<B>(layer.weight());
      // the contract: W' + s*B*A = W
      CHECK(rel_err(w1 + s * b * a, w0) <= contract_tol<B> * 10);
      // s*B*A = U_I S_I Vt_I C~^-1
      const Eigen::MatrixXd expected = ref.U.middleCols(first, r) * ref.S.segment(first, r).asDiagonal() *
                                       ref.V.middleCols(first, r).transpose() * c_inv;
      const double tol = is_float<B> ? 2e-3 : 1e-9;
      CHECK(rel_err(s * b * a, expected) <= tol);
      // PEFT's split of the magnitude: B = U_I sqrt(S_I/s), A = sqrt(S_I/s) V'_I^T, so
      // B^T B = diag(S_I/s) and (A C~)(A C~)^T = diag(S_I/s)
      const Eigen::MatrixXd d = (ref.S.segment(first, r) / s).asDiagonal();
      CHECK((b.transpose() * b - d).norm() <= tol * d.norm());
      const Eigen::MatrixXd ac = a * c;
      CHECK((ac * ac.transpose() - d).norm() <= tol * d.norm());
      // the adapter keeps its policy without the statistics
      CHECK(ad.init().inputs == nullptr);
      // merged, the layer holds W again; unmerged, W'
      ad.merge();
      CHECK(rel_err(host<B>(layer.weight()), w0) <= contract_tol<B> * 10);
      ad.unmerge();
      CHECK(rel_err(host<B>(layer.weight()), w1) <= contract_tol<B> * 10);
    };
    check_mode.template operator()<milora::CordaMode::knowledge_preserved>(k - r);
    check_mode.template operator()<milora::CordaMode::instruction_previewed>(0);
  }
}

TEST_CASE_TEMPLATE("CorDA: statistics of another width, all-zero inputs or a retained copy are refused, W unchanged", B,
                   MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(8, 6, 331);
  milora::Linear<B> layer(device<B>(w0));
  const HostMatrix before = host<B>(layer.weight());
  using Init = milora::ContextOrientedSVD<B>;
  const milora::AdapterConfig cfg{.rank = 2, .alpha = 4};
  CHECK_THROWS_WITH_AS(milora::CorDA<B>(layer, cfg, Init{statistics_of<B>(random_normal(10, 5, 332), 1)}),
                       doctest::Contains("5 features"), milora::shape_error);
  CHECK_THROWS_WITH_AS(milora::CorDA<B>(layer, cfg, Init{statistics_of<B>(HostMatrix::Zero(10, 6), 1)}),
                       doctest::Contains("all-zero"), milora::value_error);
  CHECK_THROWS_AS(milora::CorDA<B>(layer, cfg, Init{}), milora::state_error);
  CHECK(host<B>(layer.weight()) == before);
}

TEST_CASE_TEMPLATE("EVA: A = the r leading principal components of the centred inputs, B = 0, base and output unchanged, merge / unmerge", B,
                   MILORA_TEST_BACKENDS) {
  const Index r = 4, in = 20, out = 12;
  const HostMatrix x = calibration_inputs(90, in, 341);
  const auto stats = statistics_of<B>(x, 3);
  const HostMatrix w0 = host<B>(device<B>(random_normal(out, in, 342)));
  milora::Linear<B> layer(device<B>(w0));
  milora::EVA<B> ad(layer, {.rank = r, .alpha = 8}, {stats});
  CHECK_FALSE(ad.residual());
  CHECK(host<B>(layer.weight()) == w0);
  CHECK(host<B>(ad.B()).norm() == 0.0);
  CHECK(ad.init().inputs == nullptr);

  const HostMatrix xs = host<B>(device<B>(x));
  const HostMatrix centred = xs.rowwise() - xs.colwise().mean();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(Eigen::MatrixXd(centred.transpose() * centred) / double(xs.rows()));
  const HostMatrix a = host<B>(ad.A());
  CHECK((a * a.transpose() - HostMatrix::Identity(r, r)).norm() <= (is_float<B> ? 1e-5 : 1e-12));
  for (Index i = 0; i < r; ++i) {  // row i: the eigenvector of the i-th largest eigenvalue (up to sign)
    CAPTURE(i);
    const Eigen::VectorXd v = eig.eigenvectors().col(in - 1 - i);
    CHECK(std::abs(a.row(i).dot(v)) >= 1 - (is_float<B> ? 1e-5 : 1e-12));
    Index arg;
    a.row(i).cwiseAbs().maxCoeff(&arg);
    CHECK(a(i, arg) > 0);  // the sign convention: largest-magnitude entry positive
  }
  // centring matters: the uncentred second moment's leading direction is the mean's, not a component's
  const Eigen::VectorXd mean_dir = xs.colwise().mean().transpose().normalized();
  CHECK(std::abs(a.row(0).dot(mean_dir)) < 0.9);

  // merge / unmerge, with a B as after training (EVA's B = 0 would hide a wrong merge)
  ad.B() = device<B>(random_normal(out, r, 343));
  ad.merge();
  CHECK(rel_err(host<B>(layer.weight()), w0 + ad.scale() * host<B>(ad.B()) * a) <= 10 * contract_tol<B>);
  ad.unmerge();
  CHECK(rel_err(host<B>(layer.weight()), w0) <= 10 * contract_tol<B>);

  // too few tokens for the rank
  milora::Linear<B> other(device<B>(w0));
  CHECK_THROWS_WITH_AS(milora::EVA<B>(other, {.rank = r, .alpha = 8}, {statistics_of<B>(x.topRows(4), 1)}),
                       doctest::Contains("4 calibration tokens"), milora::value_error);
}

namespace {

// The gradient LoRA-GA starts from, with distinct, well separated singular values (5 down to 0.5):
// single singular vectors, not only subspaces, are then determined to ~eps * sigma_max / gap.
HostMatrix gradient_like(Index out, Index in, unsigned seed) {
  const Index k = std::min(out, in);
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) s[std::size_t(i)] = 5.0 - 4.5 * double(i) / double(k - 1);
  return with_spectrum(out, in, s, seed);
}

template <class B>
std::shared_ptr<const milora::matrix_t<B>> shared(const HostMatrix& m) {
  return std::make_shared<const milora::matrix_t<B>>(device<B>(m));
}

}  // namespace

TEST_CASE_TEMPLATE("LoRA-GA: A = c V[:, :r]^T, B = c U[:, r:2r] of the gradient, W' + s*B*A = W, and the first step moves "
                   "s*B*A along s^2 c^2 G_2r, the best rank-2r approximation of the full gradient",
                   B, MILORA_TEST_BACKENDS) {
  const Index r = 3;
  for (auto [out, in] : {std::pair<Index, Index>{24, 16}, {16, 24}}) {
    CAPTURE(out);
    CAPTURE(in);
    const HostMatrix g = host<B>(device<B>(gradient_like(out, in, 351)));
    const HostMatrix w0 = host<B>(device<B>(random_normal(out, in, 352)));
    milora::Linear<B> layer(device<B>(w0));
    milora::LoRAGA<B> ad(layer, {.rank = r, .alpha = 6}, {shared<B>(g)});
    CHECK(ad.residual());
    CHECK(ad.init().gradient == nullptr);  // the adapter keeps its policy without the gradient
    const double s = ad.scale(), c = std::pow(double(out), 0.25) / std::sqrt(16.0);
    const HostMatrix a = host<B>(ad.A()), b = host<B>(ad.B()), w1 = host<B>(layer.weight());
    CHECK(rel_err(w1 + s * b * a, w0) <= 10 * contract_tol<B>);

    // The factors against a Jacobi SVD of G in double: rows of A = c v_i (i < r), columns of
    // B = c u_{r+i}, up to sign; the sign makes the largest-magnitude entry positive.
    const ReferenceSVD ref(g);
    const double tol = is_float<B> ? 1e-4 : 1e-10;
    for (Index i = 0; i < r; ++i) {
      CAPTURE(i);
      CHECK(std::abs(a.row(i).dot(ref.V.col(i))) / (c * c) >= 1 - tol);
      CHECK(std::abs(b.col(i).dot(ref.U.col(r + i))) / (c * c) >= 1 - tol);
      Index arg;
      a.row(i).cwiseAbs().maxCoeff(&arg);
      CHECK(a(i, arg) > 0);
      b.col(i).cwiseAbs().maxCoeff(&arg);
      CHECK(b(arg, i) > 0);
    }

    // The paper's property. x = I (in tokens) and dL/dy = Gᵀ make dL/dW = dyᵀ x = G; then the
    // adapter's gradients give d(s*B*A)/d(-lr) = s*(dB A + B dA) = s^2 (G AᵀA + B BᵀG) = s^2 c^2 G_2r.
    const HostMatrix x = HostMatrix::Identity(in, in), dy = g.transpose();
    auto y = B::zeros(in, out), h = B::zeros(in, r);
    ad.forward(device<B>(x), y, h);
    ad.zero_grad();
    ad.backward(device<B>(x), h, device<B>(dy));
    const HostMatrix step = s * (host<B>(ad.grad_B()) * a + b * host<B>(ad.grad_A()));
    const Eigen::MatrixXd g2r = ref.U.leftCols(2 * r) * ref.S.head(2 * r).asDiagonal() * ref.V.leftCols(2 * r).transpose();
    CHECK(rel_err(step, s * s * c * c * g2r) <= tol);
    // so its cosine with the full gradient is ||G_2r|| / ||G||, the most any rank-2r update reaches
    const double cosine = (step.array() * g.array()).sum() / (step.norm() * g.norm());
    CHECK(cosine >= (1 - tol) * g2r.norm() / g.norm());

    // merged, the layer holds W again; unmerged, W'
    ad.merge();
    CHECK(rel_err(host<B>(layer.weight()), w0) <= 10 * contract_tol<B>);
    ad.unmerge();
    CHECK(rel_err(host<B>(layer.weight()), w1) <= 10 * contract_tol<B>);

    // PEFT's solver choice (a randomized SVD) spans the same directions here (clear gaps)
    milora::Linear<B> fast_layer(device<B>(w0));
    milora::LoRAGA<B, milora::RandomizedSVD> fast(fast_layer, {.rank = r, .alpha = 6}, {shared<B>(g)});
    CHECK(overlap_rows(host<B>(fast.A()), ref.V.leftCols(r)) >= 1 - (is_float<B> ? 1e-5 : 1e-10));
    CHECK(overlap_rows(HostMatrix(host<B>(fast.B()).transpose()), ref.U.middleCols(r, r)) >= 1 - (is_float<B> ? 1e-5 : 1e-10));
    CHECK(rel_err(host<B>(fast_layer.weight()) + s * host<B>(fast.B()) * host<B>(fast.A()), w0) <= 10 * contract_tol<B>);
  }
}

TEST_CASE_TEMPLATE("LoRA-GA: a gradient of another shape, too high a rank, a NaN or all-zero gradient, a bad gamma or a "
                   "retained copy are refused, W unchanged",
                   B, MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(8, 6, 361);
  milora::Linear<B> layer(device<B>(w0));
  const HostMatrix before = host<B>(layer.weight());
  using Init = milora::GradientApproximation<B>;
  const milora::AdapterConfig cfg{.rank = 2, .alpha = 4};
  CHECK_THROWS_WITH_AS(milora::LoRAGA<B>(layer, cfg, Init{shared<B>(random_normal(8, 5, 362))}),
                       doctest::Contains("the gradient is 8x5, W is 8x6"), milora::shape_error);
  CHECK_THROWS_WITH_AS(milora::LoRAGA<B>(layer, {.rank = 4, .alpha = 4}, Init{shared<B>(random_normal(8, 6, 363))}),
                       doctest::Contains("2r = 8"), milora::value_error);
  HostMatrix nan = random_normal(8, 6, 364);
  nan(3, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(milora::LoRAGA<B>(layer, cfg, Init{shared<B>(nan)}), doctest::Contains("NaN"), milora::value_error);
  CHECK_THROWS_WITH_AS(milora::LoRAGA<B>(layer, cfg, Init{shared<B>(HostMatrix::Zero(8, 6))}), doctest::Contains("all zero"),
                       milora::value_error);
  CHECK_THROWS_WITH_AS(milora::LoRAGA<B>(layer, cfg, Init{shared<B>(random_normal(8, 6, 365)), 0.0}),
                       doctest::Contains("stable_gamma"), milora::value_error);
  CHECK_THROWS_AS(milora::LoRAGA<B>(layer, cfg, Init{}), milora::state_error);
  CHECK(host<B>(layer.weight()) == before);
}
