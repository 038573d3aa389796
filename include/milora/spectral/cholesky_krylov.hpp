// CholeskyKrylovSVD: the r SMALLEST singular triplets without a full SVD, for MiLoRA.
//
// Randomized SVD finds the largest triplets; the smallest are the largest of an inverse. With
// k = min(m, n) and G the k x k Gram matrix of the smaller side (W W^T or W^T W), in double:
//
//   1. G = syrk(W) in double. W's float values are exact in double, and squaring the condition
//      number costs nothing we need: eps_64 * kappa(W)^2 stays far below float's resolution for
//      any kappa(W) < 1e4.
//   2. Block Krylov on (G - mu I)^-1, applied as two triangular solves with the Cholesky factor
//      of G - mu I, the basis kept orthonormal by block Gram-Schmidt done twice. (The unshifted
//      phase of a float weight factors G rounded to float: see bottom().) On the inverse the
//      minor end of the spectrum is the dominant one; a Krylov space converges like a Chebyshev
//      polynomial in the relative gap, where plain inverse subspace iteration stalls.
//   3. After each block, Rayleigh-Ritz on G in the basis (G Q is kept, one product per block): the
//      r + 1 smallest Ritz pairs (theta_i, x_i) and residuals r_i = G x_i - theta_i x_i. By
//      Davis-Kahan, x_i is within angle ||r_i|| / (theta_r - theta_i) of the true minor subspace
//      (theta_r: the first unwanted Ritz value), so
//          overlap >= 1 - (1/r) sum_i min(1, (||r_i|| / (theta_r - theta_i))^2)
//      and we stop when that estimate reaches 1 - tolerance.
//   4. The minor tail of a real weight is clustered: relative gaps of 1e-4 at n = 4096 make the
//      unshifted space (mu = 0) converge in hundreds of blocks. So the first phase (mu = 0,
//      phase_blocks blocks) only locates the tail; each further phase shifts to just below the
//      smallest eigenvalue as estimated so far (after the unshifted phase mu = theta_0 -
//      first_shift * ||r_0||, after a shifted one mu = theta_0 - (theta_r - theta_0) / 2), where
//      the wanted eigenvalues of (G - mu I)^-1 are separated by factors, not by 1e-4, and restarts
//      from the previous phase's Ritz vectors. A shift above the smallest eigenvalue makes Cholesky
//      fail; the shift then steps down 4x. Each phase costs one Cholesky factorisation, so a phase
//      that is about to converge may run up to extra_blocks past phase_blocks instead.
//      (docs/benchmarks.md, issue 4, counts the phases and blocks on several spectra.)
//   5. X spans the minor left (or right) singular subspace. The other side is orth(W^T A^-1 X)
//      (A = G - mu I), which damps rather than amplifies X's error along principal directions;
//      sigma comes from the SVD of the r x r core X^T W Y (triplets_from_subspace).
//
// If neither phase meets the tolerance, or W is numerically rank deficient (Cholesky of G fails),
// the solver logs one line (milora::log) and returns ExactSVD's answer: never a silently wrong
// subspace. Matrices too small for a Krylov space to pay (2 b > k) go to ExactSVD directly.
//
// Needs the backend in double: B::rebind<double> (milora/core/precision.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>
#include <type_traits>
#include <vector>

#include "milora/core/log.hpp"
#include "milora/core/precision.hpp"
#include "milora/core/spectral_solver.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

struct CholeskyKrylovSVD {
  static constexpr std::string_view name = "cholesky-krylov";
  Index oversampling = 16;   ///< p: the Krylov block has b = r + p columns
  Index phase_blocks = 8;    ///< Krylov blocks per phase (one shift, one Cholesky factor)
  Index max_blocks = 24;     ///< all phases together
  Index extra_blocks = 4;    ///< a phase may run this many blocks longer while its estimate halves per block
  double first_shift = 0.25; ///< the first shift tried after the unshifted phase: theta_0 - first_shift ||r_0||
  double tolerance = 1e-4;   ///< accepted 1 - (estimated subspace overlap)
  std::uint64_t seed = 0x2545F4914F6CDD1DULL;

