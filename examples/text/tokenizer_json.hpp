// Hugging Face's tokenizer format: a model folder's tokenizer.json (and tokenizer_config.json beside
// it), encoded and decoded as transformers' fast tokenizers do, for the BPE tokenizers of the models
// people fine-tune: LLaMA-2 / Mistral (SentencePiece-style BPE with byte fallback), LLaMA-3.x, Qwen,
// GPT-2 (byte-level BPE) and Gemma.
//
// encode(text): added tokens are found in the raw text first; each remaining span is normalized,
// searched again for added tokens marked "normalized", pre-tokenized into words, and each word is
// BPE-encoded; the post-processor's special tokens (a BOS) go around the result. A component the
// file uses that is not implemented is refused when the file is loaded, naming it: a tokenizer that
// loads encodes as the file says.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "added_tokens.hpp"
#include "bpe.hpp"
#include "decoder.hpp"
#include "milora/core/errors.hpp"
#include "milora/io/json.hpp"
#include "normalizer.hpp"
#include "post_processor.hpp"
#include "pre_tokenizer.hpp"
#include "utf8.hpp"

namespace milora::text {

class TokenizerJson {
 public:
  /// Loads `dir`/tokenizer.json and, when present, `dir`/tokenizer_config.json.
  static std::shared_ptr<const TokenizerJson> load(const std::filesystem::path& dir) {
    const auto config_path = dir / "tokenizer_config.json";
    return std::make_shared<const TokenizerJson>(milora::io::read_json_file(dir / "tokenizer.json"),
                                                 std::filesystem::exists(config_path) ? milora::io::read_json_file(config_path)
                                                                                      : nlohmann::json::object(),
                                                 "'" + (dir / "tokenizer.json").string() + "'");
  }

  TokenizerJson(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& where) {
    using milora::detail::concat;
    if (!tokenizer.is_object()) throw milora::format_error(where + ": not a JSON object");
    for (const char* key : {"truncation", "padding"})
      if (tokenizer.contains(key) && !tokenizer[key].is_null())
        throw milora::format_error(concat(where, ": \"", key, "\" is set; milora cuts and pads sequences itself, so it must be null"));
    if (!tokenizer.contains("model")) throw milora::format_error(where + ": no \"model\"");
    bpe_ = std::make_unique<Bpe>(tokenizer["model"], where);

    const auto& added = tokenizer.value("added_tokens", nlohmann::json::array());
    if (!added.is_array()) throw milora::format_error(where + ": \"added_tokens\" is not an array");
    for (std::size_t i = 0; i < added.size(); ++i) {
      const auto& a = added[i];
      const std::string here = concat(where, ": added_tokens[", i, "]");
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") || !a["id"].is_number_integer() ||
          a["id"].get<long long>() < 0 || a["id"].get<long long>() >= (1LL << 31) - 1)
        throw milora::format_error(here + " needs a \"content\" string and an \"id\" in [0, 2^31 - 1)");
      AddedToken t;
      t.content = a["content"].get<std::string>();
      require_utf8(t.content, here);
      t.id = a["id"].get<TokenId>();
      const auto flag = [&](const char* key) {
        if (!a.contains(key)) return false;
        if (!a[key].is_boolean()) throw milora::format_error(concat(here, ": \"", key, "\" is not true or false"));
        return a[key].get<bool>();
      };
      t.special = flag("special");
      t.lstrip = flag("lstrip");
      t.rstrip = flag("rstrip");
      t.normalized = flag("normalized");
      if (flag("single_word"))
        throw milora::format_error(concat(here, " ('", t.content, "') has single_word: true, which is not supported"));
      added_.push_back(std::move(t));
    }
    normalizer_ = Normalizer(tokenizer.value("normalizer", nlohmann::json()), where + ": normalizer");
    pre_tokenizer_ = PreTokenizer(tokenizer.value("pre_tokenizer", nlohmann::json()), where + ": pre_tokenizer");
    auto contents = std::make_shared<std::unordered_set<std::string>>();
    std::vector<int> raw, normalized;
    for (std::size_t i = 0; i < added_.size(); ++i) {
      contents->insert(added_[i].content);
      // An added token marked "normalized" is looked for in the normalized text, in its normalized
      // form (as transformers.js does; Hugging Face's tokenizers normalize it too).
      if (added_[i].normalized && !normalizer_.empty()) {
        added_[i].content = normalizer_(added_[i].content);
        normalized.push_back(int(i));
      } else {
        raw.push_back(int(i));
      }
      if (added_[i].special) special_ids_.insert(added_[i].id);
      added_by_id_.try_emplace(added_[i].id, i);
      added_by_content_.try_emplace(added_[i].content, i);
    }
    raw_matcher_ = std::make_unique<AddedTokenMatcher>(added_, raw);
    normalized_matcher_ = std::make_unique<AddedTokenMatcher>(added_, normalized);
    decoder_ = Decoder(tokenizer.value("decoder", nlohmann::json()), where + ": decoder", contents);
    read_post_processor(tokenizer.value("post_processor", nlohmann::json()), where + ": post_processor", around_);

    id_limit_ = bpe_->id_limit();
    for (const auto& t : added_) id_limit_ = std::max(id_limit_, std::size_t(t.id) + 1);
    for (const auto id : around_.before) check_id(id, where + ": post_processor");
    for (const auto id : around_.after) check_id(id, where + ": post_processor");

