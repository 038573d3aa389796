// ChatTemplate (chat_template.hpp): reading a model's template and rendering it with the Jinja
// subset interpreter (jinja_syntax.hpp, jinja_render.hpp).
#include "chat_template.hpp"

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "jinja_render.hpp"
#include "jinja_syntax.hpp"
#include "milora/io/json.hpp"

namespace milora::text {

struct ChatTemplate::Parsed {
  jinja::Body body;
};

ChatTemplate::ChatTemplate(std::string source, std::string where)
    : source_(std::move(source)), where_(std::move(where)),
      parsed_(std::make_shared<const Parsed>(Parsed{jinja::Parser::parse(source_, where_)})) {}

ChatTemplate ChatTemplate::from_model_folder(const std::filesystem::path& dir) {
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

ChatTemplate ChatTemplate::alpaca() {
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

std::string ChatTemplate::render(const nlohmann::json& messages, bool add_generation_prompt, const nlohmann::json& extra) const {
  jinja::Dict globals;
  globals.set("messages", jinja::from_json(messages));
  globals.set("add_generation_prompt", jinja::Value(add_generation_prompt));
  globals.set("bos_token", jinja::Value(bos_token_));
  globals.set("eos_token", jinja::Value(eos_token_));
  for (const auto& [k, v] : extra.items()) globals.set(k, jinja::from_json(v));
  return jinja::Renderer::render(parsed_->body, globals, where_);
}

}  // namespace milora::text
