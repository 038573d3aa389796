// PrincipalSVD (PiSSA): start the adapter from the r LARGEST singular triplets of W and freeze the
// residual. Meng, Wang & Zhang, "PiSSA: Principal Singular Values and Singular Vectors Adaptation
// of Large Language Models", NeurIPS 2024, Sec. 3. PEFT: init_lora_weights="pissa".
#pragma once

#include <string_view>
#include <utility>

#include "milora/core/init_policy.hpp"
#include "milora/init/from_triplets.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <class Solver = ExactSVD>
struct PrincipalSVD {
  static constexpr std::string_view name = "pissa";
  static constexpr bool residual = true;  ///< the base becomes W - s*B*A
  Solver solver{};

  template <Backend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    static_assert(PrincipalSolver<Solver, B>,
                  "PrincipalSVD<Solver>: Solver must provide top<B>(w, r) (see PrincipalSolver)");
    auto triplets = solver.template top<B>(w, cfg.rank);
    require_nonzero_singular_values<B>(w, triplets, name);
    return factors_from_triplets<B>(std::move(triplets), cfg.scale());
  }
};

}  // namespace milora