  /// The r smallest singular triplets, sigma descending (as ExactSVD::bottom returns them).
  template <Backend B>
  Triplets<B> bottom(const_view_t<B> w, Index r) const {
    static_assert(Rebindable<B, double>,
                  "CholeskyKrylovSVD needs the backend in double: declare template <class U> using "
                  "rebind = YourBackend<U> (milora/core/precision.hpp)");
    using D = rebind_t<B, double>;
    const Index m = B::rows(w), n = B::cols(w), k = std::min(m, n);
    detail::check_triplet_count(r, m, n, name);
    if (oversampling < 0 || phase_blocks < 2 || max_blocks < phase_blocks || !(tolerance > 0) ||
        extra_blocks < 0 || !(first_shift > 0 && first_shift <= 1))
      throw value_error(detail::concat("CholeskyKrylovSVD: oversampling ", oversampling, ", phase_blocks ",
                                       phase_blocks, ", max_blocks ", max_blocks, ", tolerance ", tolerance,
                                       ", extra_blocks ", extra_blocks, ", first_shift ", first_shift,
                                       " (need >= 0, >= 2, >= phase_blocks, > 0, >= 0, in (0, 1])"));
    const Index b = r + oversampling;
    if (2 * b > k) return ExactSVD{}.bottom<B>(w, r);  // the Krylov space would be most of R^k

    const bool left = m <= n;  // the Gram matrix of the smaller side
    const auto wd = convert<D, B>(w);
    auto g = D::zeros(k, k);
    D::syrk(1.0, wd, left ? Trans::no : Trans::yes, 0.0, g);

    // Phase 1: no shift, from a random block. Later phases: shift just below the smallest
    // eigenvalue as estimated so far, restart from the previous phase's Ritz vectors.
    // g is shifted in place from phase to phase (a copy would be k^2 more memory to touch).
    // Phase 1 only has to locate the minor tail, to ~||r_0||, so its factor is in W's own
    // precision when that is lower (float: the factorisation and every solve in half the time of
    // double; G rounded to float moves its eigenvalues by ~eps_32 ||G||, far below ||r_0||). Its
    // Ritz values and residuals still come from G in double, so the stopping rule stays exact.
    // A shifted factor must be double: the shift sits ~1e-7 ||G|| below the smallest eigenvalue.
    Inverse<B, D> inverse;
    if constexpr (!std::is_same_v<scalar_t<B>, double>) inverse.low = factor<B>(convert<B, D>(g));
    if (!inverse.low) inverse.high = factor<D>(g);  // double W, or G too ill-conditioned for float
    if (!inverse.low && !inverse.high) {
      log(detail::concat(name, ": the Gram matrix of a ", detail::shape_str(m, n),
                         " weight is not positive definite (rank deficient?); using the exact SVD"));
      return ExactSVD{}.bottom<B>(w, r);
    }
    auto start = D::zeros(k, b);
    D::fill_normal(start, 0.0, 1.0, seed);
    const Index per_phase = std::min(phase_blocks, k / b);
    // Blocks a phase may add beyond per_phase: within the Krylov space's limit and max_blocks.
    const auto extra_for = [&](Index used_before) {
      return std::max<Index>(0, std::min({extra_blocks, k / b - per_phase, max_blocks - used_before - per_phase}));
    };
    Krylov<D> state = krylov<B, D>(g, inverse, start, r, per_phase, extra_for(0));
    double mu = 0, applied = 0;  // shift of the last factor, shift now on g's diagonal
    Index used = state.blocks;
    while (!state.converged && used + per_phase <= max_blocks) {
      // Ritz values are upper bounds: the smallest eigenvalue is below theta_0, and the wanted
      // ones spread over ~ theta_r - theta_0. If the shift is still above the smallest
      // eigenvalue, Cholesky fails and we step down by 4x the distance. (Adding ||r_0|| to every
      // step, the safe choice, measured 3x more phases on the test spectra.)
      const double theta0 = state.theta[0] + mu;  // back to G's eigenvalues
      // After the unshifted phase theta_0 is still far off, by up to ||r_0|| (measured: stepping
      // by half the width there failed two Cholesky attempts out of three). The bound is loose,
      // though: on the LLM-like spectrum theta_0 was off by 0.19 ||r_0||, and a shift of
      // ||r_0|| / 4 landed 3 widths below the cluster, where the next phase converges instead of
      // only locating it; if that shift fails, the next is ||r_0||, the safe one.
      // After a shifted phase theta_0 is accurate and half the width is the right distance.
      const double half_width = 0.5 * (state.theta[std::size_t(r)] - state.theta[0]);
      const double step = mu == 0 ? std::max(half_width, state.residual0) : half_width;
      const double first_margin = mu == 0 && state.residual0 > half_width ? first_shift : 1.0;
      std::optional<matrix_t<D>> shifted_l;
      for (double margin = first_margin; margin <= 64 && !shifted_l; margin *= 4) {
        const double candidate = theta0 - margin * step;
        if (candidate <= 0) break;  // no better than no shift
        D::add_diagonal(g, applied - candidate);  // g = G - candidate * I
        applied = candidate;
        shifted_l = factor<D>(g);
        if (shifted_l) mu = candidate;
      }
      if (!shifted_l) break;
      inverse = {std::nullopt, std::move(shifted_l)};
      state = krylov<B, D>(g, inverse, state.ritz_block, r, per_phase, extra_for(used));
      used += state.blocks;
    }
    if (state.converged) return triplets_from_subspace<B, D>(wd, state.x, inverse, left);
    log(detail::concat(name, ": no convergence on a ", detail::shape_str(m, n), " weight at r = ", r,
                       " (estimated overlap ", 1.0 - state.defect, " after ", used, " blocks of ", b,
                       "); using the exact SVD"));
    return ExactSVD{}.bottom<B>(w, r);
  }

