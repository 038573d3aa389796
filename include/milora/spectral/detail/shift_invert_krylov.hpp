// Steps 2-4 of CholeskyKrylovSVD (milora/spectral/cholesky_krylov.hpp): block Krylov on the
// shifted inverse (G - mu I)^-1 of a Gram matrix G, in phases of one Cholesky factor each, with
// Rayleigh-Ritz after every block and the Davis-Kahan estimate of how far the Ritz vectors are from
// the minor eigenspace. In the working precision P (float or double); polish() (davidson_polish.hpp)
// checks a float result in double.
//
//   phases(s, g, b, r, until_stall)   the unshifted phase from a random block, then shifted ones
//                                     restarted from the last Ritz vectors (KrylovPass)
//   krylov(s, a, l, start, ...)       one phase: blocks of A^-1 = L^-T L^-1, orthogonalised twice
//   rayleigh_ritz(q, a_q, t, b, r, c) the b smallest Ritz pairs in a basis, residuals, estimate
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "milora/core/backend.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/precision.hpp"

namespace milora::detail::minor_krylov {

/// The solver's parameters that the phases and the polish read (CholeskyKrylovSVD's members).
struct KrylovSettings {
  Index phase_blocks, max_blocks, extra_blocks;
  double first_shift, tolerance, stall_defect;
  Index polish_steps;
  std::uint64_t seed;
};

template <Backend P>
struct KrylovState {
  bool converged = false;
  bool stalled = false;       // the estimate stopped halving below stall_defect (until_stall only)
  Index blocks = 0;           // Krylov blocks this phase ran
  double defect = 1.0;        // estimated 1 - overlap
  double residual0 = 0;       // ||r_0||, of the smallest Ritz pair
  std::vector<double> theta;  // b smallest Ritz values, ascending
  matrix_t<P> ritz_block;     // k x b Ritz vectors of the b smallest (the first r: the answer)
};

// The phases of steps 2-4 in precision P, on g = G (shifted in place).
template <Backend P>
struct KrylovPass {
  KrylovState<P> state;  // of the last phase
  matrix_t<P> factor;  // Cholesky factor of G - mu I, the last phase's
  double mu = 0;
  Index blocks = 0;  // all phases together
};

// The Cholesky factor, or nothing if the matrix is not (numerically) positive definite.
template <Backend P>
std::optional<matrix_t<P>> cholesky_factor(const matrix_t<P>& a) {
  try {
    return P::cholesky(a);
  } catch (const numerical_error&) {
    return std::nullopt;
  }
}

// y <- (L L^T)^-1 y, with L in precision P (y in D).
template <Backend P, Backend D>
void solve(const matrix_t<P>& l, matrix_t<D>& y) {
  if constexpr (std::is_same_v<matrix_t<P>, matrix_t<D>>) {
    D::trsm(l, Trans::no, y);
    D::trsm(l, Trans::yes, y);
  } else {
    auto yp = convert<P, D>(y);
    solve<P, P>(l, yp);
    y = convert<D, P>(yp);
  }
}

template <Backend P>
struct RitzPairs {
  std::vector<double> theta;  // the b smallest Ritz values, ascending
  matrix_t<P> values;         // the same, 1 x b
  matrix_t<P> x;              // k x b Ritz vectors
  matrix_t<P> residuals;      // A x - theta x, of the first `residual_count` pairs
  double defect = 1.0, residual0 = 0;
};

// Rayleigh-Ritz in the orthonormal basis q (k x c) given a_q = A q and t = q^T a_q (host,
// row-major, exactly symmetric): the b smallest Ritz pairs, the residuals of the first
// `residual_count` (>= r + 1) of them, and the overlap estimate of step 3. The estimate needs
// r + 1 residuals, a Davidson step all b.
template <Backend P>
RitzPairs<P> rayleigh_ritz(const_view_t<P> q, const_view_t<P> a_q, const std::vector<double>& t, Index b,
                           Index r, Index residual_count) {
  using T = scalar_t<P>;
  const Index k = P::rows(q), c = P::cols(q);
  const auto ritz = P::eigh(P::from_host(c, c, std::vector<T>(t.begin(), t.end())), 0, b - 1);
  RitzPairs<P> out;
  const auto values = P::to_host(ritz.values);
  out.theta.assign(values.begin(), values.end());
  out.values = P::clone(ritz.values);
  out.x = P::zeros(k, b);
  out.residuals = P::zeros(k, residual_count);
  P::gemm(T(1), q, Trans::no, ritz.vectors, Trans::no, T(0), out.x);
  // R = A X - X diag(theta), with A X = a_q times the Ritz coefficients
  P::gemm(T(1), a_q, Trans::no, P::cblock(ritz.vectors, 0, 0, c, residual_count), Trans::no, T(0), out.residuals);
  auto x_theta = P::clone(P::cblock(out.x, 0, 0, k, residual_count));
  P::scale_columns(x_theta, P::cblock(ritz.values, 0, 0, 1, residual_count));
  P::axpy(T(-1), x_theta, out.residuals);
  std::vector<double> rn(std::size_t(r + 1));
  for (Index i = 0; i <= r; ++i)
    rn[std::size_t(i)] = std::sqrt(double(P::squared_norm(P::cblock(out.residuals, 0, i, k, 1))));
  // The unwanted spectrum starts no lower than theta_r - ||r_r|| (an eigenvalue lies within
  // ||r_r|| of theta_r, and Ritz values bound the eigenvalues from above): using that
  // instead of theta_r keeps the estimate honest while theta_r itself is unconverged.
  const double unwanted = out.theta[std::size_t(r)] - rn[std::size_t(r)];
  out.residual0 = rn[0];
  out.defect = 0;
  for (Index i = 0; i < r; ++i) {
    const double gap = unwanted - out.theta[std::size_t(i)], ri = rn[std::size_t(i)];
    out.defect += gap > 0 ? std::min(1.0, (ri / gap) * (ri / gap)) : 1.0;
  }
  out.defect /= double(r);
  return out;
}

// Adds the last block column of T = Q^T A Q, Q_i^T (A Q_j) for every block i <= j, to the host
// matrix t_all (row-major, `width` wide), and its mirror as block row j: T is then exactly
// symmetric, as backends' eigensolvers (which read different triangles) need. The diagonal
// block, which rounding makes slightly asymmetric, is replaced by its symmetric part.
template <Backend P>
void add_block_column(const_view_t<P> q, const_view_t<P> a_q_last, Index width, std::vector<double>& t_all) {
  using T = scalar_t<P>;
  const Index cols = P::cols(q), b = P::cols(a_q_last), first = cols - b;
  auto column = P::zeros(cols, b);
  P::gemm(T(1), q, Trans::yes, a_q_last, Trans::no, T(0), column);
  const auto h = P::to_host(column);
  auto at = [&](Index i, Index j) -> double& { return t_all[std::size_t(i * width + j)]; };
  for (Index i = 0; i < first; ++i)
    for (Index c = 0; c < b; ++c) at(i, first + c) = at(first + c, i) = double(h[std::size_t(i * b + c)]);
  for (Index i = 0; i < b; ++i)
    for (Index c = 0; c < b; ++c)
      at(first + i, first + c) =
          0.5 * (double(h[std::size_t((first + i) * b + c)]) + double(h[std::size_t((first + c) * b + i)]));
}

// Block Krylov on a^-1 = (l l^T)^-1 from `start` (k x b), `depth` blocks, with Rayleigh-Ritz
// on `a` after each block and the overlap estimate of the header comment. Up to `extra` more
// blocks while the estimate is below 1/2 and halves with every block: at that pace a few more
// blocks converge, where stopping would cost a new factorisation (~4 blocks' time) and restart.
template <Backend P>
KrylovState<P> krylov(const KrylovSettings& settings, const matrix_t<P>& a, const matrix_t<P>& l, const_view_t<P> start,
                      Index r, Index depth, Index extra, bool until_stall) {
  using T = scalar_t<P>;
  const Index k = P::rows(a), b = P::cols(start), most = depth + extra, width = b * most;
  auto basis = P::zeros(k, width);    // Q_0 .. Q_j, orthonormal columns
  auto a_basis = P::zeros(k, width);  // A Q_0 .. A Q_j
  // T = Q^T A Q on the host, row-major width x width: each block adds its column of blocks
  // Q_i^T A Q_j (i <= j) and the mirrored row, so earlier products are not recomputed.
  std::vector<double> t_all(std::size_t(width * width));
  KrylovState<P> out;
  double previous_defect = 1.0;
  for (Index j = 0; j < most; ++j) {
    if (j >= depth && !(out.defect < 0.5 && out.defect <= 0.5 * previous_defect)) break;
    out.blocks = j + 1;
    auto y = P::clone(j == 0 ? start : P::cblock(basis, 0, (j - 1) * b, k, b));
    if (j > 0) {  // A^-1 Q_{j-1} = L^-T L^-1 Q_{j-1}, orthogonalised against the basis, twice
      solve<P, P>(l, y);
      const auto done = P::cblock(basis, 0, 0, k, j * b);
      auto coeff = P::zeros(j * b, b);
      for (int pass = 0; pass < 2; ++pass) {
        P::gemm(T(1), done, Trans::yes, y, Trans::no, T(0), coeff);
        P::gemm(T(-1), done, Trans::no, coeff, Trans::no, T(1), y);
      }
    }
    P::copy(P::qr(y).Q, P::block(basis, 0, j * b, k, b));
    P::gemm(T(1), a, Trans::no, P::cblock(basis, 0, j * b, k, b), Trans::no, T(0), P::block(a_basis, 0, j * b, k, b));
    const Index cols = (j + 1) * b;
    add_block_column<P>(P::cblock(basis, 0, 0, k, cols), P::cblock(a_basis, 0, j * b, k, b), width, t_all);
    if (j == 0) continue;

    std::vector<double> t_host(std::size_t(cols * cols));
    for (Index i = 0; i < cols; ++i)
      std::copy_n(t_all.begin() + std::ptrdiff_t(i * width), cols, t_host.begin() + std::ptrdiff_t(i * cols));
    auto ritz =
        rayleigh_ritz<P>(P::cblock(basis, 0, 0, k, cols), P::cblock(a_basis, 0, 0, k, cols), t_host, b, r, r + 1);
    previous_defect = out.defect;
    out.defect = ritz.defect;
    out.residual0 = ritz.residual0;
    out.theta = std::move(ritz.theta);
    out.ritz_block = std::move(ritz.x);
    if (out.defect <= settings.tolerance) {
      out.converged = true;
      return out;
    }
    if (until_stall && out.defect < settings.stall_defect && out.defect > 0.5 * previous_defect) {
      out.stalled = true;
      return out;
    }
  }
  return out;
}

// Steps 2-4 on g = G in precision P: the unshifted phase from a random block, then shifted
// phases from the previous phase's Ritz vectors. g is shifted in place from phase to phase (a
// copy would be k^2 more memory to touch). Nothing if G itself is not positive definite.
// until_stall: a phase whose estimate stalls (step 5) ends the pass, for polish().
template <Backend P>
std::optional<KrylovPass<P>> phases(const KrylovSettings& settings, matrix_t<P>& g, Index b, Index r, bool until_stall) {
  const Index k = P::rows(g);
  auto l = cholesky_factor<P>(g);
  if (!l) return std::nullopt;
  auto start = P::zeros(k, b);
  P::fill_normal(start, 0.0, 1.0, settings.seed);
  const Index per_phase = std::min(settings.phase_blocks, k / b);
  // Blocks a phase may add beyond per_phase: within the Krylov space's limit and max_blocks.
  const auto extra_for = [&](Index used_before) {
    return std::max<Index>(0, std::min({settings.extra_blocks, k / b - per_phase, settings.max_blocks - used_before - per_phase}));
  };
  KrylovPass<P> pass{krylov<P>(settings, g, *l, start, r, per_phase, extra_for(0), until_stall), std::move(*l), 0.0, 0};
  auto& state = pass.state;
  pass.blocks = state.blocks;
  double applied = 0;  // shift now on g's diagonal
  while (!state.converged && !state.stalled && pass.blocks + per_phase <= settings.max_blocks) {
    // Ritz values are upper bounds: the smallest eigenvalue is below theta_0, and the wanted
    // ones spread over ~ theta_r - theta_0. If the shift is still above the smallest
    // eigenvalue, Cholesky fails and we step down by 4x the distance; stepping by ||r_0|| every
    // time is safe but costs phases.
    const double theta0 = state.theta[0] + pass.mu;  // back to G's eigenvalues
    // After the unshifted phase theta_0 can be off by up to ||r_0||, so half the width is too
    // little there. The bound is loose, though: a shift of first_shift * ||r_0|| usually lands
    // a few widths below the cluster, where the next phase converges instead of only locating
    // it; if that shift fails, the next is ||r_0||, the safe one. After a shifted phase theta_0
    // is accurate and half the width is the right distance. (docs/benchmarks.md counts phases.)
    const double half_width = 0.5 * (state.theta[std::size_t(r)] - state.theta[0]);
    const double step = pass.mu == 0 ? std::max(half_width, state.residual0) : half_width;
    const double first_margin = pass.mu == 0 && state.residual0 > half_width ? settings.first_shift : 1.0;
    std::optional<matrix_t<P>> shifted_l;
    for (double margin = first_margin; margin <= 64 && !shifted_l; margin *= 4) {
      const double candidate = theta0 - margin * step;
      if (candidate <= 0) break;  // no better than no shift
      P::add_diagonal(g, scalar_t<P>(applied - candidate));  // g = G - candidate * I
      applied = candidate;
      shifted_l = cholesky_factor<P>(g);
      if (shifted_l) pass.mu = candidate;
    }
    if (!shifted_l) break;
    pass.factor = std::move(*shifted_l);
    state = krylov<P>(settings, g, pass.factor, state.ritz_block, r, per_phase, extra_for(pass.blocks), until_stall);
    pass.blocks += state.blocks;
  }
  return pass;
}

}  // namespace milora::detail::minor_krylov
