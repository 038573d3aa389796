// Step 6 of CholeskyKrylovSVD (milora/spectral/cholesky_krylov.hpp): singular triplets from a basis
// of the minor left (or right) singular subspace, without amplifying its error along principal
// directions.
#pragma once

#include "milora/core/backend.hpp"
#include "milora/core/precision.hpp"
#include "milora/core/spectral_solver.hpp"

namespace milora::detail::minor_krylov {

// Triplets from an orthonormal basis X of the minor left (left = true) or right singular
// subspace, and Z = (G - mu I)^-1 X up to column scaling (or an approximation of it: polish()).
//
// The other side is NOT taken as W^T X: an error e in X along a principal direction j comes
// back multiplied by sigma_j / sigma_i there (x100 on a real weight; on a gapped spectrum a
// subspace within 1e-4 of the tolerance gave sigma 4e-3 off). Instead Y = orth(W^T Z) (or
// orth(W Z)): (G - mu I)^-1 W = U diag(sigma / (sigma^2 - mu)) V^T damps the principal
// directions by the same factor. Then sigma and the rotations come from the SVD of the r x r core
// X^T W Y, in which the errors of X and Y enter only as their product.
template <Backend B, Backend D>
Triplets<B> triplets_from_subspace(const matrix_t<D>& wd, const matrix_t<D>& x, const matrix_t<D>& z,
                                          bool left) {
  const Index m = D::rows(wd), n = D::cols(wd), r = D::cols(x);
  const Index other = left ? n : m;
  auto y = D::zeros(other, r);  // the other side's basis, before orthonormalisation
  D::gemm(1.0, wd, left ? Trans::yes : Trans::no, z, Trans::no, 0.0, y);
  const auto basis = D::qr(y).Q;
  // core = U_basis^T W V_basis, r x r
  const auto& u_basis = left ? x : basis;
  const auto& v_basis = left ? basis : x;
  auto wv = D::zeros(m, r), core = D::zeros(r, r);
  D::gemm(1.0, wd, Trans::no, v_basis, Trans::no, 0.0, wv);
  D::gemm(1.0, u_basis, Trans::yes, wv, Trans::no, 0.0, core);
  const auto f = D::svd(core);  // core = U~ S V~^T
  auto u = D::zeros(m, r), vt = D::zeros(r, n);
  D::gemm(1.0, u_basis, Trans::no, f.U, Trans::no, 0.0, u);
  D::gemm(1.0, f.Vt, Trans::no, v_basis, Trans::yes, 0.0, vt);
  return {convert<B, D>(u), convert<B, D>(f.S), convert<B, D>(vt)};
}

}  // namespace milora::detail::minor_krylov
