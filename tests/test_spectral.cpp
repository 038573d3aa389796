// Fast spectral solvers against ExactSVD: RandomizedSVD and CusolverRandomizedSVD (top, PiSSA) and CholeskyKrylovSVD (bottom,
// MiLoRA), on (a) a spectrum with a clear gap, (b) an LLM-like power law whose minor tail is
// clustered, (c) a rank-deficient matrix, (d) tall and wide shapes.
//
// Accuracy measures: the mean squared cosine of the principal angles between the fast and the exact
// subspaces (1 = identical; the MiLoRA target is >= 0.999) and the relative error of the selected
// singular values.
#include <string>
#include <type_traits>

#include "test_util.hpp"
#include "milora/spectral/cholesky_krylov.hpp"
#include "milora/spectral/cusolver_randomized.hpp"
#include "milora/spectral/randomized.hpp"

using namespace test;

namespace {

// sigma_i = (i + 1)^-0.6 + 0.02, i = 0 .. k-1: a few large values and a flat, clustered minor tail
// (at k = 300 the 8 smallest are within 1.3% of each other).
std::vector<double> llm_like(Index k) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) s[std::size_t(i)] = std::pow(double(i + 1), -0.6) + 0.02;
  return s;
}

// rows of Vt span the subspace; Q^T orthonormal columns from the exact solver
double overlap(const HostMatrix& vt_fast, const HostMatrix& vt_exact) {
  return overlap_rows(vt_fast, Eigen::MatrixXd(vt_exact.transpose()));
}

double sigma_error(const HostMatrix& s_fast, const HostMatrix& s_exact) {
  return (s_fast - s_exact).cwiseAbs().maxCoeff() / s_exact.cwiseAbs().maxCoeff();
}

// Collects milora::log lines while alive.
struct LogCapture {
  std::vector<std::string> lines;
  milora::LogSink previous;
  LogCapture() : previous(milora::set_log_sink([this](std::string_view l) { lines.emplace_back(l); })) {}
  ~LogCapture() { milora::set_log_sink(previous); }
};

struct Case {
  const char* name;
  Index out, in;
  bool llm;  // else the gapped spectrum
};
constexpr Case kCases[] = {{"gapped, tall", 400, 300, false}, {"gapped, wide", 300, 400, false},
                           {"llm-like, tall", 400, 300, true}, {"llm-like, wide", 300, 400, true}};

}  // namespace

// Thresholds. Randomized SVD with its defaults p = r, q = 6 on the LLM-like spectrum at r = 8: the
// error of subspace iteration decays like (sigma_{r+p+1} / sigma_r)^(2q+1) = (17/8)^(-0.6*13) ~ 3e-3
// in angle, so overlap ~ 1 - 1e-5 and sigma (a Ritz value, quadratic in the angle) ~ 1e-5 relative;
// we require overlap >= 0.999 and sigma error <= 1e-4, the PiSSA target (float rounding
// adds ~1e-6).
namespace {
template <class B, class Solver>
void check_top_solver(const Solver& solver) {
  const Index r = 8;
  for (const auto& c : kCases) {
    const std::string name = c.name;
    CAPTURE(name);
    const Index k = std::min(c.out, c.in);
    const auto w = device<B>(with_spectrum(c.out, c.in, c.llm ? llm_like(k) : gapped_spectrum(k, r), 51));
    const auto fast = solver.template top<B>(w, r);
    const auto exact = milora::ExactSVD{}.top<B>(w, r);
    REQUIRE(B::rows(fast.U) == c.out);
    REQUIRE(B::cols(fast.U) == r);
    REQUIRE(B::rows(fast.S) * B::cols(fast.S) == r);
    REQUIRE(B::rows(fast.Vt) == r);
    REQUIRE(B::cols(fast.Vt) == c.in);
    CHECK(overlap(host<B>(fast.Vt), host<B>(exact.Vt)) >= 0.999);
    CHECK(overlap(host<B>(fast.U).transpose(), host<B>(exact.U).transpose()) >= 0.999);
    CHECK(sigma_error(host<B>(fast.S), host<B>(exact.S)) <= 1e-4);
    // U and Vt are a pair: U^T W V = diag(S) (a transposed or mismatched factor fails this).
    const HostMatrix core = host<B>(fast.U).transpose() * host<B>(w) * host<B>(fast.Vt).transpose();
    HostMatrix sigma = HostMatrix::Zero(r, r);
    sigma.diagonal() = host<B>(fast.S).reshaped();
    CHECK((core - sigma).norm() <= 1e-3 * sigma.norm());
  }
}
}  // namespace

