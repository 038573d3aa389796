// Thin, typed wrappers over CBLAS and LAPACKE for row-major data, shared by the host backends
// (Eigen, xtensor). Only compiled when CMake found them (MILORA_HAS_LAPACKE); the backends fall back
// to their own dense algorithms otherwise.
//
// Each wrapper throws numerical_error naming the routine and LAPACK's `info` on failure, and
// shape_error when a size does not fit LAPACK's 32-bit integers.
#pragma once

#if defined(MILORA_HAS_LAPACKE)

// OpenBLAS's <cblas.h> and the CBLAS declarations xtensor-blas bundles (xflens/cxxblas/drivers/
// cblas.h) define the same enums, so a translation unit may see only one of them. Whichever header
// comes first wins: if xtensor-blas was included before us, its declarations (same functions, same
// enum values) serve; otherwise we include OpenBLAS's and tell xtensor-blas to use it.
#if !defined(CXXBLAS_DRIVERS_CBLAS_H)
#include <cblas.h>
#define CXXBLAS_DRIVERS_CBLAS_H 1
#endif
#include <lapacke.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "milora/backend/detail/mirror.hpp"
#include "milora/core/errors.hpp"

namespace milora::blas_lapack {

inline lapack_int to_int(Index n, const char* what) {
  if (n < 0 || n > INT_MAX)
    throw shape_error(detail::concat(what, ": size ", n, " does not fit LAPACK's 32-bit integers"));
  return static_cast<lapack_int>(n);
}

inline void check_info(lapack_int info, const char* routine) {
  if (info != 0)
    throw numerical_error(detail::concat(routine, " failed with info = ", info,
                                         info < 0 ? " (illegal argument)" : " (did not converge)"));
}

// ---- BLAS: C = alpha*op(A)*op(B) + beta*C, all row-major ---------------------------------------
inline void gemm(bool ta, bool tb, Index m, Index n, Index k, float alpha, const float* a, Index lda,
                 const float* b, Index ldb, float beta, float* c, Index ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              to_int(m, "sgemm"), to_int(n, "sgemm"), to_int(k, "sgemm"), alpha, a,
              to_int(lda, "sgemm"), b, to_int(ldb, "sgemm"), beta, c, to_int(ldc, "sgemm"));
}
inline void gemm(bool ta, bool tb, Index m, Index n, Index k, double alpha, const double* a,
                 Index lda, const double* b, Index ldb, double beta, double* c, Index ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
              to_int(m, "dgemm"), to_int(n, "dgemm"), to_int(k, "dgemm"), alpha, a,
              to_int(lda, "dgemm"), b, to_int(ldb, "dgemm"), beta, c, to_int(ldc, "dgemm"));
}

// ---- SYRK: C = alpha*op(A)*op(A)^T + beta*C, upper triangle computed, then mirrored --------------
template <class T, class Syrk>
void syrk_impl(Syrk syrk, bool ta, Index n, Index k, T alpha, const T* a, Index lda, T beta, T* c,
               Index ldc, const char* name) {
  syrk(CblasRowMajor, CblasUpper, ta ? CblasTrans : CblasNoTrans, to_int(n, name), to_int(k, name),
       alpha, a, to_int(lda, name), beta, c, to_int(ldc, name));
  detail::mirror_upper(n, c, ldc);
}
inline void syrk(bool ta, Index n, Index k, float alpha, const float* a, Index lda, float beta, float* c, Index ldc) {
  syrk_impl(cblas_ssyrk, ta, n, k, alpha, a, lda, beta, c, ldc, "ssyrk");
}
inline void syrk(bool ta, Index n, Index k, double alpha, const double* a, Index lda, double beta, double* c, Index ldc) {
  syrk_impl(cblas_dsyrk, ta, n, k, alpha, a, lda, beta, c, ldc, "dsyrk");
}

// ---- TRSM: X = op(L)^-1 X, L lower triangular (n x n), X n x m, row-major ------------------------
// By panels of kTrsmPanel rows, right-looking: a small trsm on each diagonal block, then one gemm
// updates every row still to solve. The same arithmetic as one trsm call, but OpenBLAS threads its
// own trsm poorly when X is narrow, as in CholeskyKrylovSVD's blocks, and one gemm per panel does
// not (docs/benchmarks.md, "Why the code is as it is", has the gain by width).
inline constexpr Index kTrsmPanel = 128;

