// A user's own init policy, in the user's own file: nothing here is part of milora.
//
// "Spectrum-matched LoRA": plain LoRA's start (B = 0, base unchanged), but with A's rows drawn
// from W's minor right-singular directions instead of random ones, scaled to kaiming's norm. The
// adapter starts as a no-op like LoRA, yet its first gradient steps move in MiLoRA's subspace.
//
// What a policy needs (milora::InitPolicy, docs/extending.md):
//   static constexpr std::string_view name;
//   template <milora::Backend B>
//   milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig&) const;
#pragma once

#include <cmath>
#include <string_view>

#include "milora/core/init_policy.hpp"
#include "milora/spectral/exact.hpp"

namespace my {

template <class Solver = milora::ExactSVD>
struct MinorDirectionsZeroB {
  static constexpr std::string_view name = "minor-directions-zero-b";
  Solver solver{};

  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig& cfg) const {
    auto t = solver.template bottom<B>(w, cfg.rank);  // Vt: r x in, orthonormal rows
    // Kaiming-uniform rows have squared norm in * bound^2 / 3 = 1/3: match it.
    B::scale(t.Vt, static_cast<milora::scalar_t<B>>(1.0 / std::sqrt(3.0)));
    return {std::move(t.Vt), B::zeros(B::rows(w), cfg.rank), /*residual=*/false};
  }
};

}  // namespace my
