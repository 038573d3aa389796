// Helpers shared by the test files. References are computed on the host in double precision with
// plain Eigen (JacobiSVD, loops), independently of the backend under test and of LAPACK.
#pragma once

#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cmath>
#include <type_traits>
#include <vector>

#include "milora/milora.hpp"
#if defined(MILORA_HAS_XTENSOR)
#include "milora/backend/xtensor.hpp"
#endif
#if defined(MILORA_TEST_CUDA_BACKENDS)
#include "milora/backend/cuda.hpp"
#endif

// Every backend-generic test runs on each of these; a new backend joins by being added here.
// The CUDA suite (milora_cuda_tests, tests/cuda) compiles the same files with
// MILORA_TEST_CUDA_BACKENDS, so that each case runs on CudaBackend instead.
#if defined(MILORA_TEST_CUDA_BACKENDS)
#define MILORA_TEST_BACKENDS milora::CudaBackend<float>, milora::CudaBackend<double>
#define MILORA_TEST_DOUBLE_BACKENDS milora::CudaBackend<double>
#elif defined(MILORA_HAS_XTENSOR)
#define MILORA_TEST_BACKENDS                                                                    \
  milora::EigenBackend<float>, milora::EigenBackend<double>, milora::XtensorBackend<float>,      \
      milora::XtensorBackend<double>
#define MILORA_TEST_DOUBLE_BACKENDS milora::EigenBackend<double>, milora::XtensorBackend<double>
#else
#define MILORA_TEST_BACKENDS milora::EigenBackend<float>, milora::EigenBackend<double>
#define MILORA_TEST_DOUBLE_BACKENDS milora::EigenBackend<double>
#endif


namespace test {

using milora::Index;
using HostMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class B>
constexpr bool is_float = std::is_same_v<typename B::scalar, float>;

/// Tolerance for "equal up to rounding": fp32 1e-5, fp64 1e-12 (the contract bounds).
template <class B>
constexpr double contract_tol = is_float<B> ? 1e-5 : 1e-12;

/// Backend matrix -> double host matrix.
template <class B>
HostMatrix host(milora::const_view_t<B> m) {
  const auto v = B::to_host(m);
  HostMatrix h(B::rows(m), B::cols(m));
  for (Index k = 0; k < h.size(); ++k) h.data()[k] = static_cast<double>(v[static_cast<std::size_t>(k)]);
  return h;
}

/// Double host matrix -> backend matrix.
template <class B>
typename B::matrix device(const HostMatrix& h) {
  std::vector<typename B::scalar> v(static_cast<std::size_t>(h.size()));
  for (Index k = 0; k < h.size(); ++k) v[static_cast<std::size_t>(k)] = static_cast<typename B::scalar>(h.data()[k]);
  return B::from_host(h.rows(), h.cols(), v);
}

/// Every entry rounded to bf16 (to nearest even, through float): what a bf16 matrix holds.
inline HostMatrix round_bf16(const HostMatrix& h) {
  return h.unaryExpr([](double v) { return double(milora::round_to_bf16(float(v))); });
}

/// A backend's bf16 matrix -> double host matrix (exact).
template <milora::Bf16Backend B>
HostMatrix host_bf16(typename B::bf16_const_view m) {
  const auto bits = B::bf16_to_host(m);
  HostMatrix h(B::bf16_rows(m), B::bf16_cols(m));
  for (Index k = 0; k < h.size(); ++k) h.data()[k] = double(milora::bf16_to_float(bits[std::size_t(k)]));
  return h;
}

/// Double host matrix -> the backend's bf16 matrix, each entry rounded as round_bf16 does.
template <milora::Bf16Backend B>
typename B::bf16_matrix device_bf16(const HostMatrix& h) {
  std::vector<std::uint16_t> bits(static_cast<std::size_t>(h.size()));
  for (Index k = 0; k < h.size(); ++k) bits[std::size_t(k)] = milora::float_to_bf16(float(h.data()[k]));
  return B::bf16_from_host(h.rows(), h.cols(), bits);
}

/// Standard normal entries, deterministic in seed.
inline HostMatrix random_normal(Index rows, Index cols, unsigned seed) {
  HostMatrix h(rows, cols);
  for (Index k = 0; k < h.size(); ++k) h.data()[k] = milora::random::normal(seed + 1000003ULL, std::uint64_t(k));
  return h;
}

/// Random orthonormal columns (m x k, k <= m) from the QR of a Gaussian matrix.
inline HostMatrix random_orthonormal(Index m, Index k, unsigned seed) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(Eigen::MatrixXd(random_normal(m, k, seed)));
  return HostMatrix(qr.householderQ() * Eigen::MatrixXd::Identity(m, k));
}

/// W = U diag(sigma) V^T with random orthonormal U (out x k), V (in x k), k = min(out, in).
inline HostMatrix with_spectrum(Index out, Index in, const std::vector<double>& sigma, unsigned seed) {
  const Index k = std::min(out, in);
  REQUIRE(static_cast<Index>(sigma.size()) == k);
  const HostMatrix U = random_orthonormal(out, k, seed), V = random_orthonormal(in, k, seed + 7);
  Eigen::VectorXd s(k);
  for (Index i = 0; i < k; ++i) s(i) = sigma[static_cast<std::size_t>(i)];
  return U * s.asDiagonal() * V.transpose();
}

/// A spectrum with a clear gap around both ends: top r in [8, 10], middle in [2, 4], bottom r in
/// [0.05, 0.1]. Subspaces of such a matrix are well defined and any correct solver finds them.
inline std::vector<double> gapped_spectrum(Index k, Index r) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) {
    const double t = k > 1 ? double(i) / double(k - 1) : 0.0;
    s[static_cast<std::size_t>(i)] = i < r ? 10.0 - 2.0 * i / double(r)
                                           : (i >= k - r ? 0.1 - 0.05 * double(i - (k - r)) / double(r)
                                                         : 4.0 - 2.0 * t);
  }
  return s;
}

/// ||a - b||_F / ||b||_F.
inline double rel_err(const HostMatrix& a, const HostMatrix& b) {
  return (a - b).norm() / b.norm();
}

/// Independent reference SVD (Eigen's one-sided Jacobi in double, not LAPACK).
struct ReferenceSVD {
  Eigen::MatrixXd U, V;
  Eigen::VectorXd S;
  explicit ReferenceSVD(const HostMatrix& w) {
    Eigen::JacobiSVD<Eigen::MatrixXd> svd(Eigen::MatrixXd(w), Eigen::ComputeThinU | Eigen::ComputeThinV);
    U = svd.matrixU();
    V = svd.matrixV();
    S = svd.singularValues();
  }
};

/// Mean squared cosine of the principal angles between span(rows of X) and span(columns of Q),
/// Q orthonormal: ||Q^T orth(X^T)||_F^2 / r. 1 = same subspace, 0 = orthogonal.
inline double overlap_rows(const HostMatrix& x, const Eigen::MatrixXd& q) {
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(Eigen::MatrixXd(x.transpose()));
  const Eigen::MatrixXd basis = qr.householderQ() * Eigen::MatrixXd::Identity(x.cols(), x.rows());
  return (q.transpose() * basis).squaredNorm() / double(x.rows());
}

}  // namespace test
