// The three adapters of the field, as aliases of the one Adapter template:
//
//   LoRA<B>            A ~ kaiming-uniform, B = 0, base unchanged          (Hu et al. 2022)
//   PiSSA<B, Solver>   from the r largest singular triplets, base = residual (Meng et al. 2024)
//   MiLoRA<B, Solver>  from the r smallest singular triplets, base = residual (Wang et al. 2025)
//   OLoRA<B>           B = Q[:, :r], A = R[:r, :] of W = QR, base = residual  (Büyükakyüz 2024)
//   OrthogonalLoRA<B>  A, B random with orthogonal halves so B*A = 0, base unchanged (PEFT "orthogonal")
//
// Any other start is one template argument away: Adapter<B, YourPolicy> (docs/extending.md).
#pragma once

#include "milora/core/adapter.hpp"
#include "milora/init/gaussian.hpp"
#include "milora/init/kaiming.hpp"
#include "milora/init/minor.hpp"
#include "milora/init/olora.hpp"
#include "milora/init/orthogonal.hpp"
#include "milora/init/principal.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <Backend B>
using LoRA = Adapter<B, KaimingUniform>;

template <Backend B, class Solver = ExactSVD>
using PiSSA = Adapter<B, PrincipalSVD<Solver>>;

template <Backend B, class Solver = ExactSVD>
using MiLoRA = Adapter<B, MinorSVD<Solver>>;

template <Backend B>
using OLoRA = Adapter<B, LeadingQR>;

template <Backend B>
using OrthogonalLoRA = Adapter<B, OrthogonalInit>;

}  // namespace milora
