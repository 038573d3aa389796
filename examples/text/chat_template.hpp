// A model's chat template: the Jinja template in its tokenizer_config.json ("chat_template"),
// rendered as transformers' apply_chat_template renders it (messages, add_generation_prompt,
// bos_token, eos_token, raise_exception), so a new model's format works without code. The text is
// then encoded without the tokenizer's own special tokens (the template writes them), as
// apply_chat_template(tokenize=True) does.
//
// Also the plain Alpaca prompt (Stanford Alpaca's two formats, with and without an input), written
// as a template too, so it renders through the same engine.
//
// This header declares; chat_template.cpp (compiled once into milora_text) holds the Jinja
// interpreter's use, so a program that renders templates does not compile the interpreter again.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "jinja_error.hpp"

namespace milora::text {

class ChatTemplate {
 public:
  /// Reads `source` (Jinja); `where` names it in errors, with the line.
  ChatTemplate(std::string source, std::string where);

  /// The chat template of tokenizer_config.json in `dir` (a string, or a list of {name, template}
  /// where "default" is taken, as transformers does), with its bos_token and eos_token.
  static ChatTemplate from_model_folder(const std::filesystem::path& dir);

  /// Stanford Alpaca's prompt: one user message (the instruction, optionally followed by the input
  /// after a blank line in a second user message) and the assistant's answer.
  static ChatTemplate alpaca();

  /// The conversation `messages` (a JSON array of {"role", "content"}) as the template writes it.
  /// `extra` adds variables (tools, enable_thinking, ...).
  std::string render(const nlohmann::json& messages, bool add_generation_prompt,
                     const nlohmann::json& extra = nlohmann::json::object()) const;

  const std::string& source() const { return source_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  void set_special_tokens(std::string bos, std::string eos) {
    bos_token_ = std::move(bos);
    eos_token_ = std::move(eos);
  }

 private:
  struct Parsed;  // the template's syntax tree (chat_template.cpp); shared, as it is never changed
  std::string source_, where_;
  std::shared_ptr<const Parsed> parsed_;
  std::string bos_token_, eos_token_;
};

}  // namespace milora::text
