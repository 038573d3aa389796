// The three adapters of the field, as aliases of the one Adapter template:
//
//   LoRA<B>            A ~ kaiming-uniform, B = 0, base unchanged          (Hu et al. 2022)
//   PiSSA<B, Solver>   from the r largest singular triplets, base = residual (Meng et al. 2024)
//   MiLoRA<B, Solver>  from the r smallest singular triplets, base = residual (Wang et al. 2025)
//   OLoRA<B>           B = Q[:, :r], A = R[:r, :] of W = QR, base = residual  (Büyükakyüz 2024)
//   OrthogonalLoRA<B>  A, B random with orthogonal halves so B*A = 0, base unchanged (PEFT "orthogonal")
//   MiCA<B, Solver>    B = the r minor left singular vectors, frozen; A = 0; base unchanged (Rüdiger & Raschka 2026)
//   CorDA<B, Mode>     from the SVD of W*C (C: input second moment over calibration data), smallest
//                      (KPM) or largest (IPM) r triplets, base = residual (Yang et al. 2024)
//   EVA<B>             A = the r leading principal components of the layer's inputs, B = 0 (Paischer et al. 2024)
//   LoRAGA<B, Solver>  A, B from the top 2r singular directions of the weight's gradient on a few
//                      batches, so the first step follows full fine-tuning's; base = residual (Wang et al. 2024)
//
// Any other start is one template argument away: Adapter<B, YourPolicy> (docs/extending.md).
// AnyAdapter<B> takes any of them at run time (AnyInit<B>, milora/init/any.hpp).
// The frozen weight's storage is the last argument: LoRA<B, Bf16Weights>, PiSSA<B, Solver,
// Bf16Weights>, MiLoRA<B, Solver, Bf16Weights>, Adapter<B, Policy, Bf16Weights> wrap a Bf16Linear
// (milora/core/weight_storage.hpp).
#pragma once

#include "milora/core/adapter.hpp"
#include "milora/init/any.hpp"
#include "milora/init/corda.hpp"
#include "milora/init/eva.hpp"
#include "milora/init/gaussian.hpp"
#include "milora/init/kaiming.hpp"
#include "milora/init/lora_ga.hpp"
#include "milora/init/mica.hpp"
#include "milora/init/minor.hpp"
#include "milora/init/olora.hpp"
#include "milora/init/orthogonal.hpp"
#include "milora/init/principal.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

template <ProductBackend B, class Weights = NativeWeights>
using LoRA = Adapter<B, KaimingUniform, Weights>;

template <Backend B, class Solver = ExactSVD, class Weights = NativeWeights>
using PiSSA = Adapter<B, PrincipalSVD<Solver>, Weights>;

template <Backend B, class Solver = ExactSVD, class Weights = NativeWeights>
using MiLoRA = Adapter<B, MinorSVD<Solver>, Weights>;

template <Backend B>
using OLoRA = Adapter<B, LeadingQR>;

template <Backend B, class Solver = ExactSVD>
using MiCA = Adapter<B, MinorLeftSingular<Solver>>;

template <Backend B>
using OrthogonalLoRA = Adapter<B, OrthogonalInit>;

// The data-driven starts: their policies carry the layer's calibration statistics
// (InputStatistics) or its gradient, so they are built per layer, e.g. by
// llama::Llama::add_adapters_with's init_for.
template <Backend B, CordaMode Mode = CordaMode::knowledge_preserved, class Solver = ExactSVD>
using CorDA = Adapter<B, ContextOrientedSVD<B, Mode, Solver>>;

template <Backend B>
using EVA = Adapter<B, ActivationPCA<B>>;

template <Backend B, class Solver = ExactSVD>
using LoRAGA = Adapter<B, GradientApproximation<B, Solver>>;

// Any of the above behind one type, the policy chosen at run time (milora/init/any.hpp): what a
// program that holds many adapters (a model, its trainer) compiles once instead of once per policy.
template <ProductBackend B, class Weights = NativeWeights>
using AnyAdapter = Adapter<B, AnyInit<B>, Weights>;

}  // namespace milora
