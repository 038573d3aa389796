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
//
// This header declares; tokenizer_json.cpp (compiled once into milora_text) holds the pipeline and
// includes its components' headers, so a program that only encodes and decodes does not compile
// PCRE2's, ICU's and the BPE's code again (docs/design.md, "Build time").
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "token.hpp"

namespace milora::text {

class TokenizerJson {
 public:
  /// Loads `dir`/tokenizer.json and, when present, `dir`/tokenizer_config.json.
  static std::shared_ptr<const TokenizerJson> load(const std::filesystem::path& dir);

  /// From the two files' JSON; `where` starts every message.
  TokenizerJson(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& where);
  ~TokenizerJson();
  TokenizerJson(TokenizerJson&&) noexcept;
  TokenizerJson& operator=(TokenizerJson&&) noexcept;

  /// The ids of `text` (valid UTF-8), with the post-processor's special tokens when
  /// `add_special_tokens` (as transformers' encode and tokenizer(text) do).
  std::vector<TokenId> encode(std::string_view text, bool add_special_tokens = true) const;

  struct DecodeOptions {
    bool skip_special_tokens = false;
    std::optional<bool> clean_up_tokenization_spaces{};  // default: tokenizer_config.json's
  };
  /// The text of `ids`; an id no token has is an error naming it and its position.
  std::string decode(std::span<const TokenId> ids, DecodeOptions options) const;
  std::string decode(std::span<const TokenId> ids) const { return decode(ids, DecodeOptions{}); }

  std::optional<TokenId> token_to_id(std::string_view token) const;
  /// The token string of `id` (an added token's content first, as Hugging Face looks it up).
  std::string_view id_to_token(TokenId id) const;
  /// One past the largest id any token has: the embedding rows a model needs at least.
  std::size_t id_limit() const { return id_limit_; }
  std::optional<TokenId> bos_id() const { return bos_; }
  std::optional<TokenId> eos_id() const { return eos_; }
  /// The special tokens the post-processor puts before and after a text.
  const std::vector<TokenId>& prefix_special_tokens() const { return before_; }
  const std::vector<TokenId>& suffix_special_tokens() const { return after_; }
  bool is_special(TokenId id) const;

  /// transformers' clean_up_tokenization: the spaces a word-level detokenizer leaves before
  /// punctuation and English contractions, removed.
  static std::string clean_up_tokenization(std::string_view s);

 private:
  struct Pipeline;  // the BPE, added tokens, normalizer, pre-tokenizer and decoder (tokenizer_json.cpp)
  void check_id(TokenId id, const std::string& where) const;

  std::unique_ptr<Pipeline> pipeline_;
  std::vector<TokenId> before_, after_;
  std::size_t id_limit_ = 0;
  std::optional<TokenId> bos_, eos_;
  bool clean_up_spaces_ = true;
};

}  // namespace milora::text
