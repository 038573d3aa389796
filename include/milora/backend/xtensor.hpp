// XtensorBackend<T>: the CPU backend over xtensor 0.24 and xtensor-blas 0.20, row-major storage.
//
// matrix = xt::xtensor<T, 2> (row-major, xtensor's default), so a user's own tensor is a matrix
// and converts to the view XMatrixRef<T> without a copy (milora/backend/xtensor_ref.hpp).
//
// Products (gemm, syrk, trsm) go to BLAS through xtensor-blas's cxxblas, called with the view's pointer and row
// stride so that blocks and foreign buffers are multiplied where they lie (xt::linalg::dot would
// evaluate strided operands into temporaries and cannot accumulate into C). The factorisations are
// xt::linalg's svd (gesdd), eigh (syevd), qr (geqrf + orgqr) and cholesky (potrf), which work on
// column-major copies; their cost is dwarfed by the O(n^3) work. xt::linalg has no subset
// eigensolver, so eigh(a, lo, hi) computes all eigenpairs and keeps lo..hi (the Eigen backend uses
// LAPACK's syevr for the subset; the results agree to rounding).
//
// Element-wise work is written as xtensor expressions over the views, assigned with xt::noalias so
// that a strided block is written in place (see XMatrixRef::expr).
//
// xtensor-blas needs BLAS and LAPACK: CMake defines MILORA_HAS_XTENSOR on the target milora::xtensor
// when xtensor, xtensor-blas and OpenBLAS were found.
#pragma once

// xtensor-blas must not see OpenBLAS's <cblas.h> after its own CBLAS declarations (same enums);
// blas_lapack.hpp (used by the Eigen backend) arranges the order, so include it first.
#include "milora/backend/detail/blas_lapack.hpp"

#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xnoalias.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string_view>
#include <span>
#include <stdexcept>
#include <vector>

#include "milora/backend/detail/host_backend.hpp"
#include "milora/backend/detail/mirror.hpp"
#include "milora/backend/xtensor_ref.hpp"
#include "milora/core/backend.hpp"

