// InitPolicy: how an adapter's A and B start, and whether the base weight gives up the part they
// represent. A policy is a small copyable struct (it may carry parameters, e.g. a spectral solver):
//
//   static constexpr std::string_view name;           // for logs and tables: "lora", "pissa", ...
//   template <Backend B>
//   AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const;
//
// `initialize` only reads w (out x in). It returns A (r x in), B (out x r) and `residual`: when
// true, the adapter replaces W by W' = W - s*B*A itself, from the factors actually returned, so the
// layer's output at initialisation is unchanged by construction (../docs/math.md, "contract").
// `frozen_B`: the policy fixes B (a subspace) and only A is trained; the adapter then lists A alone
// as a parameter and computes no gradient for B.
// Policies never write to W; the adapter checks the factors' shapes and values before touching it.
// Optional `static constexpr bool residual`: whether the policy's factors take s*B*A out of the
// base, known without running it (the registry of named methods lists it, milora/init/registry.hpp);
// the adapter then checks every returned `residual` flag against it.
// Optional `retained()`: a copy of the policy for the adapter to keep (its init() accessor) when the
// policy itself holds data it only needs at initialisation (CorDA's and EVA's calibration
// statistics); without it, the adapter keeps a plain copy.
#pragma once

#include <concepts>
#include <string_view>

#include "milora/core/backend.hpp"
#include "milora/core/config.hpp"

namespace milora {

template <ProductBackend BE>  // not "B": that is the up-projection's name
struct AdapterFactors {
  matrix_t<BE> A;         ///< r x in
  matrix_t<BE> B;         ///< out x r
  bool residual = false;  ///< true: the base becomes W - s*B*A (PiSSA, MiLoRA)
  bool frozen_B = false;  ///< true: B stays as initialised and only A trains (MiCA)
};

template <class I, class B>
concept InitPolicy =
    ProductBackend<B> && std::copy_constructible<I> &&
    requires(const I& init, const_view_t<B> w, const AdapterConfig& cfg) {
      { I::name } -> std::convertible_to<std::string_view>;
      { init.template initialize<B>(w, cfg) } -> std::same_as<AdapterFactors<B>>;
    };

}  // namespace milora
