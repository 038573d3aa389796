// Parameter<B>: a named trainable tensor and its gradient, as the optimizer sees it.
#pragma once

#include <string_view>

#include "milora/core/backend.hpp"

namespace milora {

template <ProductBackend B>
struct Parameter {
  std::string_view name;  ///< PEFT's name: "lora_A" or "lora_B"
  view_t<B> value;
  view_t<B> grad;
};

}  // namespace milora