TEST_CASE_TEMPLATE("RandomizedSVD: top-r subspace and sigma match ExactSVD", B, MILORA_TEST_BACKENDS) {
  const Index r = 8;
  check_top_solver<B>(milora::RandomizedSVD{});
  // With no power iteration the same sketch is visibly worse on the slowly decaying spectrum:
  // the test can tell a working iteration from a missing one.
  const auto w = device<B>(with_spectrum(400, 300, llm_like(300), 52));
  const auto exact = milora::ExactSVD{}.top<B>(w, r);
  const auto crude = milora::RandomizedSVD{.oversampling = 0, .power_iterations = 0}.top<B>(w, r);
  CHECK(sigma_error(host<B>(crude.S), host<B>(exact.S)) > 1e-2);
}

// The same thresholds for cuSOLVER's implementation of the same algorithm (RandomizedSVD itself on
// the host backends).
TEST_CASE_TEMPLATE("CusolverRandomizedSVD: top-r subspace and sigma match ExactSVD", B, MILORA_TEST_BACKENDS) {
  check_top_solver<B>(milora::CusolverRandomizedSVD{});
  CHECK_THROWS_AS(milora::CusolverRandomizedSVD{.power_iterations = -1}.top<B>(device<B>(random_normal(50, 50, 1)), 2),
                  milora::value_error);
  CHECK_THROWS_AS(milora::CusolverRandomizedSVD{}.top<B>(device<B>(random_normal(50, 40, 1)), 41), milora::shape_error);
}

// CholeskyKrylovSVD: converged means the Davis-Kahan bound ||R|| / gap <= 1e-3 on sin(angle), so
// overlap >= 1 - 1e-6; we require the MiLoRA target 0.999 and that no fallback was needed. Its
// sigma come from an SVD of W projected on the subspace, in double: error ~ float rounding, and
// we allow 1e-4.
TEST_CASE_TEMPLATE("CholeskyKrylovSVD: bottom-r subspace and sigma match ExactSVD, no fallback", B, MILORA_TEST_BACKENDS) {
  const Index r = 8;
  // blocks of 16; the defaults for how a phase ends and where the first shift goes, and the
  // conservative choices (no extension, a first shift of the whole residual) they replaced
  const milora::CholeskyKrylovSVD solvers[] = {{.oversampling = 8, .phase_blocks = 5, .max_blocks = 15},
                                                {.oversampling = 8, .phase_blocks = 5, .max_blocks = 15,
                                                 .extra_blocks = 0, .first_shift = 1.0}};
  for (const auto& solver : solvers) {
    for (const auto& c : kCases) {
      const std::string name = c.name;
      CAPTURE(name);
      CAPTURE(solver.first_shift);
      const Index k = std::min(c.out, c.in);
      const auto w = device<B>(with_spectrum(c.out, c.in, c.llm ? llm_like(k) : gapped_spectrum(k, r), 53));
      LogCapture log;
      milora::CholeskyKrylovReport report;
      const auto fast = solver.bottom<B>(w, r, &report);
      CHECK(log.lines.empty());  // the fast path, not the exact fallback
      // a float weight: the float pass, accepted by its check in double; a double one: in double
      CHECK(report.path == (std::is_same_v<milora::scalar_t<B>, float> ? milora::CholeskyKrylovReport::Path::float_pass
                                                                         : milora::CholeskyKrylovReport::Path::double_pass));
      CHECK(report.defect <= solver.tolerance);
      const auto exact = milora::ExactSVD{}.bottom<B>(w, r);
      REQUIRE(B::rows(fast.U) == c.out);
      REQUIRE(B::cols(fast.U) == r);
      REQUIRE(B::cols(fast.S) == r);
      REQUIRE(B::rows(fast.Vt) == r);
      REQUIRE(B::cols(fast.Vt) == c.in);
      CHECK(overlap(host<B>(fast.Vt), host<B>(exact.Vt)) >= 0.999);
      CHECK(overlap(host<B>(fast.U).transpose(), host<B>(exact.U).transpose()) >= 0.999);
      CHECK(sigma_error(host<B>(fast.S), host<B>(exact.S)) <= 1e-4);
      // descending, as ExactSVD::bottom
      const HostMatrix s = host<B>(fast.S);
      for (Index i = 1; i < r; ++i) CHECK(s(0, i) <= s(0, i - 1));
    }
  }
}

