// Gaussian: PEFT's init_lora_weights="gaussian": A ~ N(0, (1/r)^2) (std = 1/r), B = 0, base unchanged.
#pragma once

#include <string_view>

#include "milora/core/init_policy.hpp"

namespace milora {

struct Gaussian {
  static constexpr std::string_view name = "gaussian";
  static constexpr bool residual = false;  ///< the base is left as it is

  template <ProductBackend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    AdapterFactors<B> f{B::zeros(cfg.rank, B::cols(w)), B::zeros(B::rows(w), cfg.rank), residual};
    B::fill_normal(f.A, 0.0, 1.0 / static_cast<double>(cfg.rank), cfg.seed);
    return f;
  }
};

}  // namespace milora
