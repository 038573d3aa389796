// CholeskyKrylovSVD: the r SMALLEST singular triplets without a full SVD, for MiLoRA.
//
// Randomized SVD finds the largest triplets; the smallest are the largest of an inverse. With
// k = min(m, n) and G the k x k Gram matrix of the smaller side (W W^T or W^T W):
//
//   1. G = syrk(W), in W's precision (the "working precision" P of steps 2-4).
//   2. Block Krylov on (G - mu I)^-1, applied as two triangular solves with the Cholesky factor
//      of G - mu I, the basis kept orthonormal by block Gram-Schmidt done twice. On the inverse
//      the minor end of the spectrum is the dominant one; a Krylov space converges like a
//      Chebyshev polynomial in the relative gap, where plain inverse subspace iteration stalls.
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
//   5. Float W only: steps 1-4 in float, then a check in double (polish()). Rounding G to float,
//      and float products with it, leave ~eps_32 * |W|^T |W| of noise in every residual: on the
//      LLM-like spectrum at n = 4096 that is 1e-8 against eigenvalue gaps of 5e-8, so the float
//      estimate stalls near 1e-2 where it should read 1e-5. A float phase therefore ends when its
//      estimate stalls (below stall_defect, no longer halving), and its b Ritz vectors go to
//      Rayleigh-Ritz with G applied exactly, as W^T (W X) in double. If that estimate misses the
//      tolerance, the residuals, preconditioned by the last float factor, join the basis (a
//      Davidson step: two more blocks of shift-invert Krylov on the exact operator) up to
//      polish_steps times. Only this double estimate decides convergence. A float G that is not
//      positive definite (kappa(W) beyond ~1 / sqrt(eps_32)), or a float pass that does not
//      converge, hands over to steps 1-4 in double; G in double costs twice the time but squares
//      the condition number harmlessly: eps_64 * kappa(W)^2 stays far below float's resolution
//      for any kappa(W) < 1e4.
//   6. X spans the minor left (or right) singular subspace. The other side is orth(W^T A^-1 X)
//      (A = G - mu I; after the float pass X - M^-1 R, see polish()), which damps rather than
//      amplifies X's error along principal directions; sigma comes from the SVD of the r x r core
//      X^T W Y (triplets_from_subspace).
//
// If no pass meets the tolerance, or W is numerically rank deficient (Cholesky of G fails in
// double), the solver logs one line (milora::log) and returns ExactSVD's answer: never a silently
// wrong subspace. Matrices too small for a Krylov space to pay (2 b > k) go to ExactSVD directly.
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

/// What one CholeskyKrylovSVD::bottom call did, for benchmarks, tests and the curious.
struct CholeskyKrylovReport {
  enum class Path { exact, float_pass, double_pass };
  Path path = Path::exact;   ///< which pass produced the answer (exact: ExactSVD's)
  bool float_tried = false;  ///< a float pass ran (float W with a positive definite float Gram matrix)
  Index blocks = 0;          ///< Krylov blocks, all passes together
  Index polish_steps = 0;    ///< Davidson steps in double after the float pass
  double defect = 1.0;       ///< the last pass's final estimate of 1 - overlap
};

struct CholeskyKrylovSVD {
  static constexpr std::string_view name = "cholesky-krylov";
  Index oversampling = 16;   ///< p: the Krylov block has b = r + p columns
  Index phase_blocks = 8;    ///< Krylov blocks per phase (one shift, one Cholesky factor)
  Index max_blocks = 24;     ///< all phases together
  Index extra_blocks = 4;    ///< a phase may run this many blocks longer while its estimate halves per block
  double first_shift = 0.25; ///< the first shift tried after the unshifted phase: theta_0 - first_shift ||r_0||
  double tolerance = 1e-4;   ///< accepted 1 - (estimated subspace overlap)
  double stall_defect = 0.05; ///< float W: a float phase below this estimate that stops halving goes to polish
  Index polish_steps = 3;    ///< float W: Davidson steps in double after the float pass
  std::uint64_t seed = 0x2545F4914F6CDD1DULL;

