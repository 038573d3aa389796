// tokenizer.json's "decoder": token strings back to text. A chain of steps over the list of
// tokens, as Hugging Face's decode_chain: ByteLevel (GPT-2's alphabet back to bytes), Replace,
// ByteFallback (<0xXX> tokens back to bytes), Fuse, Strip, Metaspace, and Sequence.
#pragma once

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "byte_level.hpp"
#include "component.hpp"
#include "milora/core/errors.hpp"
#include "pattern.hpp"
#include "utf8.hpp"

namespace milora::text {

class Decoder {
 public:
  Decoder() = default;  // none: tokens joined by spaces, as Hugging Face does without a decoder
  /// `added` holds the added tokens' contents: ByteLevel passes them through unchanged.
  Decoder(const nlohmann::json& j, const std::string& where, std::shared_ptr<const std::unordered_set<std::string>> added)
      : added_(std::move(added)) {
    if (!j.is_null()) add(j, where);
  }

  std::string operator()(std::vector<std::string> tokens) const {
    if (steps_.empty()) {
      std::string out;
      for (std::size_t i = 0; i < tokens.size(); ++i) out.append(i ? " " : "").append(tokens[i]);
      return out;
    }
    for (const auto& step : steps_) tokens = apply(step, std::move(tokens));
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

 private:
  enum class Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace };
  struct Step {
    Kind kind;
    std::shared_ptr<Pattern> pattern;
    std::string content;  // Replace: the replacement; Strip: the character; Metaspace: the replacement
    int start = 0, stop = 0;
    bool strip_first = true;  // Metaspace: prepend_scheme != never
  };

  void add(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    const std::string type = component_type(j);
    const std::string here = concat(where, " '", type, "'");
    if (type == "Sequence") {
      for (const auto& d : sequence_members(j, "decoders", where)) add(d, where);
      return;
    }
    Step s{};
    if (type == "ByteLevel") {
      s.kind = Kind::ByteLevel;
    } else if (type == "Replace") {
      s.kind = Kind::Replace;
      if (!j.contains("pattern") || !j.contains("content") || !j["content"].is_string())
        throw milora::format_error(here + ": needs \"pattern\" and a \"content\" string");
      s.pattern = std::make_shared<Pattern>(j["pattern"], here);
      s.content = j["content"].get<std::string>();
    } else if (type == "ByteFallback") {
      s.kind = Kind::ByteFallback;
    } else if (type == "Fuse") {
      s.kind = Kind::Fuse;
    } else if (type == "Strip") {
      s.kind = Kind::Strip;
      s.content = j.value("content", std::string(" "));
      if (find_invalid_utf8(s.content) != std::string::npos || s.content.empty())
        throw milora::format_error(here + ": \"content\" is not one character");
      std::size_t one = 0;
      next_code_point(s.content, one);
      if (one != s.content.size()) throw milora::format_error(here + ": \"content\" is not one character");
      s.start = j.value("start", 0);
      s.stop = j.value("stop", 0);
      if (s.start < 0 || s.stop < 0) throw milora::format_error(here + ": \"start\" and \"stop\" must be >= 0");
    } else if (type == "Metaspace") {
      s.kind = Kind::Metaspace;
      s.content = j.value("replacement", std::string("\u2581"));
      std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>() : "always";
      if (!j.contains("prepend_scheme") && j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean())
        scheme = j["add_prefix_space"].get<bool>() ? "always" : "never";
      s.strip_first = scheme != "never";
    } else {
      refuse_component(where, "decoder", j, "Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace");
    }
    steps_.push_back(std::move(s));
  }

  // A "<0xXX>" token's byte, or -1.
  static int byte_token(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  std::vector<std::string> apply(const Step& s, std::vector<std::string> tokens) const {
    std::vector<std::string> out;
    switch (s.kind) {
      case Kind::ByteLevel: {
        // Runs of ordinary tokens become bytes, then text (ill-formed UTF-8 as U+FFFD); added
        // tokens are kept as they are, as transformers.js does.
        const auto& alphabet = ByteLevelAlphabet::get();
        std::string bytes;
        const auto flush = [&] {
          if (!bytes.empty()) out.push_back(to_utf8_lossy(bytes));
          bytes.clear();
        };
        for (auto& t : tokens) {
          if (added_ && added_->count(t)) {
            flush();
            out.push_back(std::move(t));
            continue;
          }
          // A token with a character outside the alphabet goes out as its own UTF-8 (Hugging Face's rule).
          std::string mapped;
          bool all = true;
          for (std::size_t i = 0; i < t.size() && all;) {
            const int b = alphabet.decode(next_code_point(t, i));
            if (b < 0) all = false;
            else mapped += char(b);
          }
          bytes += all ? mapped : t;
        }
        flush();
        return out;
      }
      case Kind::Replace:
        for (auto& t : tokens) t = s.pattern->replace_all(t, s.content);
        return tokens;
      case Kind::ByteFallback: {
        // Consecutive byte tokens become their text; bytes that are not valid UTF-8 become one
        // U+FFFD each, as Hugging Face's ByteFallback decoder does.
        std::string bytes;
        std::size_t count = 0;
        const auto flush = [&] {
          if (count == 0) return;
          if (find_invalid_utf8(bytes) == std::string::npos) {
            out.push_back(bytes);
          } else {
            for (std::size_t k = 0; k < count; ++k) out.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
          count = 0;
        };
        for (auto& t : tokens) {
          const int b = byte_token(t);
          if (b >= 0) {
            bytes += char(b);
            ++count;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        return out;
      }
      case Kind::Fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        out.push_back(std::move(all));
        return out;
      }
      case Kind::Strip:
        for (auto& t : tokens) {
          std::size_t b = 0, e = t.size();
          for (int k = 0; k < s.start && t.compare(b, s.content.size(), s.content) == 0; ++k) b += s.content.size();
          for (int k = 0; k < s.stop && e >= b + s.content.size() && t.compare(e - s.content.size(), s.content.size(), s.content) == 0; ++k)
            e -= s.content.size();
          t = t.substr(b, e - b);
        }
        return tokens;
      case Kind::Metaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          std::string t;
          for (std::size_t at = 0; at < tokens[i].size();) {
            if (tokens[i].compare(at, s.content.size(), s.content) == 0) {
              t += ' ';
              at += s.content.size();
            } else {
              t += tokens[i][at++];
            }
          }
          if (i == 0 && s.strip_first && !t.empty() && t[0] == ' ') t.erase(0, 1);
          tokens[i] = std::move(t);
        }
        return tokens;
    }
    return tokens;
  }

  std::shared_ptr<const std::unordered_set<std::string>> added_;
  std::vector<Step> steps_;
};

}  // namespace milora::text
