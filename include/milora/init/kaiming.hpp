// KaimingUniform: plain LoRA's default start (PEFT init_lora_weights=True).
// A ~ kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0, base unchanged.
// (gain = sqrt(2 / (1 + a^2)) = sqrt(1/3); bound = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).)
// Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, Sec. 4.1.
#pragma once

#include <cmath>
#include <string_view>

#include "milora/core/init_policy.hpp"

namespace milora {

struct KaimingUniform {
  static constexpr std::string_view name = "lora";
  static constexpr bool residual = false;  ///< the base is left as it is

  template <ProductBackend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    const Index in = B::cols(w);
    AdapterFactors<B> f{B::zeros(cfg.rank, in), B::zeros(B::rows(w), cfg.rank), residual};
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    B::fill_uniform(f.A, -bound, bound, cfg.seed);
    return f;
  }
};

}  // namespace milora