 private:
  template <class D>
  struct Krylov {
    bool converged = false;
    Index blocks = 0;           // Krylov blocks this phase ran
    double defect = 1.0;        // estimated 1 - overlap
    double residual0 = 0;       // ||r_0||, of the smallest Ritz pair
    std::vector<double> theta;  // r + 1 smallest Ritz values, ascending
    matrix_t<D> x;              // k x r Ritz vectors of the r smallest
    matrix_t<D> ritz_block;     // k x b Ritz vectors of the b smallest: a warm start
  };

  // A^-1 for A = L L^T, with L in W's own precision (`low`, the unshifted phase of a float
  // weight) or in double (`high`); exactly one is set.
  template <Backend B, Backend D>
  struct Inverse {
    std::optional<matrix_t<B>> low;
    std::optional<matrix_t<D>> high;

    void apply(matrix_t<D>& y) const {
      if (high) {
        D::trsm(*high, Trans::no, y);
        D::trsm(*high, Trans::yes, y);
        return;
      }
      auto y_low = convert<B, D>(y);
      B::trsm(*low, Trans::no, y_low);
      B::trsm(*low, Trans::yes, y_low);
      y = convert<D, B>(y_low);
    }
  };

  // The Cholesky factor, or nothing if the matrix is not (numerically) positive definite.
  template <class D>
  static std::optional<matrix_t<D>> factor(const matrix_t<D>& a) {
    try {
      return D::cholesky(a);
    } catch (const numerical_error&) {
      return std::nullopt;
    }
  }

  // Block Krylov on a^-1 = (l l^T)^-1 from `start` (k x b), `depth` blocks, with Rayleigh-Ritz
  // on `a` after each block and the overlap estimate of the header comment. Up to `extra` more
  // blocks while the estimate is below 1/2 and halves with every block: at that pace a few more
  // blocks converge, where stopping would cost a new factorisation (~4 blocks' time) and restart.
  template <Backend B, Backend D>
  Krylov<D> krylov(const matrix_t<D>& a, const Inverse<B, D>& inverse, const_view_t<D> start, Index r,
                   Index depth, Index extra) const {
    const Index k = D::rows(a), b = D::cols(start), most = depth + extra, width = b * most;
    auto basis = D::zeros(k, width);    // Q_0 .. Q_j, orthonormal columns
    auto a_basis = D::zeros(k, width);  // A Q_0 .. A Q_j
    // T = Q^T A Q on the host, row-major width x width: each block adds its column of blocks
    // Q_i^T A Q_j (i <= j) and the mirrored row, so earlier products are not recomputed.
    std::vector<double> t_all(std::size_t(width * width));
    Krylov<D> out;
    double previous_defect = 1.0;
    for (Index j = 0; j < most; ++j) {
      if (j >= depth && !(out.defect < 0.5 && out.defect <= 0.5 * previous_defect)) break;
      out.blocks = j + 1;
      auto y = D::clone(j == 0 ? start : D::cblock(basis, 0, (j - 1) * b, k, b));
      if (j > 0) {  // A^-1 Q_{j-1} = L^-T L^-1 Q_{j-1}, orthogonalised against the basis, twice
        inverse.apply(y);
        const auto done = D::cblock(basis, 0, 0, k, j * b);
        auto coeff = D::zeros(j * b, b);
        for (int pass = 0; pass < 2; ++pass) {
          D::gemm(1.0, done, Trans::yes, y, Trans::no, 0.0, coeff);
          D::gemm(-1.0, done, Trans::no, coeff, Trans::no, 1.0, y);
        }
      }
      D::copy(D::qr(y).Q, D::block(basis, 0, j * b, k, b));
      D::gemm(1.0, a, Trans::no, D::cblock(basis, 0, j * b, k, b), Trans::no, 0.0,
              D::block(a_basis, 0, j * b, k, b));
      const Index cols = (j + 1) * b;
      const auto q = D::cblock(basis, 0, 0, k, cols), aq = D::cblock(a_basis, 0, 0, k, cols);
      add_block_column<D>(q, D::cblock(a_basis, 0, j * b, k, b), width, t_all);
      if (j == 0) continue;

      // Rayleigh-Ritz: the b smallest eigenpairs of T = Q^T A Q.
      std::vector<double> t_host(std::size_t(cols * cols));
      for (Index i = 0; i < cols; ++i)
        std::copy_n(t_all.begin() + std::ptrdiff_t(i * width), cols, t_host.begin() + std::ptrdiff_t(i * cols));
      const auto ritz = D::eigh(D::from_host(cols, cols, t_host), 0, b - 1);
      out.theta = D::to_host(ritz.values);
      out.ritz_block = D::zeros(k, b);
      D::gemm(1.0, q, Trans::no, ritz.vectors, Trans::no, 0.0, out.ritz_block);
      // Residuals of the r + 1 smallest pairs: R = A X - X diag(theta).
      const auto y_r = D::cblock(ritz.vectors, 0, 0, cols, r + 1);
      auto res = D::zeros(k, r + 1), x_theta = D::clone(D::cblock(out.ritz_block, 0, 0, k, r + 1));
      D::gemm(1.0, aq, Trans::no, y_r, Trans::no, 0.0, res);
      D::scale_columns(x_theta, D::cblock(ritz.values, 0, 0, 1, r + 1));
      D::axpy(-1.0, x_theta, res);
      std::vector<double> rn(std::size_t(r + 1));
      for (Index i = 0; i <= r; ++i) rn[std::size_t(i)] = std::sqrt(D::squared_norm(D::cblock(res, 0, i, k, 1)));
      out.x = D::clone(D::cblock(out.ritz_block, 0, 0, k, r));
      // The unwanted spectrum starts no lower than theta_r - ||r_r|| (an eigenvalue lies within
      // ||r_r|| of theta_r, and Ritz values bound the eigenvalues from above): using that
      // instead of theta_r keeps the estimate honest while theta_r itself is unconverged.
      const double unwanted = out.theta[std::size_t(r)] - rn[std::size_t(r)];
      out.residual0 = rn[0];
      previous_defect = out.defect;
      out.defect = 0;
      for (Index i = 0; i < r; ++i) {
        const double gap = unwanted - out.theta[std::size_t(i)], ri = rn[std::size_t(i)];
        out.defect += gap > 0 ? std::min(1.0, (ri / gap) * (ri / gap)) : 1.0;
      }
      out.defect /= double(r);
      if (out.defect <= tolerance) {
        out.converged = true;
        return out;
      }
    }
    return out;
  }

