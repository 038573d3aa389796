// MinorLeftSingular, the MiCA start: B = the r minor LEFT singular vectors of W (those of its
// smallest singular values), frozen; A = 0, trained; the base is left as it is. Every update
// s*B*A then lies in span(U_minor), the output subspace pre-training used least, and only r x in
// numbers train per layer instead of LoRA's r x (in + out).
// Rüdiger & Raschka, "MiCA Learns More Knowledge Than LoRA and Full Fine-Tuning",
// arXiv:2604.01694 (2026).
//
// MiLoRA's closest relative: both start from W's minor singular subspace. MiLoRA moves it out of
// the base and trains both factors from there; MiCA keeps the base, fixes the left subspace and
// learns only the coefficients A. B*A = 0 at init, so the layer's output is unchanged, with no
// residual. A singular value of 0 is no obstacle here (only the vectors are used, and they are
// still orthonormal), unlike MiLoRA, whose factors carry sqrt(sigma).
#pragma once

#include <string_view>
#include <utility>

#include "milora/core/init_policy.hpp"
#include "milora/core/spectral_solver.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <class Solver = ExactSVD>
struct MinorLeftSingular {
  static constexpr std::string_view name = "mica";
  static constexpr bool residual = false;  ///< A = 0: the base is left as it is
  Solver solver{};

  template <Backend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    static_assert(MinorSolver<Solver, B>,
                  "MinorLeftSingular<Solver>: Solver must provide bottom<B>(w, r) (see MinorSolver)");
    auto triplets = solver.template bottom<B>(w, cfg.rank);
    return {B::zeros(cfg.rank, B::cols(w)), std::move(triplets.U), residual, /*frozen_B=*/true};
  }
};

}  // namespace milora
