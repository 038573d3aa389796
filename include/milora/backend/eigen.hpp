// EigenBackend<T>: the CPU backend over Eigen 3.4, row-major storage.
//
// Matrix products and factorisations go to OpenBLAS / LAPACKE when CMake found them
// (MILORA_HAS_LAPACKE): Eigen 3.4's EIGEN_USE_LAPACKE does not cover BDCSVD, and we want gesdd and
// the subset eigensolver syevr. Without them, Eigen's own BDCSVD, SelfAdjointEigenSolver,
// HouseholderQR and LLT are used, with the same results up to rounding.
//
// view = Eigen::Ref<matrix>: it binds to an owning row-major matrix, to an Eigen::Map over another
// framework's buffer, and to row-major blocks, without copying. That is how a user's own weight is
// adapted in place.
#pragma once

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "milora/backend/detail/blas_lapack.hpp"
#include "milora/backend/detail/host_backend.hpp"
#include "milora/core/backend.hpp"

namespace milora {

namespace detail {
/// How EigenBackend holds matrices of any element type (detail::HostBackend uses it).
struct EigenStorage {
  template <class U>
  using matrix = Eigen::Matrix<U, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  template <class U>
  using view = Eigen::Ref<matrix<U>>;
  template <class U>
  using const_view = Eigen::Ref<const matrix<U>>;
  template <class U>
  static matrix<U> uninitialized(Index rows, Index cols) { return matrix<U>(rows, cols); }
  template <class V>
  static auto* row(V m, Index i) { return m.data() + i * m.outerStride(); }
  /// Eigen's own bfloat16, so a user's bf16 buffer maps in place (Eigen::Map).
  using bf16_element = Eigen::bfloat16;
};
}  // namespace detail

template <class T>
struct EigenBackend : detail::HostBackend<EigenBackend<T>, T, detail::EigenStorage> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "EigenBackend supports float and double");

  using scalar = T;
  /// The same backend in another precision (the fast minor solver forms its Gram matrix in double).
  template <class U>
  using rebind = EigenBackend<U>;
  using matrix = detail::EigenStorage::matrix<T>;
  using view = detail::EigenStorage::view<T>;
  using const_view = detail::EigenStorage::const_view<T>;

  // ---- memory ----------------------------------------------------------------------------------
  static matrix zeros(Index rows, Index cols) { return matrix::Zero(rows, cols); }
  static matrix from_host(Index rows, Index cols, std::span<const T> data) {
    if (static_cast<Index>(data.size()) != rows * cols)
      throw shape_error(detail::concat("from_host: ", data.size(), " values for a ",
                                       detail::shape_str(rows, cols), " matrix"));
    return Eigen::Map<const matrix>(data.data(), rows, cols);
  }
  static std::vector<T> to_host(const_view m) {
    std::vector<T> out(static_cast<std::size_t>(m.size()));
    Eigen::Map<matrix>(out.data(), m.rows(), m.cols()) = m;
    return out;
  }
  static matrix clone(const_view m) { return m; }
  /// A copy in scalar U (milora::convert uses it to move between float and double).
  template <class U>
  static typename EigenBackend<U>::matrix cast(const_view m) { return m.template cast<U>(); }
  static void copy(const_view src, view dst) { dst = src; }
  static Index rows(const_view m) { return m.rows(); }
  static Index cols(const_view m) { return m.cols(); }
  static view block(view m, Index r0, Index c0, Index nr, Index nc) {
    return m.block(r0, c0, nr, nc);
  }
  static const_view cblock(const_view m, Index r0, Index c0, Index nr, Index nc) {
    return m.block(r0, c0, nr, nc);
  }

  // ---- BLAS ------------------------------------------------------------------------------------
  static void gemm(T alpha, const_view a, Trans ta, const_view b, Trans tb, T beta, view c) {
    const Index m = c.rows(), n = c.cols();
    const Index k = ta == Trans::yes ? a.rows() : a.cols();
#if defined(MILORA_HAS_LAPACKE)
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS is undefined on k = 0 with some implementations; the answer is beta*C
      scale(c, beta);
      return;
    }
    blas_lapack::gemm(ta == Trans::yes, tb == Trans::yes, m, n, k, alpha, a.data(), a.outerStride(),
                      b.data(), b.outerStride(), beta, c.data(), c.outerStride());
