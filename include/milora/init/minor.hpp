// MinorSVD (MiLoRA): start the adapter from the r SMALLEST singular triplets of W and freeze the
// residual, so fine-tuning moves in the subspace pre-training used least and the principal
// directions (the model's knowledge) are left alone. Wang et al., "MiLoRA: Harnessing Minor
// Singular Components for Parameter-Efficient LLM Finetuning", NAACL 2025, Sec. 3.
#pragma once

#include <string_view>
#include <utility>

#include "milora/core/init_policy.hpp"
#include "milora/init/from_triplets.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <class Solver = ExactSVD>
struct MinorSVD {
  static constexpr std::string_view name = "milora";
  static constexpr bool residual = true;  ///< the base becomes W - s*B*A
  Solver solver{};

  template <Backend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    static_assert(MinorSolver<Solver, B>,
                  "MinorSVD<Solver>: Solver must provide bottom<B>(w, r) (see MinorSolver)");
    auto triplets = solver.template bottom<B>(w, cfg.rank);
    require_nonzero_singular_values<B>(w, triplets, name);
    return factors_from_triplets<B>(std::move(triplets), cfg.scale());
  }
};

}  // namespace milora
