// Where the text tests find what prepare_references.sh fetched and wrote (the build folder's cache).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "milora/io/json.hpp"

namespace text_test {

inline std::filesystem::path references() { return MILORA_TEXT_REFERENCES; }
inline std::filesystem::path model_dir(const std::string& name) { return references() / "models" / name; }

/// reference.json: {"corpus": [texts], "models": {name: [{ids, plain, decoded, decoded_skip}]}}.
inline const nlohmann::json& reference() {
  static const nlohmann::json j = milora::io::read_json_file(references() / "reference.json");
  return j;
}

}  // namespace text_test