    // tokenizer_config.json: which tokens are BOS and EOS, and whether decode cleans up spaces.
    const auto token_of_config = [&](const char* key) -> std::optional<TokenId> {
      if (!config.contains(key) || config[key].is_null()) return std::nullopt;
      const auto& v = config[key];
      const std::string content = v.is_string() ? v.get<std::string>()
                                  : v.is_object() && v.contains("content") && v["content"].is_string() ? v["content"].get<std::string>()
                                                                                                       : std::string();
      const auto id = token_to_id(content);
      if (!id) throw milora::format_error(concat(where, ": tokenizer_config.json's ", key, " ", v.dump(), " is not a token"));
      return id;
    };
    bos_ = token_of_config("bos_token");
    eos_ = token_of_config("eos_token");
    // transformers.js's default when the config does not say (transformers' own default moved to false
    // in 4.45; a model's config that matters says it explicitly).
    clean_up_spaces_ = config.value("clean_up_tokenization_spaces", true);
  }

  /// The ids of `text` (valid UTF-8), with the post-processor's special tokens when
  /// `add_special_tokens` (as transformers' encode and tokenizer(text) do).
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = true) const {
    require_utf8(text, "the text to encode");
    std::vector<TokenId> ids;
    if (add_special_tokens) ids = around_.before;
    std::vector<Span> sections, subsections;
    std::vector<std::string> words;
    raw_matcher_->split(text, sections);
    for (std::size_t k = 0; k < sections.size(); ++k) {
      const Span& sec = sections[k];
      if (sec.token >= 0) {
        ids.push_back(added_[std::size_t(sec.token)].id);
        continue;
      }
      const std::string normalized = normalizer_(std::string(text.substr(sec.begin, sec.end - sec.begin)));
      if (normalized.empty()) continue;
      normalized_matcher_->split(normalized, subsections);
      for (const Span& sub : subsections) {
        if (sub.token >= 0) {
          ids.push_back(added_[std::size_t(sub.token)].id);
          continue;
        }
        pre_tokenizer_.split(std::string_view(normalized).substr(sub.begin, sub.end - sub.begin), k == 0 && sub.begin == 0, words);
        for (const auto& w : words) bpe_->encode_word(w, ids);
      }
    }
    if (add_special_tokens) ids.insert(ids.end(), around_.after.begin(), around_.after.end());
    return ids;
  }

  struct DecodeOptions {
    bool skip_special_tokens = false;
    std::optional<bool> clean_up_tokenization_spaces{};  // default: tokenizer_config.json's
  };
  /// The text of `ids`; an id no token has is an error naming it and its position.
  std::string decode(std::span<const TokenId> ids, DecodeOptions options) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      check_id(ids[i], milora::detail::concat("decode: id ", i));
      if (options.skip_special_tokens && special_ids_.count(ids[i])) continue;
      tokens.emplace_back(id_to_token(ids[i]));
    }
    std::string out = decoder_(std::move(tokens));
    if (options.clean_up_tokenization_spaces.value_or(clean_up_spaces_)) out = clean_up_tokenization(out);
    return out;
  }
  std::string decode(std::span<const TokenId> ids) const { return decode(ids, DecodeOptions{}); }

  std::optional<TokenId> token_to_id(std::string_view token) const {
    if (const auto it = added_by_content_.find(token); it != added_by_content_.end()) return added_[it->second].id;
    return bpe_->id_of(token);
  }
  /// The token string of `id` (an added token's content first, as Hugging Face looks it up).
  std::string_view id_to_token(TokenId id) const {
    if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
    return bpe_->token_of(id);
  }
  /// One past the largest id any token has: the embedding rows a model needs at least.
  std::size_t id_limit() const { return id_limit_; }
  std::optional<TokenId> bos_id() const { return bos_; }
  std::optional<TokenId> eos_id() const { return eos_; }
  const std::vector<TokenId>& prefix_special_tokens() const { return around_.before; }
  const std::vector<TokenId>& suffix_special_tokens() const { return around_.after; }
  bool is_special(TokenId id) const { return special_ids_.count(id) != 0; }

  /// transformers' clean_up_tokenization: the spaces a word-level detokenizer leaves before
  /// punctuation and English contractions, removed.
  static std::string clean_up_tokenization(std::string_view s) {
    static constexpr std::pair<std::string_view, std::string_view> rules[] = {
        {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    std::string out(s);
    for (const auto& [from, to] : rules) {  // one rule after the other, each over the whole text, as transformers applies them
      std::string next;
      std::size_t last = 0;
      for (std::size_t at = out.find(from); at != std::string::npos; at = out.find(from, at + from.size())) {
        next.append(out, last, at - last).append(to);
        last = at + from.size();
      }
      out = next.append(out, last, std::string::npos);
    }
    return out;
  }

 private:
  void check_id(TokenId id, const std::string& where) const {
    if (id < 0 || std::size_t(id) >= id_limit_ || id_to_token(id).empty())
      throw milora::value_error(milora::detail::concat(where, " is ", id, ", which no token of this tokenizer has (ids below ", id_limit_, ")"));
  }

  std::unique_ptr<Bpe> bpe_;
  std::vector<AddedToken> added_;
  std::unique_ptr<AddedTokenMatcher> raw_matcher_, normalized_matcher_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  Decoder decoder_;
  SpecialTokensAround around_;
  std::unordered_set<TokenId> special_ids_;
  std::unordered_map<TokenId, std::size_t> added_by_id_;
  StringMap<std::size_t> added_by_content_;
  std::size_t id_limit_ = 0;
  std::optional<TokenId> bos_, eos_;
  bool clean_up_spaces_ = true;
};

}  // namespace milora::text
