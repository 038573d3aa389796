// GradientApproximation, the LoRA-GA start: aim the adapter so that its first update is the best
// low-rank approximation of the full fine-tuning gradient. Wang, Yu & Li, "LoRA-GA: Low-Rank
// Adaptation with Gradient Approximation", NeurIPS 2024 (arXiv:2407.05000); PEFT's
// init_lora_weights="lora_ga" (direction "ArB2r", scale "stable").
//
// With G = dL/dW, the weight's gradient on a few batches of the fine-tuning data (the caller
// supplies it, e.g. llama::Llama::collect_weight_gradients), and G = U S Vᵀ:
//
//   A = c V[:, :r]ᵀ,   B = c U[:, r:2r],   c = out^(1/4) / sqrt(gamma),   W' = W - s*B*A
//
// Why: one gradient step on A and B changes s*B*A by -lr * s^2 * (G AᵀA + B BᵀG), and with these
// factors G AᵀA + B BᵀG = c^2 (U_{:r} S_{:r} V_{:r}ᵀ + U_{r:2r} S_{r:2r} V_{r:2r}ᵀ) = c^2 G_2r, the
// best rank-2r approximation of G: the adapter's first step points where full fine-tuning's does
// (tests/test_calibrated_init.cpp checks that identity against a Jacobi SVD of G). gamma sets the
// output scale (the paper's "stable" scaling, so that the adapter's output stays O(1) in the
// width); it is a hyperparameter, 16 as in the paper and PEFT. B ≠ 0, so the start is residual:
// the adapter subtracts s*B*A from W, and the layer's output is unchanged at init.
//
// Signs: each row of A and each column of B gets its largest-magnitude entry positive (they come
// from different singular pairs, and G AᵀA and B BᵀG do not depend on either sign), so every
// backend and solver gives the same factors. The r "A" directions and r "B" directions come from
// the top 2r triplets of G, computed by Solver::top (ExactSVD; PEFT uses a randomized SVD with
// q = 4r, niter = 4: RandomizedSVD).
//
// What the policy needs is in its type: this layer's gradient. retained() drops it, so that the
// gradients' memory goes once the adapters exist.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <memory>
#include <string_view>
#include <vector>

#include "milora/core/init_policy.hpp"
#include "milora/core/spectral_solver.hpp"
#include "milora/init/calibrated.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <Backend BE, class Solver = ExactSVD>
struct GradientApproximation {
  static constexpr std::string_view name = "lora-ga";
  static constexpr bool residual = true;  ///< the base becomes W - s*B*A
  using calibration = WeightGradient<BE>;  ///< CalibratedInit (milora/init/calibrated.hpp)
  std::shared_ptr<const matrix_t<BE>> gradient;  ///< dL/dW of this layer (out x in), averaged over the batches
  double stable_gamma = 16;                      ///< the "stable" output scale's gamma
  Solver solver{};

  /// This policy for one layer: its weight's gradient.
  GradientApproximation with_calibration(std::shared_ptr<const calibration> grad) const {
    return {std::move(grad), stable_gamma, solver};
  }

  template <Backend B>
    requires std::same_as<B, BE>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    static_assert(PrincipalSolver<Solver, B>, "GradientApproximation<B, Solver>: Solver must provide top<B>(w, r)");
    using T = scalar_t<B>;
    if (!gradient) throw state_error("lora-ga init: no gradient (a retained() copy cannot initialise)");
    const Index m = B::rows(w), n = B::cols(w), r = cfg.rank;
    if (B::rows(*gradient) != m || B::cols(*gradient) != n)
      throw shape_error(detail::concat("lora-ga init: the gradient is ", detail::shape_str(B::rows(*gradient), B::cols(*gradient)),
                                       ", W is ", detail::shape_str(m, n)));
    if (!(stable_gamma > 0) || !std::isfinite(stable_gamma))
      throw value_error(detail::concat("lora-ga init: stable_gamma must be positive and finite, got ", stable_gamma));
    if (2 * r > std::min(m, n))
      throw value_error(detail::concat("lora-ga init: needs 2r = ", 2 * r, " singular directions of the gradient, W ",
                                       detail::shape_str(m, n), " has ", std::min(m, n), "; use a smaller rank"));
    if (!B::all_finite(*gradient)) throw value_error("lora-ga init: the gradient holds NaN or Inf");
    if (B::squared_norm(*gradient) == 0)
      throw value_error("lora-ga init: the gradient is all zero (does the loss depend on this layer?): no direction to start from");

    const Triplets<B> t = solver.template top<B>(*gradient, 2 * r);
    const double c = std::pow(double(m), 0.25) / std::sqrt(stable_gamma);
    matrix_t<B> a = B::clone(B::cblock(t.Vt, 0, 0, r, n));  // V[:, :r]ᵀ
    matrix_t<B> b = B::clone(B::cblock(t.U, 0, r, m, r));   // U[:, r:2r]
    // c times the sign that makes the largest-magnitude entry positive: per row of A, per column of B.
    auto signed_scale = [c](const std::vector<T>& v, Index count, Index len, bool rows) {
      std::vector<T> d(static_cast<std::size_t>(count));
      for (Index i = 0; i < count; ++i) {
        auto at = [&](Index j) { return v[std::size_t(rows ? i * len + j : j * count + i)]; };
        Index arg = 0;
        for (Index j = 1; j < len; ++j)
          if (std::abs(at(j)) > std::abs(at(arg))) arg = j;
        d[std::size_t(i)] = static_cast<T>(at(arg) < T(0) ? -c : c);
      }
      return d;
    };
    B::scale_rows(a, B::from_host(1, r, signed_scale(B::to_host(a), r, n, true)));
    B::scale_columns(b, B::from_host(1, r, signed_scale(B::to_host(b), r, m, false)));
    return {std::move(a), std::move(b), residual};
  }

  /// The copy an adapter keeps: without the gradient.
  GradientApproximation retained() const { return {nullptr, stable_gamma, solver}; }
};

}  // namespace milora
