// A model's chat template: the Jinja template in its tokenizer_config.json ("chat_template"),
// rendered as transformers' apply_chat_template renders it (messages, add_generation_prompt,
// bos_token, eos_token, raise_exception), so a new model's format works without code. The text is
// then encoded without the tokenizer's own special tokens (the template writes them), as
// apply_chat_template(tokenize=True) does.
//
// Also the plain Alpaca prompt (Stanford Alpaca's two formats, with and without an input), written
// as a template too, so it renders through the same engine.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "jinja_render.hpp"
#include "jinja_syntax.hpp"
#include "milora/io/json.hpp"

namespace milora::text {

class ChatTemplate {
 public:
  /// Reads `source` (Jinja); `where` names it in errors, with the line.
  ChatTemplate(std::string source, std::string where)
      : source_(std::move(source)), where_(std::move(where)), body_(jinja::Parser::parse(source_, where_)) {}

  /// The chat template of tokenizer_config.json in `dir` (a string, or a list of {name, template}
  /// where "default" is taken, as transformers does), with its bos_token and eos_token.
  static ChatTemplate from_model_folder(const std::filesystem::path& dir) {
    using milora::detail::concat;
    const auto path = dir / "tokenizer_config.json";
    if (!std::filesystem::exists(path))
      throw milora::io_error(concat("'", dir.string(), "' has no tokenizer_config.json, so no chat template"));
    const auto config = milora::io::read_json_file(path);
    const std::string where = concat("'", path.string(), "': chat_template");
    if (!config.contains("chat_template") || config["chat_template"].is_null())
      throw milora::format_error(concat("'", path.string(), "' has no chat_template (a base model? use --template alpaca or text data)"));
    std::string source;
    const auto& ct = config["chat_template"];
    if (ct.is_string()) {
      source = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& t : ct)
        if (t.is_object() && t.value("name", std::string()) == "default" && t.contains("template") && t["template"].is_string())
          source = t["template"].get<std::string>();
      if (source.empty()) throw milora::format_error(where + " is a list without a \"default\" template");
    } else {
      throw milora::format_error(where + " is neither a string nor a list of named templates");
    }
    ChatTemplate t(std::move(source), where);
    const auto token = [&](const char* key) {
      if (!config.contains(key) || config[key].is_null()) return std::string();
      const auto& v = config[key];
      return v.is_string() ? v.get<std::string>() : v.is_object() ? v.value("content", std::string()) : std::string();
    };
    t.bos_token_ = token("bos_token");
    t.eos_token_ = token("eos_token");
    return t;
  }

  /// Stanford Alpaca's prompt: one user message (the instruction, optionally followed by the input
  /// after a blank line in a second user message) and the assistant's answer.
  static ChatTemplate alpaca() {
    return ChatTemplate(
        "{%- set ns = namespace(instruction='', input='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' and loop.first -%}{%- set ns.instruction = message['content'] -%}"
        "{%- elif message['role'] == 'user' -%}{%- set ns.input = message['content'] -%}"
        "{%- elif message['role'] != 'assistant' -%}{{ raise_exception('the Alpaca prompt has user and assistant messages only') }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if ns.input -%}"
        "{{ 'Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\\n\\n### Instruction:\\n' + ns.instruction + "
        "'\\n\\n### Input:\\n' + ns.input + '\\n\\n### Response:\\n' }}"
        "{%- else -%}"
        "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n"
        "### Instruction:\\n' + ns.instruction + '\\n\\n### Response:\\n' }}"
        "{%- endif -%}"
        "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}{{ message['content'] }}{%- endif -%}{%- endfor -%}",
        "the Alpaca prompt");
  }

  /// The conversation `messages` (a JSON array of {"role", "content"}) as the template writes it.
  /// `extra` adds variables (tools, enable_thinking, ...).
  std::string render(const nlohmann::json& messages, bool add_generation_prompt, const nlohmann::json& extra = nlohmann::json::object()) const {
    jinja::Dict globals;
    globals.set("messages", jinja::from_json(messages));
    globals.set("add_generation_prompt", jinja::Value(add_generation_prompt));
    globals.set("bos_token", jinja::Value(bos_token_));
    globals.set("eos_token", jinja::Value(eos_token_));
    for (const auto& [k, v] : extra.items()) globals.set(k, jinja::from_json(v));
    return jinja::Renderer::render(body_, globals, where_);
  }

  const std::string& source() const { return source_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  void set_special_tokens(std::string bos, std::string eos) {
    bos_token_ = std::move(bos);
    eos_token_ = std::move(eos);
  }

 private:
  std::string source_, where_;
  jinja::Body body_;
  std::string bos_token_, eos_token_;
};

}  // namespace milora::text