#else
    (void)m; (void)n; (void)k;
    if (beta == T(0)) c.setZero(); else if (beta != T(1)) c *= beta;
    if (ta == Trans::no && tb == Trans::no) c.noalias() += alpha * a * b;
    else if (ta == Trans::no) c.noalias() += alpha * a * b.transpose();
    else if (tb == Trans::no) c.noalias() += alpha * a.transpose() * b;
    else c.noalias() += alpha * a.transpose() * b.transpose();
#endif
  }

  static void syrk(T alpha, const_view a, Trans ta, T beta, view c) {
    const Index n = c.rows(), k = ta == Trans::yes ? a.rows() : a.cols();
#if defined(MILORA_HAS_LAPACKE)
    if (n == 0) return;
    if (k == 0) {
      scale(c, beta);
      return;
    }
    blas_lapack::syrk(ta == Trans::yes, n, k, alpha, a.data(), a.outerStride(), beta, c.data(), c.outerStride());
#else
    (void)n; (void)k;
    gemm(alpha, a, ta, a, ta == Trans::yes ? Trans::no : Trans::yes, beta, c);
#endif
  }

  static void trsm(const_view l, Trans tl, view x) {
    if (l.rows() != l.cols() || l.rows() != x.rows())
      throw shape_error(detail::concat("trsm: triangular factor ", detail::shape_str(l.rows(), l.cols()),
                                       " for a right-hand side ", detail::shape_str(x.rows(), x.cols())));
    if (x.size() == 0) return;
#if defined(MILORA_HAS_LAPACKE)
    blas_lapack::trsm(tl == Trans::yes, l.rows(), x.cols(), l.data(), l.outerStride(), x.data(), x.outerStride());
#else
    if (tl == Trans::no) l.template triangularView<Eigen::Lower>().solveInPlace(x);
    else l.transpose().template triangularView<Eigen::Upper>().solveInPlace(x);
#endif
  }

  // ---- element-wise ----------------------------------------------------------------------------
  static void scale(view m, T a) {
    if (a == T(0)) m.setZero();  // 0 * NaN must still clear, as BLAS beta = 0 does
    else m *= a;
  }
  static void axpy(T a, const_view x, view y) { y += a * x; }
  static void add_diagonal(view m, T a) { m.diagonal().array() += a; }
  static void add_row_broadcast(view m, const_view row) {
    m.rowwise() += flat(row).transpose();
  }
  static void scale_rows(view m, const_view d) { m = flat(d).asDiagonal() * m; }
  static void scale_columns(view m, const_view d) { m = m * flat(d).asDiagonal(); }
  static bool all_finite(const_view m) { return m.allFinite(); }
  static double squared_norm(const_view m) { return m.template cast<double>().squaredNorm(); }

  static void adamw_update(view p, const_view g, view m, view v, const AdamWStep& s) {
    const T decay = T(1 - s.lr * s.weight_decay), b1 = T(s.beta1), b2 = T(s.beta2);
    const T step_size = T(s.lr / s.bias_correction1), bc2 = T(s.bias_correction2_sqrt);
    const T eps = T(s.eps);
    for (Index i = 0; i < p.rows(); ++i)
      for (Index j = 0; j < p.cols(); ++j) {
        const T gij = g(i, j);
        p(i, j) *= decay;
        m(i, j) += (gij - m(i, j)) * (T(1) - b1);  // torch: exp_avg.lerp_(grad, 1 - beta1)
        v(i, j) = v(i, j) * b2 + (T(1) - b2) * gij * gij;
        p(i, j) -= step_size * m(i, j) / (std::sqrt(v(i, j)) / bc2 + eps);
      }
  }

  // ---- random fills, bf16 storage: inherited from detail::HostBackend (backend/detail/host_backend.hpp)

  // ---- LAPACK ----------------------------------------------------------------------------------
  static SVDResult<matrix> svd(const_view a) {
    const Index m = a.rows(), n = a.cols(), k = std::min(m, n);
    SVDResult<matrix> r{matrix(m, k), matrix(1, k), matrix(k, n)};
    if (k == 0) return r;
#if defined(MILORA_HAS_LAPACKE)
    matrix work = a;  // gesdd destroys its input
    blas_lapack::gesdd(m, n, work.data(), work.outerStride(), r.S.data(), r.U.data(), r.Vt.data());
#else
    Eigen::BDCSVD<matrix> solver(a, Eigen::ComputeThinU | Eigen::ComputeThinV);
    if (solver.info() != Eigen::Success) throw numerical_error("Eigen::BDCSVD did not converge");
    r.U = solver.matrixU();
    r.S = solver.singularValues().transpose();
    r.Vt = solver.matrixV().transpose();
#endif
    return r;
  }

  static EighResult<matrix> eigh(const_view a, Index lo, Index hi) {
    const Index n = a.rows();
    if (a.cols() != n || lo < 0 || hi < lo || hi >= n)
      throw shape_error(detail::concat("eigh: eigenpairs ", lo, "..", hi, " of a ",
                                       detail::shape_str(a.rows(), a.cols()), " matrix"));
    const Index k = hi - lo + 1;
    EighResult<matrix> r{matrix(1, k), matrix(n, k)};
#if defined(MILORA_HAS_LAPACKE)
    matrix work = a;
    blas_lapack::syevr(n, work.data(), work.outerStride(), lo, hi, r.values.data(), r.vectors.data());
#else
    Eigen::SelfAdjointEigenSolver<matrix> solver(a);
    if (solver.info() != Eigen::Success)
      throw numerical_error("Eigen::SelfAdjointEigenSolver did not converge");
    r.values = solver.eigenvalues().segment(lo, k).transpose();
    r.vectors = solver.eigenvectors().middleCols(lo, k);
#endif
    return r;
  }

  static QRResult<matrix> qr(const_view a) {
    const Index m = a.rows(), n = a.cols();
    if (m < n) throw shape_error(detail::concat("qr: thin QR needs rows >= cols, got ", detail::shape_str(m, n)));
    QRResult<matrix> r{matrix(a), matrix(n, n)};
#if defined(MILORA_HAS_LAPACKE)
    if (n > 0) blas_lapack::qr(m, n, r.Q.data(), r.Q.outerStride(), r.R.data());
#else
    Eigen::HouseholderQR<matrix> solver(a);
    r.R = solver.matrixQR().topRows(n).template triangularView<Eigen::Upper>();
    r.Q = solver.householderQ() * matrix::Identity(m, n);
#endif
    return r;
  }

  static matrix cholesky(const_view a) {
    if (a.rows() != a.cols())
      throw shape_error(detail::concat("cholesky: matrix is ", detail::shape_str(a.rows(), a.cols())));
    matrix l = a;
#if defined(MILORA_HAS_LAPACKE)
    blas_lapack::cholesky(l.rows(), l.data(), l.outerStride());
#else
    Eigen::LLT<matrix> solver(a);
    if (solver.info() != Eigen::Success)
      throw numerical_error("cholesky: matrix is not positive definite");
    l = solver.matrixL();
#endif
    return l;
  }

 private:
  // A vector stored as 1 x n or n x 1, seen as a column of n values.
  static auto flat(const_view v) {
    return Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>, 0, Eigen::InnerStride<>>(
        v.data(), v.size(), Eigen::InnerStride<>(v.rows() == 1 ? 1 : v.outerStride()));
  }
};

static_assert(Backend<EigenBackend<float>>, "EigenBackend<float> must satisfy milora::Backend");
static_assert(Backend<EigenBackend<double>>, "EigenBackend<double> must satisfy milora::Backend");
static_assert(Bf16Backend<EigenBackend<float>> && Bf16Backend<EigenBackend<double>>,
              "EigenBackend must offer bf16 storage (Bf16Backend, milora/core/backend.hpp)");

}  // namespace milora
