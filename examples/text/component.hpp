// What every tokenizer.json component (normalizer, pre-tokenizer, post-processor, decoder) shares:
// an object with a "type", a Sequence of members, and the refusal of a type not implemented.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "milora/core/errors.hpp"

namespace milora::text {

/// The "type" of a component object, or "" when it has none.
inline std::string component_type(const nlohmann::json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

/// A Sequence's members: j[key], which must be an array.
inline const nlohmann::json& sequence_members(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_array())
    throw milora::format_error(milora::detail::concat(where, " 'Sequence': no \"", key, "\" array"));
  return j[key];
}

/// The error for a component the file uses that is not implemented: named, with what is.
[[noreturn]] inline void refuse_component(const std::string& where, const char* kind, const nlohmann::json& j, const char* supported) {
  const std::string type = component_type(j);
  throw milora::format_error(milora::detail::concat(where, ": the ", kind, " ", type.empty() ? j.dump() : "'" + type + "'",
                                                    " is not supported (supported: ", supported, ")"));
}

}  // namespace milora::text
