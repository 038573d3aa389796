// tokenizer.json's "normalizer": what is done to each plain span of a text before it is split
// (added tokens are matched before, on the raw text). The normalizers of LLaMA-2 (Prepend "▁",
// Replace " " -> "▁"), Gemma (Replace) and Qwen (NFC), and the other Unicode forms; any other type
// is refused by name rather than skipped.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "component.hpp"
#include "milora/core/errors.hpp"
#include "pattern.hpp"
#include "unicode_normalization.hpp"

namespace milora::text {

class Normalizer {
 public:
  Normalizer() = default;  // none: the text as it is
  Normalizer(const nlohmann::json& j, const std::string& where) {
    if (!j.is_null()) add(j, where);
  }
  bool empty() const { return steps_.empty(); }
  std::string operator()(std::string s) const {
    for (const auto& step : steps_) s = step(std::move(s));
    return s;
  }

 private:
  void add(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    const std::string type = component_type(j);
    const std::string here = concat(where, " '", type, "'");
    if (type == "Sequence") {
      for (const auto& n : sequence_members(j, "normalizers", where)) add(n, where);
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      const NormalForm form = type == "NFC" ? NormalForm::NFC : type == "NFD" ? NormalForm::NFD : type == "NFKC" ? NormalForm::NFKC : NormalForm::NFKD;
      icu_normalizer(form);  // fails now, not at the first text, if ICU lacks its data
      steps_.emplace_back([form](std::string s) { return normalize_unicode(s, form); });
    } else if (type == "Prepend") {
      if (!j.contains("prepend") || !j["prepend"].is_string()) throw milora::format_error(here + ": no \"prepend\" string");
      steps_.emplace_back([p = j["prepend"].get<std::string>()](std::string s) { return s.empty() ? s : p + s; });
    } else if (type == "Replace") {
      if (!j.contains("pattern") || !j.contains("content") || !j["content"].is_string())
        throw milora::format_error(here + ": needs \"pattern\" and a \"content\" string");
      steps_.emplace_back([pattern = Pattern(j["pattern"], here), content = j["content"].get<std::string>()](const std::string& s) {
        return pattern.replace_all(s, content);
      });
    } else {
      refuse_component(where, "normalizer", j, "Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace");
    }
  }
  std::vector<std::function<std::string(std::string)>> steps_;
};

}  // namespace milora::text