  /// The r smallest singular triplets, sigma descending (as ExactSVD::bottom returns them).
  /// `report`, if given, says which path produced them (it is reset first).
  template <Backend B>
  Triplets<B> bottom(const_view_t<B> w, Index r, CholeskyKrylovReport* report = nullptr) const {
    static_assert(Rebindable<B, double>,
                  "CholeskyKrylovSVD needs the backend in double: declare template <class U> using "
                  "rebind = YourBackend<U> (milora/core/precision.hpp)");
    using D = rebind_t<B, double>;
    const Index m = B::rows(w), n = B::cols(w), k = std::min(m, n);
    detail::check_triplet_count(r, m, n, name);
    if (oversampling < 0 || phase_blocks < 2 || max_blocks < phase_blocks || !(tolerance > 0) ||
        extra_blocks < 0 || !(first_shift > 0 && first_shift <= 1) || !(stall_defect > 0 && stall_defect < 1) ||
        polish_steps < 0)
      throw value_error(detail::concat("CholeskyKrylovSVD: oversampling ", oversampling, ", phase_blocks ",
                                       phase_blocks, ", max_blocks ", max_blocks, ", tolerance ", tolerance,
                                       ", extra_blocks ", extra_blocks, ", first_shift ", first_shift,
                                       ", stall_defect ", stall_defect, ", polish_steps ", polish_steps,
                                       " (need >= 0, >= 2, >= phase_blocks, > 0, >= 0, in (0, 1], in (0, 1), >= 0)"));
    CholeskyKrylovReport local;
    auto& rep = report ? *report : local;
    rep = {};
    const Index b = r + oversampling;
    if (2 * b > k) return ExactSVD{}.bottom<B>(w, r);  // the Krylov space would be most of R^k

    const bool left = m <= n;  // the Gram matrix of the smaller side
    const Trans side = left ? Trans::no : Trans::yes;
    const auto wd = convert<D, B>(w);
    if constexpr (!std::is_same_v<scalar_t<B>, double>) {
      auto g = B::zeros(k, k);
      B::syrk(scalar_t<B>(1), w, side, scalar_t<B>(0), g);
      // Stops at a stall: the float estimate cannot read the tolerance (step 5).
      if (auto pass = phases<B>(g, b, r, /*until_stall=*/true)) {
        g = B::zeros(0, 0);  // k^2 floats the double steps below need no more
        rep.float_tried = true;
        rep.blocks = pass->blocks;
        auto checked = polish<B, D>(wd, left, *pass, r);
        rep.polish_steps = checked.steps;
        rep.defect = checked.defect;
        if (checked.basis) {
          rep.path = CholeskyKrylovReport::Path::float_pass;
          return triplets_from_subspace<B, D>(wd, checked.basis->x, checked.basis->damped, left);
        }
      }
      // Not positive definite in float, or no convergence: the same in double.
    }
    auto g = D::zeros(k, k);
    D::syrk(1.0, wd, side, 0.0, g);
    auto pass = phases<D>(g, b, r, /*until_stall=*/false);
    if (!pass) {
      log(detail::concat(name, ": the Gram matrix of a ", detail::shape_str(m, n),
                         " weight is not positive definite (rank deficient?); using the exact SVD"));
      return ExactSVD{}.bottom<B>(w, r);
    }
    rep.blocks += pass->blocks;
    rep.defect = pass->state.defect;
    if (pass->state.converged) {
      rep.path = CholeskyKrylovReport::Path::double_pass;
      const auto x = D::clone(D::cblock(pass->state.ritz_block, 0, 0, k, r));
      auto damped = D::clone(x);
      solve<D, D>(pass->factor, damped);
      return triplets_from_subspace<B, D>(wd, x, damped, left);
    }
    log(detail::concat(name, ": no convergence on a ", detail::shape_str(m, n), " weight at r = ", r,
                       " (estimated overlap ", 1.0 - pass->state.defect, " after ", pass->blocks, " blocks of ", b,
                       "); using the exact SVD"));
    return ExactSVD{}.bottom<B>(w, r);
  }

