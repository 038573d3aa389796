// CholeskyKrylovSVD: the r SMALLEST singular triplets of W without a full SVD, for MiLoRA (and MiCA,
// CorDA-KPM).
//
// Contract. bottom<B>(w, r) returns U (m x r), S (1 x r, descending) and Vt (r x n), as
// ExactSVD::bottom does, such that the spanned minor subspace has an estimated overlap of at
// least 1 - tolerance with the true one on both sides (the Davis-Kahan bound of step 3, computed
// in double, also for a float W). When no pass reaches it, or W is numerically rank deficient, the
// answer is ExactSVD's, announced by one milora::log line: never a silently wrong subspace. The
// same seed, W and BLAS thread count give the same triplets; matrices too small for a Krylov space
// to pay (2 (r + oversampling) > min(m, n)) go to ExactSVD directly. Needs the backend in double
// (B::rebind<double>, milora/core/precision.hpp).
//
// How (the smallest triplets are the largest of an inverse). With k = min(m, n) and G the k x k
// Gram matrix of the smaller side (W W^T or W^T W):
//   1. G = syrk(W), in W's precision.
//   2. Block Krylov on (G - mu I)^-1, two triangular solves with the Cholesky factor of G - mu I
//      per block; on the inverse the minor end is the dominant one, and a Krylov space converges
//      like a Chebyshev polynomial in the relative gap, where plain inverse iteration stalls.
//   3. Rayleigh-Ritz on G after every block: the r + 1 smallest Ritz pairs (theta_i, x_i) and
//      residuals r_i; x_i is within angle ||r_i|| / (theta_r - theta_i) of the minor subspace, so
//          overlap >= 1 - (1/r) sum_i min(1, (||r_i|| / (theta_r - theta_i))^2)
//      and a phase stops when that reaches 1 - tolerance.
//   4. A real weight's minor tail is clustered (relative gaps of 1e-4 at n = 4096), so the first
//      phase (mu = 0) only locates it; each further phase shifts to just below the smallest
//      eigenvalue estimated so far, where the wanted eigenvalues of (G - mu I)^-1 are separated by
//      factors, and restarts from the previous phase's Ritz vectors.
//      Steps 2-4: detail/shift_invert_krylov.hpp.
//   5. Float W: steps 1-4 in float until the float estimate stalls, then a check in double with G
//      applied exactly as W^T (W X), corrected by up to polish_steps Davidson steps preconditioned
//      by the last float factor; only this double estimate decides. A float G that is not positive
//      definite, or a float pass that does not converge, hands over to steps 1-4 in double.
//      Step 5: detail/davidson_polish.hpp.
//   6. The other side is orth(W^T (G - mu I)^-1 X), which damps X's error along principal
//      directions instead of amplifying it, and sigma comes from the SVD of the r x r core.
//      Step 6: detail/subspace_triplets.hpp.
// How fast, on which spectra, and what was tried and not kept: docs/benchmarks.md.
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
#include "milora/spectral/detail/davidson_polish.hpp"
#include "milora/spectral/detail/shift_invert_krylov.hpp"
#include "milora/spectral/detail/subspace_triplets.hpp"
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
      if (auto pass = detail::minor_krylov::phases<B>(settings(), g, b, r, /*until_stall=*/true)) {
        g = B::zeros(0, 0);  // k^2 floats the double steps below need no more
        rep.float_tried = true;
        rep.blocks = pass->blocks;
        auto checked = detail::minor_krylov::polish<B, D>(settings(), wd, left, *pass, r);
        rep.polish_steps = checked.steps;
        rep.defect = checked.defect;
        if (checked.basis) {
          rep.path = CholeskyKrylovReport::Path::float_pass;
          return detail::minor_krylov::triplets_from_subspace<B, D>(wd, checked.basis->x, checked.basis->damped, left);
        }
      }
      // Not positive definite in float, or no convergence: the same in double.
    }
    auto g = D::zeros(k, k);
    D::syrk(1.0, wd, side, 0.0, g);
    auto pass = detail::minor_krylov::phases<D>(settings(), g, b, r, /*until_stall=*/false);
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
      detail::minor_krylov::solve<D, D>(pass->factor, damped);
      return detail::minor_krylov::triplets_from_subspace<B, D>(wd, x, damped, left);
    }
    log(detail::concat(name, ": no convergence on a ", detail::shape_str(m, n), " weight at r = ", r,
                       " (estimated overlap ", 1.0 - pass->state.defect, " after ", pass->blocks, " blocks of ", b,
                       "); using the exact SVD"));
    return ExactSVD{}.bottom<B>(w, r);
  }

 private:
  detail::minor_krylov::KrylovSettings settings() const {
    return {phase_blocks, max_blocks, extra_blocks, first_shift, tolerance, stall_defect, polish_steps, seed};
  }
};

}  // namespace milora
