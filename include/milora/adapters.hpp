// The three adapters of the field, as aliases of the one Adapter template:
//
//   LoRA<B>            A ~ kaiming-uniform, B = 0, base unchanged          (Hu et al. 2022)
//   PiSSA<B, Solver>   from the r largest singular triplets, base = residual (Meng et al. 2024)
//   MiLoRA<B, Solver>  from the r smallest singular triplets, base = residual (Wang et al. 2025)
//
// Any other start is one template argument away: Adapter<B, YourPolicy> (docs/extending.md).
#pragma once

#include "milora/core/adapter.hpp"
#include "milora/init/gaussian.hpp"
#include "milora/init/kaiming.hpp"
#include "milora/init/minor.hpp"
#include "milora/init/principal.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <Backend B>
using LoRA = Adapter<B, KaimingUniform>;

template <Backend B, class Solver = ExactSVD>
using PiSSA = Adapter<B, PrincipalSVD<Solver>>;

template <Backend B, class Solver = ExactSVD>
using MiLoRA = Adapter<B, MinorSVD<Solver>>;

}  // namespace milora
