// AdapterConfig: the hyperparameters every adapter has, with PEFT's names and defaults.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "milora/core/errors.hpp"

namespace milora {

struct AdapterConfig {
  Index rank = 8;           ///< r (PEFT `r`, default 8)
  double alpha = 8;         ///< PEFT `lora_alpha` (default 8). MiLoRA's official code uses alpha = r.
  bool use_rslora = false;  ///< rsLoRA (Kalajdzievski 2023): scale alpha/sqrt(r) instead of alpha/r
  std::uint64_t seed = 0;   ///< stream for random init policies; give each layer its own

  /// s in y = W'x + s*B(Ax).
  [[nodiscard]] double scale() const {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(rank))
                      : alpha / static_cast<double>(rank);
  }

  /// Throws if this config cannot adapt an out x in weight.
  void validate(Index out_features, Index in_features) const {
    if (rank <= 0 || rank > std::min(out_features, in_features))
      throw shape_error(detail::concat("adapter rank ", rank, " is invalid for a ",
                                       detail::shape_str(out_features, in_features),
                                       " weight: need 1 <= rank <= min(out, in) = ",
                                       std::min(out_features, in_features)));
    if (!std::isfinite(alpha) || alpha <= 0)
      throw value_error(detail::concat("adapter alpha must be finite and > 0, got ", alpha));
  }
};

}  // namespace milora
