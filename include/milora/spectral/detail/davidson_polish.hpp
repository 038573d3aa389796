// Step 5 of CholeskyKrylovSVD (milora/spectral/cholesky_krylov.hpp), for a float weight: the float
// pass's answer checked, and if need be corrected, in double. Rounding G to float leaves ~eps_32
// |W|^T |W| of noise in every residual, so a float estimate cannot read the tolerance on a
// clustered minor tail; only this check, with G applied exactly as W^T (W X) in double, decides.
#pragma once

#include <optional>

#include "milora/core/backend.hpp"
#include "milora/core/precision.hpp"
#include "milora/spectral/detail/shift_invert_krylov.hpp"

namespace milora::detail::minor_krylov {

// Step 5: the float pass's b Ritz vectors, checked (and if need be improved) with G applied
// exactly in double, G X = W (W^T X) or W^T (W X). Each step: Rayleigh-Ritz in the basis, the
// estimate of step 3 from these residuals; if it misses the tolerance, the b residuals R,
// preconditioned by the float pass's last factor M (~ G - mu I), join the basis for the next
// step as two blocks, M^-1 R and M^-2 R. The basis keeps growing (a restart to the b Ritz
// vectors takes more steps), and the second block is nearly free: the products with W are
// memory-bound, so one pass over W with 2b columns costs about what b columns do, and one step
// then does the work of two. The float pass's own residuals are no substitute for the exact R:
// they are float noise, not information. (docs/benchmarks.md has the estimates step by step.)
template <Backend D>
struct MinorBasis {
  matrix_t<D> x;       // k x r, orthonormal
  matrix_t<D> damped;  // ~ (G - mu I)^-1 x, for triplets_from_subspace
};
template <Backend D>
struct Polished {
  std::optional<MinorBasis<D>> basis;  // if the estimate met the tolerance
  Index steps = 0;                     // Davidson steps taken
  double defect = 1.0;                 // the last estimate
};

template <Backend P, Backend D>
Polished<D> polish(const KrylovSettings& settings, const matrix_t<D>& wd, bool left, const KrylovPass<P>& pass, Index r) {
  const Index k = left ? D::rows(wd) : D::cols(wd), other = left ? D::cols(wd) : D::rows(wd);
  const Index b = P::cols(pass.state.ritz_block);
  const auto gram_times = [&](const_view_t<D> v) {
    auto inner = D::zeros(other, D::cols(v)), out = D::zeros(k, D::cols(v));  // W^T v or W v
    D::gemm(1.0, wd, left ? Trans::yes : Trans::no, v, Trans::no, 0.0, inner);
    D::gemm(1.0, wd, left ? Trans::no : Trans::yes, inner, Trans::no, 0.0, out);
    return out;
  };
  auto q = D::qr(convert<D, P>(pass.state.ritz_block)).Q;
  auto g_q = gram_times(q);
  for (Index step = 0;; ++step) {
    const Index c = D::cols(q);
    auto t = D::zeros(c, c);
    D::gemm(1.0, q, Trans::yes, g_q, Trans::no, 0.0, t);
    auto t_host = D::to_host(t);
    for (Index i = 0; i < c; ++i)
      for (Index j = 0; j < i; ++j) {
        const double s = 0.5 * (t_host[std::size_t(i * c + j)] + t_host[std::size_t(j * c + i)]);
        t_host[std::size_t(i * c + j)] = t_host[std::size_t(j * c + i)] = s;
      }
    auto ritz = rayleigh_ritz<D>(q, g_q, t_host, b, r, b);
    if (ritz.defect <= settings.tolerance) {
      // The damped basis for triplets_from_subspace: (theta - mu) (G - mu I)^-1 X, written as
      // X - (G - mu I)^-1 R (R = G X - X Theta), with the float factor standing in for
      // (G - mu I). Along principal directions the two agree (G - mu I is float-accurate there);
      // within the minor cluster, where the float factor is not, R is tiny and X stays as is.
      auto x = D::clone(D::cblock(ritz.x, 0, 0, k, r)), res = D::clone(D::cblock(ritz.residuals, 0, 0, k, r));
      solve<P, D>(pass.factor, res);
      auto damped = D::clone(x);
      D::axpy(-1.0, res, damped);
      return {MinorBasis<D>{std::move(x), std::move(damped)}, step, ritz.defect};
    }
    if (step == settings.polish_steps) return {std::nullopt, step, ritz.defect};
    // Davidson correction: M^-1 R, R = G X - X Theta for all b Ritz pairs (Theta: the b values).
    auto correction = std::move(ritz.residuals);
    solve<P, D>(pass.factor, correction);
    // Two blocks per step: M^-1 R and M^-1 (M^-1 R), each orthogonalised against the basis so
    // far, twice; one pass over W then serves both.
    auto grown = D::zeros(k, c + 2 * b);
    D::copy(q, D::block(grown, 0, 0, k, c));
    for (Index add = 0; add < 2; ++add) {
      if (add == 1) solve<P, D>(pass.factor, correction);
      const auto sofar = D::cblock(grown, 0, 0, k, c + add * b);
      for (int twice = 0; twice < 2; ++twice) {
        auto coeff = D::zeros(c + add * b, b);
        D::gemm(1.0, sofar, Trans::yes, correction, Trans::no, 0.0, coeff);
        D::gemm(-1.0, sofar, Trans::no, coeff, Trans::no, 1.0, correction);
      }
      correction = D::qr(correction).Q;
      D::copy(correction, D::block(grown, 0, c + add * b, k, b));
    }
    const auto g_c = gram_times(D::cblock(grown, 0, c, k, 2 * b));
    auto g_grown = D::zeros(k, c + 2 * b);
    D::copy(g_q, D::block(g_grown, 0, 0, k, c));
    D::copy(g_c, D::block(g_grown, 0, c, k, 2 * b));
    q = std::move(grown);
    g_q = std::move(g_grown);
  }
}

}  // namespace milora::detail::minor_krylov