 private:
  template <Backend P>
  struct Krylov {
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
  struct Pass {
    Krylov<P> state;   // of the last phase
    matrix_t<P> factor;  // Cholesky factor of G - mu I, the last phase's
    double mu = 0;
    Index blocks = 0;  // all phases together
  };

  // The Cholesky factor, or nothing if the matrix is not (numerically) positive definite.
  template <Backend P>
  static std::optional<matrix_t<P>> factor(const matrix_t<P>& a) {
    try {
      return P::cholesky(a);
    } catch (const numerical_error&) {
      return std::nullopt;
    }
  }

  // y <- (L L^T)^-1 y, with L in precision P (y in D).
  template <Backend P, Backend D>
  static void solve(const matrix_t<P>& l, matrix_t<D>& y) {
    if constexpr (std::is_same_v<matrix_t<P>, matrix_t<D>>) {
      D::trsm(l, Trans::no, y);
      D::trsm(l, Trans::yes, y);
    } else {
      auto yp = convert<P, D>(y);
      solve<P, P>(l, yp);
      y = convert<D, P>(yp);
    }
  }

  // Steps 2-4 on g = G in precision P: the unshifted phase from a random block, then shifted
  // phases from the previous phase's Ritz vectors. g is shifted in place from phase to phase (a
  // copy would be k^2 more memory to touch). Nothing if G itself is not positive definite.
  // until_stall: a phase whose estimate stalls (step 5) ends the pass, for polish().
  template <Backend P>
  std::optional<Pass<P>> phases(matrix_t<P>& g, Index b, Index r, bool until_stall) const {
    const Index k = P::rows(g);
    auto l = factor<P>(g);
    if (!l) return std::nullopt;
    auto start = P::zeros(k, b);
    P::fill_normal(start, 0.0, 1.0, seed);
    const Index per_phase = std::min(phase_blocks, k / b);
    // Blocks a phase may add beyond per_phase: within the Krylov space's limit and max_blocks.
    const auto extra_for = [&](Index used_before) {
      return std::max<Index>(0, std::min({extra_blocks, k / b - per_phase, max_blocks - used_before - per_phase}));
    };
    Pass<P> pass{krylov<P>(g, *l, start, r, per_phase, extra_for(0), until_stall), std::move(*l), 0.0, 0};
    auto& state = pass.state;
    pass.blocks = state.blocks;
    double applied = 0;  // shift now on g's diagonal
    while (!state.converged && !state.stalled && pass.blocks + per_phase <= max_blocks) {
      // Ritz values are upper bounds: the smallest eigenvalue is below theta_0, and the wanted
      // ones spread over ~ theta_r - theta_0. If the shift is still above the smallest
      // eigenvalue, Cholesky fails and we step down by 4x the distance. (Adding ||r_0|| to every
      // step, the safe choice, measured 3x more phases on the test spectra.)
      const double theta0 = state.theta[0] + pass.mu;  // back to G's eigenvalues
      // After the unshifted phase theta_0 is still far off, by up to ||r_0|| (measured: stepping
      // by half the width there failed two Cholesky attempts out of three). The bound is loose,
      // though: on the LLM-like spectrum theta_0 was off by 0.19 ||r_0||, and a shift of
      // ||r_0|| / 4 landed 3 widths below the cluster, where the next phase converges instead of
      // only locating it; if that shift fails, the next is ||r_0||, the safe one.
      // After a shifted phase theta_0 is accurate and half the width is the right distance.
      const double half_width = 0.5 * (state.theta[std::size_t(r)] - state.theta[0]);
      const double step = pass.mu == 0 ? std::max(half_width, state.residual0) : half_width;
      const double first_margin = pass.mu == 0 && state.residual0 > half_width ? first_shift : 1.0;
      std::optional<matrix_t<P>> shifted_l;
      for (double margin = first_margin; margin <= 64 && !shifted_l; margin *= 4) {
        const double candidate = theta0 - margin * step;
        if (candidate <= 0) break;  // no better than no shift
        P::add_diagonal(g, scalar_t<P>(applied - candidate));  // g = G - candidate * I
        applied = candidate;
        shifted_l = factor<P>(g);
        if (shifted_l) pass.mu = candidate;
      }
      if (!shifted_l) break;
      pass.factor = std::move(*shifted_l);
      state = krylov<P>(g, pass.factor, state.ritz_block, r, per_phase, extra_for(pass.blocks), until_stall);
      pass.blocks += state.blocks;
    }
    return pass;
  }