// extra_blocks: a phase whose estimate is below 1/2 and halving may run past phase_blocks. With
// room for at most two more blocks after two phases of 4 (max_blocks = 10), the second phase on
// this weight ends short of the tolerance: without the extension that is a fallback to the exact
// SVD (no room for a third phase), with it the phase converges within those two blocks. In double:
// the phases of a float weight end at a stall instead, and the check in double takes over.
TEST_CASE_TEMPLATE("CholeskyKrylovSVD: a phase about to converge runs a block longer instead of giving up", Bf, MILORA_TEST_BACKENDS) {
  using B = milora::rebind_t<Bf, double>;
  const Index r = 8;
  const auto w = device<B>(with_spectrum(400, 300, llm_like(300), 57));
  const milora::CholeskyKrylovSVD strict{.oversampling = 16, .phase_blocks = 4, .max_blocks = 10, .extra_blocks = 0};
  milora::CholeskyKrylovSVD extended = strict;
  extended.extra_blocks = 4;
  {
    LogCapture log;
    (void)strict.bottom<B>(w, r);
    REQUIRE(log.lines.size() == 1);
    CHECK(log.lines[0].find("no convergence") != std::string::npos);
  }
  LogCapture log;
  const auto fast = extended.bottom<B>(w, r);
  CHECK(log.lines.empty());
  const auto exact = milora::ExactSVD{}.bottom<B>(w, r);
  CHECK(overlap(host<B>(fast.Vt), host<B>(exact.Vt)) >= 0.999);
  CHECK(sigma_error(host<B>(fast.S), host<B>(exact.S)) <= 1e-4);
}

// A float weight's first pass works on the Gram matrix in float. Here the 8 smallest sigma are
// 1e-6 .. 2e-6 (the rest 1 down to 1e-3, geometric): the Gram matrix's 8 smallest eigenvalues,
// ~1e-12, are far below what rounding it to float moves (~6e-8), so that matrix is indefinite and
// its factorisation fails (checked below, for LAPACK's and Eigen's), while the double one
// (kappa 1e12 < 1 / eps_64) succeeds. The solver must go on in double: no fallback to the exact SVD. Reference: the exact SVD in double of the same (float) values,
// since a float SVD resolves these sigma only to eps_32 * sigma_max = 6e-8, i.e. 6%. Bounds: the
// Gram matrix in double gives lambda to eps_64 ||G|| = 1e-16, i.e. sigma to ~1e-4 relative here;
// we allow 1e-3, and overlap 0.999.
TEST_CASE_TEMPLATE("CholeskyKrylovSVD: a Gram matrix beyond float's range is factored in double", B, MILORA_TEST_BACKENDS) {
  using D = milora::rebind_t<B, double>;
  const Index r = 8, k = 200;
  std::vector<double> sigma(static_cast<std::size_t>(k));
  for (Index i = 0; i < k - r; ++i) sigma[std::size_t(i)] = std::pow(10.0, -3.0 * double(i) / double(k - r - 1));
  for (Index i = 0; i < r; ++i) sigma[std::size_t(k - r + i)] = 1e-6 * (2.0 - double(i) / double(r));
  const auto w = device<B>(with_spectrum(300, k, sigma, 59));
  const auto wd = milora::convert<D, B>(w);
  if constexpr (std::is_same_v<milora::scalar_t<B>, float>) {
    auto g = D::zeros(k, k);
    D::syrk(1.0, wd, milora::Trans::yes, 0.0, g);
    CHECK_THROWS_AS(B::cholesky(milora::convert<B, D>(g)), milora::numerical_error);  // the path under test
    CHECK_NOTHROW(D::cholesky(g));
  }
  LogCapture log;
  milora::CholeskyKrylovReport report;
  const auto fast = milora::CholeskyKrylovSVD{.oversampling = 8}.bottom<B>(w, r, &report);
  CHECK(log.lines.empty());
  CHECK_FALSE(report.float_tried);
  CHECK(report.path == milora::CholeskyKrylovReport::Path::double_pass);
  const auto exact = milora::ExactSVD{}.bottom<D>(wd, r);
  CHECK(overlap(host<B>(fast.Vt), host<D>(exact.Vt)) >= 0.999);
  CHECK(overlap(host<B>(fast.U).transpose(), host<D>(exact.U).transpose()) >= 0.999);
  CHECK(sigma_error(host<B>(fast.S), host<D>(exact.S)) <= 1e-3);
}

