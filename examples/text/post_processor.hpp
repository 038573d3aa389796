// tokenizer.json's "post_processor": the special tokens an encoding of one text starts and ends
// with when add_special_tokens is on (LLaMA-2's and LLaMA-3.1's BOS through TemplateProcessing;
// ByteLevel adds none). Pairs of texts are not supported (fine-tuning data is one text at a time).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bpe.hpp"
#include "component.hpp"
#include "milora/core/errors.hpp"

namespace milora::text {

struct SpecialTokensAround {
  std::vector<TokenId> before, after;
};

/// Adds what `j` puts around a text to `around`; in a Sequence, each processor wraps the result of
/// the ones before it.
inline void read_post_processor(const nlohmann::json& j, const std::string& where, SpecialTokensAround& around) {
  using milora::detail::concat;
  if (j.is_null()) return;
  const std::string type = component_type(j);
  const std::string here = concat(where, " '", type, "'");
  if (type == "Sequence") {
    for (const auto& p : sequence_members(j, "processors", where)) read_post_processor(p, where, around);
  } else if (type == "ByteLevel") {
    // Changes offsets only, never ids.
  } else if (type == "TemplateProcessing") {
    if (!j.contains("single") || !j["single"].is_array()) throw milora::format_error(here + ": no \"single\" template");
    const auto& specials = j.value("special_tokens", nlohmann::json::object());
    bool seen_a = false;
    SpecialTokensAround mine;
    for (const auto& item : j["single"]) {
      if (item.contains("Sequence")) {
        if (item["Sequence"].value("id", std::string()) != "A" || seen_a)
          throw milora::format_error(concat(here, ": the single template ", j["single"].dump(), " is not [specials] A [specials]"));
        seen_a = true;
      } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
        const std::string name = item["SpecialToken"]["id"].get<std::string>();
        if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array())
          throw milora::format_error(concat(here, ": the special token '", name, "' has no \"ids\" in \"special_tokens\""));
        for (const auto& id : specials[name]["ids"]) {
          if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() >= (1LL << 31) - 1)
            throw milora::format_error(concat(here, ": the special token '", name, "' has the id ", id.dump()));
          (seen_a ? mine.after : mine.before).push_back(id.get<TokenId>());
        }
      } else {
        throw milora::format_error(concat(here, ": the template item ", item.dump(), " is neither a Sequence nor a SpecialToken"));
      }
    }
    if (!seen_a) throw milora::format_error(concat(here, ": the single template has no Sequence A"));
    around.before.insert(around.before.begin(), mine.before.begin(), mine.before.end());
    around.after.insert(around.after.end(), mine.after.begin(), mine.after.end());
  } else {
    refuse_component(where, "post-processor", j, "Sequence, ByteLevel, TemplateProcessing");
  }
}

}  // namespace milora::text