  // Block Krylov on a^-1 = (l l^T)^-1 from `start` (k x b), `depth` blocks, with Rayleigh-Ritz
  // on `a` after each block and the overlap estimate of the header comment. Up to `extra` more
  // blocks while the estimate is below 1/2 and halves with every block: at that pace a few more
  // blocks converge, where stopping would cost a new factorisation (~4 blocks' time) and restart.
  template <Backend P>
  Krylov<P> krylov(const matrix_t<P>& a, const matrix_t<P>& l, const_view_t<P> start, Index r, Index depth,
                   Index extra, bool until_stall) const {
    using T = scalar_t<P>;
    const Index k = P::rows(a), b = P::cols(start), most = depth + extra, width = b * most;
    auto basis = P::zeros(k, width);    // Q_0 .. Q_j, orthonormal columns
    auto a_basis = P::zeros(k, width);  // A Q_0 .. A Q_j
    // T = Q^T A Q on the host, row-major width x width: each block adds its column of blocks
    // Q_i^T A Q_j (i <= j) and the mirrored row, so earlier products are not recomputed.
    std::vector<double> t_all(std::size_t(width * width));
    Krylov<P> out;
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
      if (out.defect <= tolerance) {
        out.converged = true;
        return out;
      }
      if (until_stall && out.defect < stall_defect && out.defect > 0.5 * previous_defect) {
        out.stalled = true;
        return out;
      }
    }
    return out;
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
                             Index r, Index residual_count) const {
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

  // Step 5: the float pass's b Ritz vectors, checked (and if need be improved) with G applied
  // exactly in double, G X = W (W^T X) or W^T (W X). Each step: Rayleigh-Ritz in the basis, the
  // estimate of step 3 from these residuals; if it misses the tolerance, the b residuals R,
  // preconditioned by the float pass's last factor M (~ G - mu I), join the basis for the next
  // step as two blocks, M^-1 R and M^-2 R. The basis keeps growing (a restart to the b Ritz
  // vectors measured 3 steps where 2 do), and the second block is nearly free: the products with
  // W are memory-bound, so one pass over W with 2b columns costs about what b columns do, and on
  // the LLM-like spectrum it makes one step do the work of two (4096^2: 9e-3 -> 5e-5 in one step).
  // The float pass's own residuals are no substitute for the exact R: as a first block they
  // moved the estimate from 9e-3 only to 6e-3 (float noise, not information).
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
  Polished<D> polish(const matrix_t<D>& wd, bool left, const Pass<P>& pass, Index r) const {
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
      if (ritz.defect <= tolerance) {
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
      if (step == polish_steps) return {std::nullopt, step, ritz.defect};
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

  // Adds the last block column of T = Q^T A Q, Q_i^T (A Q_j) for every block i <= j, to the host
  // matrix t_all (row-major, `width` wide), and its mirror as block row j: T is then exactly
  // symmetric, as backends' eigensolvers (which read different triangles) need. The diagonal
  // block, which rounding makes slightly asymmetric, is replaced by its symmetric part.
  template <Backend P>
  static void add_block_column(const_view_t<P> q, const_view_t<P> a_q_last, Index width, std::vector<double>& t_all) {
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
  static Triplets<B> triplets_from_subspace(const matrix_t<D>& wd, const matrix_t<D>& x, const matrix_t<D>& z,
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
};

}  // namespace milora