template <class T, class Trsm, class Gemm>
void trsm_impl(Trsm trsm_fn, Gemm gemm_fn, bool tl, Index n, Index m, const T* l, Index ldl, T* x, Index ldx,
               const char* name) {
  const lapack_int mi = to_int(m, name), ldli = to_int(ldl, name), ldxi = to_int(ldx, name);
  if (to_int(n, name) == 0 || mi == 0) return;
  auto diagonal = [&](Index i, Index b) {
    trsm_fn(CblasRowMajor, CblasLeft, CblasLower, tl ? CblasTrans : CblasNoTrans, CblasNonUnit, lapack_int(b), mi, T(1),
            l + i * ldl + i, ldli, x + i * ldx, ldxi);
  };
  if (!tl) {  // L X = Y: top to bottom; rows below the panel lose L(below, panel) X(panel)
    for (Index i = 0; i < n; i += kTrsmPanel) {
      const Index b = std::min(kTrsmPanel, n - i), below = n - i - b;
      diagonal(i, b);
      if (below > 0)
        gemm_fn(CblasRowMajor, CblasNoTrans, CblasNoTrans, lapack_int(below), mi, lapack_int(b), T(-1), l + (i + b) * ldl + i,
                ldli, x + i * ldx, ldxi, T(1), x + (i + b) * ldx, ldxi);
    }
    return;
  }
  // L^T X = Y: bottom to top; rows above the panel lose L(panel, above)^T X(panel)
  for (Index i = ((n - 1) / kTrsmPanel) * kTrsmPanel; i >= 0; i -= kTrsmPanel) {
    const Index b = std::min(kTrsmPanel, n - i);
    diagonal(i, b);
    if (i > 0)
      gemm_fn(CblasRowMajor, CblasTrans, CblasNoTrans, lapack_int(i), mi, lapack_int(b), T(-1), l + i * ldl, ldli,
              x + i * ldx, ldxi, T(1), x, ldxi);
  }
}
inline void trsm(bool tl, Index n, Index m, const float* l, Index ldl, float* x, Index ldx) {
  trsm_impl<float>(cblas_strsm, cblas_sgemm, tl, n, m, l, ldl, x, ldx, "strsm");
}
inline void trsm(bool tl, Index n, Index m, const double* l, Index ldl, double* x, Index ldx) {
  trsm_impl<double>(cblas_dtrsm, cblas_dgemm, tl, n, m, l, ldl, x, ldx, "dtrsm");
}

// ---- SVD (divide and conquer) -------------------------------------------------------------------
// Thin SVD of a row-major m x n matrix `a` (destroyed). A row-major A is a column-major A^T, and
// A^T = V S U^T, so calling column-major gesdd on the same buffer with (n, m) returns U^T's factors
// in exactly the buffers we want: its "U" (n x k, column-major) *is* our row-major Vt (k x n), and
// its "VT" (k x m, column-major) *is* our row-major U (m x k). No transposition copies at all.
inline void gesdd(Index m, Index n, float* a, Index lda, float* s, float* u, float* vt) {
  const lapack_int k = to_int(std::min(m, n), "sgesdd");
  check_info(LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', to_int(n, "sgesdd"), to_int(m, "sgesdd"), a,
                            to_int(lda, "sgesdd"), s, vt, to_int(n, "sgesdd"), u, k),
             "LAPACKE_sgesdd");
}
inline void gesdd(Index m, Index n, double* a, Index lda, double* s, double* u, double* vt) {
  const lapack_int k = to_int(std::min(m, n), "dgesdd");
  check_info(LAPACKE_dgesdd(LAPACK_COL_MAJOR, 'S', to_int(n, "dgesdd"), to_int(m, "dgesdd"), a,
                            to_int(lda, "dgesdd"), s, vt, to_int(n, "dgesdd"), u, k),
             "LAPACKE_dgesdd");
}

