// A tokenizer.json pattern: {"String": "..."} (a literal) or {"Regex": "..."} (PCRE2, regex.hpp).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "milora/core/errors.hpp"
#include "regex.hpp"

namespace milora::text {

class Pattern {
 public:
  Pattern(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    if (j.is_object() && j.size() == 1 && j.contains("String") && j["String"].is_string()) {
      literal_ = j["String"].get<std::string>();
      if (literal_.empty()) throw milora::format_error(concat(where, ": the pattern is an empty string"));
    } else if (j.is_object() && j.size() == 1 && j.contains("Regex") && j["Regex"].is_string()) {
      regex_ = std::make_shared<Regex>(j["Regex"].get<std::string>(), where);
    } else {
      throw milora::format_error(concat(where, ": the pattern ", j.dump(), " is neither {\"String\": ...} nor {\"Regex\": ...}"));
    }
  }
  /// fn(begin, end) for each match, left to right, without overlaps.
  template <class Fn>
  void for_each_match(std::string_view s, Fn&& fn) const {
    if (regex_) return regex_->for_each_match(s, fn);
    for (std::size_t at = s.find(literal_); at != std::string_view::npos; at = s.find(literal_, at + literal_.size()))
      fn(at, at + literal_.size());
  }
  /// `s` with every match replaced by `content`.
  std::string replace_all(std::string_view s, std::string_view content) const {
    std::string out;
    std::size_t last = 0;
    for_each_match(s, [&](std::size_t b, std::size_t e) {
      out.append(s.substr(last, b - last)).append(content);
      last = e;
    });
    return out.append(s.substr(last));
  }

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

}  // namespace milora::text
