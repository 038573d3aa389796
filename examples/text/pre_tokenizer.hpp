// tokenizer.json's "pre_tokenizer": splits a normalized span into the words BPE encodes one by one.
// Split (a pattern, with Hugging Face's five delimiter behaviours), ByteLevel (GPT-2's regex and
// byte alphabet) and Metaspace (SentencePiece's "▁"), alone or in a Sequence: what GPT-2, LLaMA-3,
// Qwen, Gemma and Mistral use. Any other type is refused by name.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "byte_level.hpp"
#include "component.hpp"
#include "milora/core/errors.hpp"
#include "pattern.hpp"

namespace milora::text {

class PreTokenizer {
 public:
  PreTokenizer() = default;  // none: the span is one word
  PreTokenizer(const nlohmann::json& j, const std::string& where) {
    if (!j.is_null()) add(j, where);
  }

  /// The words of `span`; `first` says whether it starts the text (Metaspace's "first" scheme).
  void split(std::string_view span, bool first, std::vector<std::string>& words) const {
    words.assign(1, std::string(span));
    std::vector<std::string> next;
    for (const auto& step : steps_) {
      next.clear();
      for (std::size_t w = 0; w < words.size(); ++w) apply(step, words[w], first && w == 0, next);
      words.swap(next);
    }
  }

 private:
  enum class Kind { Split, ByteLevel, Metaspace };
  enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
  enum class Prepend { Always, First, Never };
  struct Step {
    Kind kind;
    std::shared_ptr<Pattern> pattern;  // Split; ByteLevel with use_regex
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;     // ByteLevel
    std::string replacement;           // Metaspace
    Prepend prepend = Prepend::Always;
    bool metaspace_split = true;
  };