namespace milora {

namespace detail {
/// How XtensorBackend holds matrices of any element type (detail::HostBackend uses it).
struct XtensorStorage {
  template <class U>
  using matrix = xmatrix<U>;
  template <class U>
  using view = XMatrixRef<U>;
  template <class U>
  using const_view = XMatrixRef<const U>;
  template <class U>
  static matrix<U> uninitialized(Index rows, Index cols) {
    return matrix<U>::from_shape({std::size_t(rows), std::size_t(cols)});
  }
  template <class V>
  static auto* row(V m, Index i) { return m.data() + i * m.row_stride(); }
  /// milora's storage-only bf16; a user's bf16 buffer is wrapped with XMatrixRef<bf16>.
  using bf16_element = bf16;
};
}  // namespace detail

template <class T>
struct XtensorBackend : detail::HostBackend<XtensorBackend<T>, T, detail::XtensorStorage> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "XtensorBackend supports float and double");

  using scalar = T;
  /// The same backend in another precision (the fast minor solver forms its Gram matrix in double).
  template <class U>
  using rebind = XtensorBackend<U>;
  using matrix = xmatrix<T>;
  using view = XMatrixRef<T>;
  using const_view = XMatrixRef<const T>;

  // ---- memory ----------------------------------------------------------------------------------
  static matrix zeros(Index rows, Index cols) {
    if (rows < 0 || cols < 0) throw shape_error(detail::concat("zeros: ", detail::shape_str(rows, cols)));
    return xt::zeros<T>({std::size_t(rows), std::size_t(cols)});
  }
  static matrix from_host(Index rows, Index cols, std::span<const T> data) {
    if (rows < 0 || cols < 0 || static_cast<Index>(data.size()) != rows * cols)
      throw shape_error(detail::concat("from_host: ", data.size(), " values for a ",
                                       detail::shape_str(rows, cols), " matrix"));
    matrix m = matrix::from_shape({std::size_t(rows), std::size_t(cols)});
    std::copy(data.begin(), data.end(), m.data());
    return m;
  }
  static std::vector<T> to_host(const_view m) {
    std::vector<T> out(static_cast<std::size_t>(m.size()));
    for (Index i = 0; i < m.rows(); ++i)
      std::copy_n(&m(i, 0), m.cols(), out.data() + i * m.cols());
    return out;
  }
  static matrix clone(const_view m) { return m.expr(); }
  /// A copy in scalar U (milora::convert uses it to move between float and double).
  template <class U>
  static xmatrix<U> cast(const_view m) { return xt::cast<U>(m.expr()); }
  static void copy(const_view src, view dst) {
    if (src.rows() != dst.rows() || src.cols() != dst.cols())
      throw shape_error(detail::concat("copy: ", detail::shape_str(src.rows(), src.cols()), " into ",
                                       detail::shape_str(dst.rows(), dst.cols())));
    auto d = dst.expr();
    xt::noalias(d) = src.expr();
  }
  static Index rows(const_view m) { return m.rows(); }
  static Index cols(const_view m) { return m.cols(); }
  static view block(view m, Index r0, Index c0, Index nr, Index nc) { return m.block(r0, c0, nr, nc); }
  static const_view cblock(const_view m, Index r0, Index c0, Index nr, Index nc) {
    return m.block(r0, c0, nr, nc);
  }

  // ---- BLAS ------------------------------------------------------------------------------------
  static void gemm(T alpha, const_view a, Trans ta, const_view b, Trans tb, T beta, view c) {
    const Index m = c.rows(), n = c.cols();
    const Index k = ta == Trans::yes ? a.rows() : a.cols();
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS is undefined on k = 0 with some implementations; the answer is beta*C
      scale(c, beta);
      return;
    }
    const auto ld = [](const auto& v) { return blas_int(std::max<Index>(1, v.row_stride())); };
    cxxblas::gemm<xt::blas_index_t>(cxxblas::StorageOrder::RowMajor,
                                ta == Trans::yes ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                                tb == Trans::yes ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                                blas_int(m), blas_int(n), blas_int(k), alpha, a.data(), ld(a), b.data(), ld(b),
                                beta, c.data(), ld(c));
  }

  static void syrk(T alpha, const_view a, Trans ta, T beta, view c) {
    const Index n = c.rows(), k = ta == Trans::yes ? a.rows() : a.cols();
    if (n == 0) return;
    if (k == 0) {
      scale(c, beta);
      return;
    }
    const auto ld = [](const auto& v) { return blas_int(std::max<Index>(1, v.row_stride())); };
    cxxblas::syrk<xt::blas_index_t>(cxxblas::StorageOrder::RowMajor, cxxblas::StorageUpLo::Upper,
                                    ta == Trans::yes ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                                    blas_int(n), blas_int(k), alpha, a.data(), ld(a), beta, c.data(), ld(c));
    detail::mirror_upper(n, c.data(), c.row_stride());  // the contract is the full matrix
  }

  static void trsm(const_view l, Trans tl, view x) {
    if (l.rows() != l.cols() || l.rows() != x.rows())
      throw shape_error(detail::concat("trsm: triangular factor ", detail::shape_str(l.rows(), l.cols()),
                                       " for a right-hand side ", detail::shape_str(x.rows(), x.cols())));
    if (x.size() == 0) return;
    const auto ld = [](const auto& v) { return blas_int(std::max<Index>(1, v.row_stride())); };
    cxxblas::trsm<xt::blas_index_t>(cxxblas::StorageOrder::RowMajor, cxxblas::Side::Left,
                                    cxxblas::StorageUpLo::Lower,
                                    tl == Trans::yes ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                                    cxxblas::Diag::NonUnit, blas_int(x.rows()), blas_int(x.cols()), T(1),
                                    l.data(), ld(l), x.data(), ld(x));
  }

  // ---- element-wise ----------------------------------------------------------------------------
  static void scale(view m, T a) {
    auto e = m.expr();
    if (a == T(0)) xt::noalias(e) = xt::zeros<T>(e.shape());  // 0 * NaN must still clear, as BLAS beta = 0 does
    else xt::noalias(e) = e * a;
  }
  static void axpy(T a, const_view x, view y) {
    auto e = y.expr();
    xt::noalias(e) = e + a * x.expr();
  }
  static void add_diagonal(view m, T a) {
    for (Index i = 0; i < std::min(m.rows(), m.cols()); ++i) m(i, i) += a;
  }
  static void add_row_broadcast(view m, const_view row) {
    auto e = m.expr();
    xt::noalias(e) = e + row.as_row();
  }
  static void scale_rows(view m, const_view d) {
    auto e = m.expr();
    xt::noalias(e) = e * d.as_column();
  }
  static void scale_columns(view m, const_view d) {
    auto e = m.expr();
    xt::noalias(e) = e * d.as_row();
  }
  static bool all_finite(const_view m) { return xt::all(xt::isfinite(m.expr())); }
  static double squared_norm(const_view m) {
    return m.size() == 0 ? 0.0 : double(xt::sum(xt::square(xt::cast<double>(m.expr())))());
  }

  static void adamw_update(view p, const_view g, view m, view v, const AdamWStep& s) {
    const T decay = T(1 - s.lr * s.weight_decay), b1 = T(s.beta1), b2 = T(s.beta2);
    const T step_size = T(s.lr / s.bias_correction1), bc2 = T(s.bias_correction2_sqrt);
    const T eps = T(s.eps);
    auto pe = p.expr(), me = m.expr(), ve = v.expr();
    const auto ge = g.expr();
    // The same operations in the same order as the Eigen backend and torch.optim.AdamW.
    xt::noalias(pe) = pe * decay;
    xt::noalias(me) = me + (ge - me) * (T(1) - b1);  // torch: exp_avg.lerp_(grad, 1 - beta1)
    xt::noalias(ve) = ve * b2 + (T(1) - b2) * ge * ge;
    xt::noalias(pe) = pe - step_size * me / (xt::sqrt(ve) / bc2 + eps);
  }

  // ---- random fills, bf16 storage: inherited from detail::HostBackend (backend/detail/host_backend.hpp)

  // ---- LAPACK (through xt::linalg) -------------------------------------------------------------
  static SVDResult<matrix> svd(const_view a) {
    const Index m = a.rows(), n = a.cols(), k = std::min(m, n);
    if (k == 0) return {zeros(m, 0), zeros(1, 0), zeros(0, n)};
    auto [u, s, vt] = linalg("svd (gesdd)", [&] { return xt::linalg::svd(a.expr(), false, true); });
    SVDResult<matrix> r{u, zeros(1, k), vt};
    std::copy_n(s.data(), k, r.S.data());
    return r;
  }

  static EighResult<matrix> eigh(const_view a, Index lo, Index hi) {
    const Index n = a.rows();
    if (a.cols() != n || lo < 0 || hi < lo || hi >= n)
      throw shape_error(detail::concat("eigh: eigenpairs ", lo, "..", hi, " of a ",
                                       detail::shape_str(a.rows(), a.cols()), " matrix"));
    auto [w, z] = linalg("eigh (syevd)", [&] { return xt::linalg::eigh(a.expr()); });
    const Index k = hi - lo + 1;
    EighResult<matrix> r{zeros(1, k), zeros(n, k)};
    for (Index j = 0; j < k; ++j) {
      r.values(0, j) = w(lo + j);
      for (Index i = 0; i < n; ++i) r.vectors(i, j) = z(i, lo + j);
    }
    return r;
  }

  static QRResult<matrix> qr(const_view a) {
    const Index m = a.rows(), n = a.cols();
    if (m < n) throw shape_error(detail::concat("qr: thin QR needs rows >= cols, got ", detail::shape_str(m, n)));
    if (n == 0) return {zeros(m, 0), zeros(0, 0)};
    auto [q, r] = linalg("qr (geqrf/orgqr)", [&] { return xt::linalg::qr(a.expr(), xt::linalg::qrmode::reduced); });
    return {q, r};
  }

  static matrix cholesky(const_view a) {
    if (a.rows() != a.cols())
      throw shape_error(detail::concat("cholesky: matrix is ", detail::shape_str(a.rows(), a.cols())));
    if (a.rows() == 0) return zeros(0, 0);
    if (a.rows() == 1) {  // xt::linalg::cholesky asserts n > 1
      if (!(a(0, 0) > T(0))) throw numerical_error("cholesky: matrix is not positive definite");
      matrix l = zeros(1, 1);
      l(0, 0) = std::sqrt(a(0, 0));
      return l;
    }
    matrix l = linalg("cholesky (potrf)", [&] { return xt::linalg::cholesky(a.expr()); });
    return l;
  }

 private:
  static xt::blas_index_t blas_int(Index n) {
    if (n < 0 || n > Index(std::numeric_limits<xt::blas_index_t>::max()))
      throw shape_error(detail::concat("gemm: size ", n, " does not fit BLAS's 32-bit integers"));
    return static_cast<xt::blas_index_t>(n);
  }
  // xt::linalg reports failure as std::runtime_error; ours is numerical_error, naming the routine.
  template <class F>
  static auto linalg(const char* what, F&& f) {
    try {
      return f();
    } catch (const std::runtime_error& e) {
      throw numerical_error(detail::concat("xt::linalg::", what, ": ", e.what(),
                                           std::string_view(what).starts_with("cholesky")
                                               ? " (matrix is not positive definite)"
                                               : ""));
    }
  }
};


static_assert(Backend<XtensorBackend<float>>, "XtensorBackend<float> must satisfy milora::Backend");
static_assert(Backend<XtensorBackend<double>>, "XtensorBackend<double> must satisfy milora::Backend");
static_assert(Bf16Backend<XtensorBackend<float>> && Bf16Backend<XtensorBackend<double>>,
              "XtensorBackend must offer bf16 storage (Bf16Backend, milora/core/backend.hpp)");

}  // namespace milora