// The float pass converges to the minor subspace of the Gram matrix as rounded to float, which is
// not W's when the minor tail is clustered more tightly than float resolves. Here 24 sigma at
// 1e-3 * (1 + 1e-3 j), j = 1 .. 24 (the rest 1 down to 1e-2, geometric): eigenvalue gaps of
// ~2e-9 in the Gram matrix, against ~1e-8 of float noise in it. The float Gram matrix's own 8
// smallest eigenvectors are far off (overlap < 0.9, checked), and a float SVD is off too; the
// check in double must see that and its Davidson steps must find W's subspace. Reference: the SVD
// in double of the same float values. Bounds: the check accepts an estimated overlap of
// 1 - 1e-4 (Davis-Kahan), so 0.999 with margin; sigma from the core SVD in double ~1e-7 (measured
// 6e-8), we allow 1e-5. A check that accepted the float pass as it is, or that took the other side
// through the float factor, fails these; one that never accepted it fails the path check.
TEST_CASE_TEMPLATE("CholeskyKrylovSVD: the float pass is checked and corrected in double", Bd, MILORA_TEST_BACKENDS) {
  using B = milora::rebind_t<Bd, float>;
  using D = milora::rebind_t<Bd, double>;
  const Index r = 8, k = 300, tail = 24;
  std::vector<double> sigma(static_cast<std::size_t>(k));
  for (Index i = 0; i < k - tail; ++i) sigma[std::size_t(i)] = std::pow(10.0, -2.0 * double(i) / double(k - tail - 1));
  for (Index j = 0; j < tail; ++j) sigma[std::size_t(k - tail + j)] = 1e-3 * (1.0 + 1e-3 * double(tail - j));
  const auto w = device<B>(with_spectrum(400, k, sigma, 61));
  const auto exact = milora::ExactSVD{}.bottom<D>(milora::convert<D, B>(w), r);
  {
    auto g = B::zeros(k, k);
    B::syrk(1.0f, w, milora::Trans::yes, 0.0f, g);
    const HostMatrix float_minor = host<B>(B::eigh(g, 0, r - 1).vectors);
    CHECK(overlap(float_minor.transpose(), host<D>(exact.Vt)) < 0.9);  // the premise
  }
  LogCapture log;
  milora::CholeskyKrylovReport report;
  const auto fast = milora::CholeskyKrylovSVD{.oversampling = 8}.bottom<B>(w, r, &report);
  CHECK(log.lines.empty());
  CHECK(report.path == milora::CholeskyKrylovReport::Path::float_pass);
  CHECK(report.polish_steps >= 1);
  CHECK(overlap(host<B>(fast.Vt), host<D>(exact.Vt)) >= 0.999);
  CHECK(overlap(host<B>(fast.U).transpose(), host<D>(exact.U).transpose()) >= 0.999);
  CHECK(sigma_error(host<B>(fast.S), host<D>(exact.S)) <= 1e-5);
}