  static bool flag(const nlohmann::json& j, const char* key, bool fallback, const std::string& where) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean()) throw milora::format_error(milora::detail::concat(where, ": \"", key, "\" is not true or false"));
    return j[key].get<bool>();
  }

  void add(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    const std::string type = component_type(j);
    const std::string here = concat(where, " '", type, "'");
    if (type == "Sequence") {
      for (const auto& p : sequence_members(j, "pretokenizers", where)) add(p, where);
      return;
    }
    Step s{};
    if (type == "Split") {
      s.kind = Kind::Split;
      if (!j.contains("pattern")) throw milora::format_error(here + ": no \"pattern\"");
      s.pattern = std::make_shared<Pattern>(j["pattern"], here);
      const std::string b = j.value("behavior", std::string("Isolated"));
      if (b == "Removed") s.behavior = Behavior::Removed;
      else if (b == "Isolated") s.behavior = Behavior::Isolated;
      else if (b == "MergedWithPrevious") s.behavior = Behavior::MergedWithPrevious;
      else if (b == "MergedWithNext") s.behavior = Behavior::MergedWithNext;
      else if (b == "Contiguous") s.behavior = Behavior::Contiguous;
      else throw milora::format_error(concat(here, ": the behavior '", b, "' is not one of Removed, Isolated, MergedWithPrevious, ",
                                             "MergedWithNext, Contiguous"));
      s.invert = flag(j, "invert", false, here);
    } else if (type == "ByteLevel") {
      s.kind = Kind::ByteLevel;
      s.add_prefix_space = flag(j, "add_prefix_space", true, here);
      if (flag(j, "use_regex", true, here))  // GPT-2's pattern, as Hugging Face's ByteLevel has it built in
        s.pattern = std::make_shared<Pattern>(
            nlohmann::json{{"Regex", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"}}, here);
    } else if (type == "Metaspace") {
      s.kind = Kind::Metaspace;
      s.replacement = j.value("replacement", std::string("\u2581"));
      if (s.replacement.empty()) throw milora::format_error(here + ": the replacement is empty");
      std::string scheme = "always";
      if (j.contains("prepend_scheme")) scheme = j["prepend_scheme"].get<std::string>();
      else if (j.contains("add_prefix_space")) scheme = flag(j, "add_prefix_space", true, here) ? "always" : "never";
      if (scheme == "always") s.prepend = Prepend::Always;
      else if (scheme == "first") s.prepend = Prepend::First;
      else if (scheme == "never") s.prepend = Prepend::Never;
      else throw milora::format_error(concat(here, ": the prepend_scheme '", scheme, "' is not always, first or never"));
      s.metaspace_split = flag(j, "split", true, here);
    } else {
      refuse_component(where, "pre-tokenizer", j, "Sequence, Split, ByteLevel, Metaspace");
    }
    steps_.push_back(std::move(s));
  }

  // Splits `s` at the pattern's matches as Hugging Face's SplitDelimiterBehavior says.
  static void split_by(const Pattern& p, std::string_view s, Behavior behavior, bool invert, std::vector<std::string>& out) {
    struct Part {
      std::size_t b, e;
      bool match;
    };
    std::vector<Part> parts;
    std::size_t last = 0;
    p.for_each_match(s, [&](std::size_t b, std::size_t e) {
      if (b > last) parts.push_back({last, b, false});
      parts.push_back({b, e, true});
      last = e;
    });
    if (last < s.size()) parts.push_back({last, s.size(), false});
    if (invert)
      for (auto& part : parts) part.match = !part.match;
    std::vector<std::pair<std::size_t, std::size_t>> pieces;
    for (std::size_t k = 0; k < parts.size(); ++k) {
      const Part& part = parts[k];
      switch (behavior) {
        case Behavior::Removed:
          if (!part.match) pieces.emplace_back(part.b, part.e);
          break;
        case Behavior::Isolated:
          pieces.emplace_back(part.b, part.e);
          break;
        case Behavior::MergedWithPrevious:
          if (part.match && !pieces.empty() && k > 0 && !parts[k - 1].match) pieces.back().second = part.e;
          else pieces.emplace_back(part.b, part.e);
          break;
        case Behavior::MergedWithNext:
          if (!part.match && k > 0 && parts[k - 1].match) pieces.back().second = part.e;
          else pieces.emplace_back(part.b, part.e);
          break;
        case Behavior::Contiguous:
          if (part.match && k > 0 && parts[k - 1].match) pieces.back().second = part.e;
          else pieces.emplace_back(part.b, part.e);
          break;
      }
    }
    for (const auto& [b, e] : pieces)
      if (e > b) out.emplace_back(s.substr(b, e - b));
  }

  static void apply(const Step& step, const std::string& word, bool first, std::vector<std::string>& out) {
    switch (step.kind) {
      case Kind::Split:
        split_by(*step.pattern, word, step.behavior, step.invert, out);
        return;
      case Kind::ByteLevel: {
        std::string w = step.add_prefix_space && (word.empty() || word[0] != ' ') ? " " + word : word;
        const std::size_t from = out.size();
        if (step.pattern) split_by(*step.pattern, w, Behavior::Isolated, false, out);
        else out.push_back(std::move(w));
        const auto& alphabet = ByteLevelAlphabet::get();
        for (std::size_t k = from; k < out.size(); ++k) {
          std::string mapped;
          mapped.reserve(out[k].size() * 2);
          alphabet.append_encoded(out[k], mapped);
          out[k] = std::move(mapped);
        }
        return;
      }
      case Kind::Metaspace: {
        std::string w;
        w.reserve(word.size() + 8);
        for (const char c : word) {
          if (c == ' ') w += step.replacement;
          else w += c;
        }
        const bool starts = w.compare(0, step.replacement.size(), step.replacement) == 0;
        if (!starts && (step.prepend == Prepend::Always || (step.prepend == Prepend::First && first))) w = step.replacement + w;
        if (!step.metaspace_split) {
          out.push_back(std::move(w));
          return;
        }
        // Each replacement starts a new word (MergedWithNext).
        std::size_t start = 0;
        for (std::size_t at = w.find(step.replacement, 1); at != std::string::npos; at = w.find(step.replacement, at + step.replacement.size())) {
          if (at > start) out.push_back(w.substr(start, at - start));
          start = at;
        }
        if (start < w.size()) out.push_back(w.substr(start));
        return;
      }
    }
  }

  std::vector<Step> steps_;
};

}  // namespace milora::text
