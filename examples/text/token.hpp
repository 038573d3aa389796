// A token id, as tokenizer.json numbers tokens (and transformers' int32 inputs hold them).
#pragma once

#include <cstdint>

namespace milora::text {

using TokenId = std::int32_t;

}  // namespace milora::text