TEST_CASE_TEMPLATE("CholeskyKrylovSVD falls back to ExactSVD, and says so, when it must", B, MILORA_TEST_BACKENDS) {
  const Index r = 4;
  SUBCASE("rank-deficient W: Cholesky of the Gram matrix fails") {
    // rank 60 of 200: the Gram matrix is singular (c).
    const HostMatrix w0 = random_normal(200, 60, 54) * random_normal(60, 240, 55);
    const auto w = device<B>(w0);
    LogCapture log;
    const auto fast = milora::CholeskyKrylovSVD{}.bottom<B>(w, r);
    REQUIRE(log.lines.size() == 1);
    CHECK(log.lines[0].find("not positive definite") != std::string::npos);
    CHECK(log.lines[0].find("200x240") != std::string::npos);
    const auto exact = milora::ExactSVD{}.bottom<B>(w, r);
    CHECK(host<B>(fast.S) == host<B>(exact.S));
  }
  SUBCASE("a Krylov space too shallow for the tolerance") {
    const auto w = device<B>(with_spectrum(300, 200, llm_like(200), 56));
    LogCapture log;
    milora::CholeskyKrylovReport report;
    const auto fast = milora::CholeskyKrylovSVD{.oversampling = 4, .phase_blocks = 2, .max_blocks = 2, .tolerance = 1e-12}
                          .bottom<B>(w, r, &report);
    CHECK(report.path == milora::CholeskyKrylovReport::Path::exact);
    CHECK(report.float_tried == std::is_same_v<milora::scalar_t<B>, float>);  // rejected, then double
    REQUIRE(log.lines.size() == 1);
    CHECK(log.lines[0].find("no convergence") != std::string::npos);
    CHECK(host<B>(fast.S) == host<B>(milora::ExactSVD{}.bottom<B>(w, r).S));
  }
  CHECK_THROWS_AS(milora::CholeskyKrylovSVD{.max_blocks = 1}.bottom<B>(device<B>(random_normal(50, 50, 1)), 2),
                  milora::value_error);
  CHECK_THROWS_AS(milora::CholeskyKrylovSVD{.extra_blocks = -1}.bottom<B>(device<B>(random_normal(50, 50, 1)), 2),
                  milora::value_error);
  for (const double bad : {0.0, 1.5}) {
    CHECK_THROWS_AS(milora::CholeskyKrylovSVD{.first_shift = bad}.bottom<B>(device<B>(random_normal(50, 50, 1)), 2),
                    milora::value_error);
    CHECK_THROWS_AS(milora::CholeskyKrylovSVD{.stall_defect = bad}.bottom<B>(device<B>(random_normal(50, 50, 1)), 2),
                    milora::value_error);
  }
  CHECK_THROWS_AS(milora::CholeskyKrylovSVD{.polish_steps = -1}.bottom<B>(device<B>(random_normal(50, 50, 1)), 2),
                  milora::value_error);
  CHECK_THROWS_AS(milora::RandomizedSVD{.oversampling = -2}.top<B>(device<B>(random_normal(50, 50, 1)), 2),
                  milora::value_error);
}

// The init contract holds for every solver: the adapter builds W' from the factors produced.
TEST_CASE_TEMPLATE("init contract with the fast solvers: output unchanged, W' + s*B*A = W", B, MILORA_TEST_BACKENDS) {
  for (auto [out, in] : {std::pair<Index, Index>{260, 200}, {200, 260}}) {
    CAPTURE(out);
    const HostMatrix w0 = with_spectrum(out, in, llm_like(200), 57), x = random_normal(7, in, 58);
    milora::Linear<B> l_mi(device<B>(w0)), l_pi(device<B>(w0));
    milora::MiLoRA<B, milora::CholeskyKrylovSVD> mi(l_mi, {.rank = 8, .alpha = 8});
    milora::PiSSA<B, milora::RandomizedSVD> pi(l_pi, {.rank = 8, .alpha = 16});
    milora::Linear<B> l_cu(device<B>(w0));
    milora::PiSSA<B, milora::CusolverRandomizedSVD> cu(l_cu, {.rank = 8, .alpha = 16});
    CHECK(rel_err(host<B>(l_cu.weight()) + cu.scale() * host<B>(cu.B()) * host<B>(cu.A()), w0) <= contract_tol<B>);
    CHECK(rel_err(host<B>(cu.forward(device<B>(x))), x * w0.transpose()) <= 10 * contract_tol<B>);
    CHECK(rel_err(host<B>(l_mi.weight()) + mi.scale() * host<B>(mi.B()) * host<B>(mi.A()), w0) <= contract_tol<B>);
    CHECK(rel_err(host<B>(l_pi.weight()) + pi.scale() * host<B>(pi.B()) * host<B>(pi.A()), w0) <= contract_tol<B>);
    const HostMatrix y0 = x * w0.transpose();
    CHECK(rel_err(host<B>(mi.forward(device<B>(x))), y0) <= 10 * contract_tol<B>);
    CHECK(rel_err(host<B>(pi.forward(device<B>(x))), y0) <= 10 * contract_tol<B>);
  }
}