// ---- symmetric eigenproblem, eigenpairs il..iu (0-based, inclusive) ------------------------------
// syevr (MRRR) computes a subset in O(n^2 * k) after the O(n^3) tridiagonal reduction. `a` (n x n,
// symmetric, destroyed) is read from its upper triangle; w gets k ascending values, z is n x k
// row-major. abstol = 2*safe_min asks for the most accurate eigenvalues LAPACK can give.
inline void syevr(Index n, float* a, Index lda, Index il, Index iu, float* w, float* z) {
  const lapack_int k = to_int(iu - il + 1, "ssyevr");
  lapack_int found = 0;
  std::vector<lapack_int> isuppz(2 * static_cast<std::size_t>(std::max<lapack_int>(1, k)));
  check_info(LAPACKE_ssyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'U', to_int(n, "ssyevr"), a,
                            to_int(lda, "ssyevr"), 0.f, 0.f, to_int(il + 1, "ssyevr"),
                            to_int(iu + 1, "ssyevr"), 2 * LAPACKE_slamch('S'), &found, w, z, k,
                            isuppz.data()),
             "LAPACKE_ssyevr");
  if (found != k) throw numerical_error(detail::concat("LAPACKE_ssyevr found ", found, " of ", k, " eigenpairs"));
}
inline void syevr(Index n, double* a, Index lda, Index il, Index iu, double* w, double* z) {
  const lapack_int k = to_int(iu - il + 1, "dsyevr");
  lapack_int found = 0;
  std::vector<lapack_int> isuppz(2 * static_cast<std::size_t>(std::max<lapack_int>(1, k)));
  check_info(LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'U', to_int(n, "dsyevr"), a,
                            to_int(lda, "dsyevr"), 0.0, 0.0, to_int(il + 1, "dsyevr"),
                            to_int(iu + 1, "dsyevr"), 2 * LAPACKE_dlamch('S'), &found, w, z, k,
                            isuppz.data()),
             "LAPACKE_dsyevr");
  if (found != k) throw numerical_error(detail::concat("LAPACKE_dsyevr found ", found, " of ", k, " eigenpairs"));
}

// ---- thin QR: `a` (m x n, m >= n, row-major) becomes Q; R (n x n) is written to r -----------------
template <class T, class Geqrf, class Orgqr>
void qr_impl(Index m, Index n, T* a, Index lda, T* r, Geqrf geqrf, Orgqr orgqr, const char* name) {
  std::vector<T> tau(static_cast<std::size_t>(std::max<Index>(1, n)));
  const lapack_int im = to_int(m, name), in = to_int(n, name), ilda = to_int(lda, name);
  check_info(geqrf(LAPACK_ROW_MAJOR, im, in, a, ilda, tau.data()), name);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < n; ++j) r[i * n + j] = j >= i ? a[i * lda + j] : T(0);
  check_info(orgqr(LAPACK_ROW_MAJOR, im, in, in, a, ilda, tau.data()), name);
}
inline void qr(Index m, Index n, float* a, Index lda, float* r) {
  qr_impl(m, n, a, lda, r, LAPACKE_sgeqrf, LAPACKE_sorgqr, "LAPACKE_sgeqrf/sorgqr");
}
inline void qr(Index m, Index n, double* a, Index lda, double* r) {
  qr_impl(m, n, a, lda, r, LAPACKE_dgeqrf, LAPACKE_dorgqr, "LAPACKE_dgeqrf/dorgqr");
}

// ---- Cholesky: `a` (n x n, row-major, SPD) becomes its lower factor L, upper part zeroed ---------
// Same trick as gesdd: the row-major buffer of a symmetric A is the column-major buffer of A, and
// column-major potrf('U') leaves U with A = U^T U there, whose row-major reading is L = U^T. Calling
// LAPACKE with LAPACK_ROW_MAJOR instead would transpose the whole matrix in and out (two n^2
// copies, which on a 4096 x 4096 double cost as much as the factorisation itself).
template <class T, class Potrf>
void cholesky_impl(Index n, T* a, Index lda, Potrf potrf, const char* name) {
  const lapack_int info = potrf(LAPACK_COL_MAJOR, 'U', to_int(n, name), a, to_int(lda, name));
  if (info > 0)
    throw numerical_error(detail::concat(name, ": matrix is not positive definite (leading minor ",
                                         info, " of ", n, ")"));
  check_info(info, name);
  for (Index i = 0; i < n; ++i) std::fill(a + i * lda + i + 1, a + i * lda + n, T(0));
}
inline void cholesky(Index n, float* a, Index lda) { cholesky_impl(n, a, lda, LAPACKE_spotrf, "LAPACKE_spotrf"); }
inline void cholesky(Index n, double* a, Index lda) { cholesky_impl(n, a, lda, LAPACKE_dpotrf, "LAPACKE_dpotrf"); }

}  // namespace milora::blas_lapack

#endif  // MILORA_HAS_LAPACKE