  // Adds the last block column of T = Q^T A Q, Q_i^T (A Q_j) for every block i <= j, to the host
  // matrix t_all (row-major, `width` wide), and its mirror as block row j: T is then exactly
  // symmetric, as backends' eigensolvers (which read different triangles) need. The diagonal
  // block, which rounding makes slightly asymmetric, is replaced by its symmetric part.
  template <class D>
  static void add_block_column(const_view_t<D> q, const_view_t<D> a_q_last, Index width, std::vector<double>& t_all) {
    const Index cols = D::cols(q), b = D::cols(a_q_last), first = cols - b;
    auto column = D::zeros(cols, b);
    D::gemm(1.0, q, Trans::yes, a_q_last, Trans::no, 0.0, column);
    const auto h = D::to_host(column);
    auto at = [&](Index i, Index j) -> double& { return t_all[std::size_t(i * width + j)]; };
    for (Index i = 0; i < first; ++i)
      for (Index c = 0; c < b; ++c) at(i, first + c) = at(first + c, i) = h[std::size_t(i * b + c)];
    for (Index i = 0; i < b; ++i)
      for (Index c = 0; c < b; ++c)
        at(first + i, first + c) = 0.5 * (h[std::size_t((first + i) * b + c)] + h[std::size_t((first + c) * b + i)]);
  }

  // Triplets from an orthonormal basis X of the minor left (left = true) or right singular
  // subspace, and the inverse of the (shifted) Gram matrix A = L L^T of the last phase.
  //
  // The other side is NOT taken as X^T W: an error e in X along a principal direction j comes
  // back multiplied by sigma_j / sigma_i there (x100 on a real weight). Instead Y = orth(W^T A^-1 X)
  // (or orth(W A^-1 X)): A^-1 W = U diag(sigma / (sigma^2 - mu)) V^T damps the principal
  // directions by the same factor. Then sigma and the rotations come from the SVD of the r x r core
  // X^T W Y, in which the errors of X and Y enter only as their product.
  template <Backend B, Backend D>
  static Triplets<B> triplets_from_subspace(const matrix_t<D>& wd, const matrix_t<D>& x,
                                            const Inverse<B, D>& inverse, bool left) {
    const Index m = D::rows(wd), n = D::cols(wd), r = D::cols(x);
    auto z = D::clone(x);  // A^-1 X
    inverse.apply(z);
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
};

}  // namespace milora
