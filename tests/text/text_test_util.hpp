// Where the text tests find what prepare_references.sh fetched and wrote (the build folder's cache).
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "milora/io/json.hpp"
#include "text/tokenizer_json.hpp"

namespace text_test {

inline std::filesystem::path references() { return MILORA_TEXT_REFERENCES; }
inline std::filesystem::path model_dir(const std::string& name) { return references() / "models" / name; }

/// reference.json: {"corpus": [texts], "models": {name: [{ids, plain, decoded, decoded_skip}]}}.
inline const nlohmann::json& reference() {
  static const nlohmann::json j = milora::io::read_json_file(references() / "reference.json");
  return j;
}

/// The tokenizer of a fetched model, loaded once per test program (Gemma-3's file is 33 MB).
inline std::shared_ptr<const milora::text::TokenizerJson> tokenizer(const std::string& name) {
  static std::map<std::string, std::shared_ptr<const milora::text::TokenizerJson>> loaded;
  auto& t = loaded[name];
  if (!t) t = milora::text::TokenizerJson::load(model_dir(name));
  return t;
}

}  // namespace text_test
