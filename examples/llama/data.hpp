// Token data for the reference LLaMA: a tokenizer (the model's tokenizer.json, its sentencepiece
// tokenizer.model, or bytes for a 256-entry vocabulary), token files (text, or pre-tokenised little-endian uint32 ids),
// and the loader that cuts them into batches the way llm.c's DataLoader does: contiguous windows of
// batch*seq+1 tokens, inputs = window[0, n), targets = window[1, n + 1), then the cursor advances by
// batch*seq and wraps around. The cursor is the whole state, so a checkpoint resumes exactly.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "batches.hpp"
#include "kernels.hpp"
#include "milora/core/errors.hpp"

#if defined(MILORA_HAS_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif
#if defined(MILORA_HAS_TOKENIZER_JSON)
#include "text/tokenizer_json.hpp"
#endif

namespace llama {

/// Text <-> token ids for one model.
class Tokenizer {
 public:
  /// The tokenizer of the model in `dir`, the first it has of: tokenizer.json (Hugging Face's
  /// format, as transformers' AutoTokenizer prefers it; its post-processor decides the BOS),
  /// tokenizer.model (sentencepiece, as LLaMA 1/2 ship it; a BOS token starts every encoded text, as
  /// transformers' LlamaTokenizer does), or, for a model with exactly 256 tokens, one token per byte.
  static Tokenizer for_model(const std::filesystem::path& dir, Index vocab_size) {
    using milora::detail::concat;
    Tokenizer t;
    const auto json_path = dir / "tokenizer.json";
    if (std::filesystem::exists(json_path)) {
#if defined(MILORA_HAS_TOKENIZER_JSON)
      t.json_ = milora::text::TokenizerJson::load(dir);
      if (t.json_->id_limit() > std::size_t(vocab_size))
        throw milora::format_error(concat("'", json_path.string(), "' has ids up to ", t.json_->id_limit() - 1,
                                          " but the model's vocab_size is ", vocab_size));
      return t;
#else
      throw milora::io_error(concat("'", json_path.string(), "' needs PCRE2 and ICU: install libpcre2-dev and libicu-dev and rebuild"));
#endif
    }
    const auto sp_path = dir / "tokenizer.model";
    if (std::filesystem::exists(sp_path)) {
#if defined(MILORA_HAS_SENTENCEPIECE)
      t.sp_ = std::make_shared<sentencepiece::SentencePieceProcessor>();
      const auto status = t.sp_->Load(sp_path.string());
      if (!status.ok()) throw milora::format_error(concat("'", sp_path.string(), "': ", status.ToString()));
      if (t.sp_->GetPieceSize() > vocab_size)
        throw milora::format_error(concat("'", sp_path.string(), "' has ", t.sp_->GetPieceSize(),
                                          " pieces but the model's vocab_size is ", vocab_size));
      return t;
#else
      throw milora::io_error(concat("'", sp_path.string(), "' needs sentencepiece: install libsentencepiece-dev and rebuild"));
#endif
    }
    if (vocab_size != 256)
      throw milora::io_error(concat("'", dir.string(), "' has no tokenizer.json or tokenizer.model and vocab_size is ", vocab_size,
                                    " (byte-level text needs 256); give pre-tokenised .u32 data instead"));
    return t;
  }

  bool bytes() const { return sp_ == nullptr && json_ == nullptr; }

  /// The ids of `text`; with `add_special_tokens`, the tokens the tokenizer puts around a text (the
  /// BOS of LLaMA's tokenizers; a chat template writes its own, so rendered chats are encoded
  /// without).
  std::vector<Token> encode(const std::string& text, bool add_special_tokens = true) const {
#if defined(MILORA_HAS_TOKENIZER_JSON)
    if (json_) return json_->encode(text, add_special_tokens);
#endif
#if defined(MILORA_HAS_SENTENCEPIECE)
    if (sp_) {
      std::vector<int> ids;
      const auto status = sp_->Encode(text, &ids);
      if (!status.ok()) throw milora::value_error("sentencepiece: " + status.ToString());
      if (add_special_tokens && sp_->bos_id() >= 0) ids.insert(ids.begin(), sp_->bos_id());
      return {ids.begin(), ids.end()};
    }
#endif
    std::vector<Token> out(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) out[i] = Token(static_cast<unsigned char>(text[i]));
    return out;
  }

  /// The end-of-sequence token (tokenizer_config.json's eos_token, sentencepiece's </s>); none for
  /// bytes.
  std::optional<Token> eos_id() const {
#if defined(MILORA_HAS_TOKENIZER_JSON)
    if (json_) return json_->eos_id();
#endif
#if defined(MILORA_HAS_SENTENCEPIECE)
    if (sp_ && sp_->eos_id() >= 0) return sp_->eos_id();
#endif
    return std::nullopt;
  }

  std::string decode(std::span<const Token> tokens) const {
#if defined(MILORA_HAS_TOKENIZER_JSON)
    if (json_) return json_->decode(tokens);
#endif
#if defined(MILORA_HAS_SENTENCEPIECE)
    if (sp_) {
      std::string text;
      const auto status = sp_->Decode(std::vector<int>(tokens.begin(), tokens.end()), &text);
      if (!status.ok()) throw milora::value_error("sentencepiece: " + status.ToString());
      return text;
    }
#endif
    std::string out(tokens.size(), '\0');
    for (std::size_t i = 0; i < tokens.size(); ++i) out[i] = static_cast<char>(tokens[i] & 0xff);
    return out;
  }

 private:
#if defined(MILORA_HAS_SENTENCEPIECE)
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
#else
  std::shared_ptr<void> sp_;
#endif
#if defined(MILORA_HAS_TOKENIZER_JSON)
  std::shared_ptr<const milora::text::TokenizerJson> json_;
#else
  std::shared_ptr<const void> json_;
#endif
};

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw milora::io_error("cannot open '" + path.string() + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Tokens of a data file's bytes: with `u32`, little-endian uint32 ids (what llm.c's data scripts
/// write), else text for `tokenizer`. Throws for no bytes, a .u32 size that is not a multiple of 4,
/// or a token >= vocab_size (naming its index and value); `where` starts every message.
inline std::vector<Token> parse_tokens(std::string_view bytes, bool u32, const Tokenizer& tokenizer, Index vocab_size,
                                       const std::string& where) {
  using milora::detail::concat;
  if (bytes.empty()) throw milora::value_error(concat(where, " is empty"));
  std::vector<Token> tokens;
  if (u32) {
    if (bytes.size() % 4 != 0)
      throw milora::format_error(concat(where, " has ", bytes.size(), " bytes, not a multiple of 4 (uint32 ids)"));
    tokens.resize(bytes.size() / 4);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      const auto* b = reinterpret_cast<const unsigned char*>(bytes.data()) + 4 * i;
      const std::uint32_t id = std::uint32_t(b[0]) | std::uint32_t(b[1]) << 8 | std::uint32_t(b[2]) << 16 | std::uint32_t(b[3]) << 24;
      if (id >= std::uint64_t(vocab_size))
        throw milora::value_error(concat(where, ": token ", i, " is ", id, ", not below vocab_size ", vocab_size));
      tokens[i] = Token(id);
    }
  } else {
    tokens = tokenizer.encode(std::string(bytes));
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] < 0 || tokens[i] >= vocab_size)
        throw milora::value_error(concat(where, ": token ", i, " is ", tokens[i], ", not below vocab_size ", vocab_size));
  }
  return tokens;
}

/// Tokens of a data file: `.u32` files are token ids, anything else is text (see parse_tokens).
inline std::vector<Token> load_tokens(const std::filesystem::path& path, const Tokenizer& tokenizer, Index vocab_size) {
  return parse_tokens(read_file(path), path.extension() == ".u32", tokenizer, vocab_size, "'" + path.string() + "'");
}

/// Contiguous batches of a token sequence, resumable from its cursor.
class DataLoader final : public Batches {
 public:
  DataLoader(std::vector<Token> tokens, Index batch, Index seq, std::string name = "data")
      : tokens_(std::move(tokens)), batch_(batch), seq_(seq) {
    using milora::detail::concat;
    if (batch <= 0 || seq <= 0) throw milora::value_error(concat("DataLoader: batch ", batch, " and seq ", seq, " must be positive"));
    if (Index(tokens_.size()) < batch * seq + 1)
      throw milora::value_error(concat(name, " has ", tokens_.size(), " tokens; a batch of ", batch, " x ", seq, " needs ",
                                       batch * seq + 1));
  }
  /// The next batch: inputs and targets, batch*seq each.
  void next(std::vector<Token>& inputs, std::vector<Token>& targets) override {
    const std::size_t n = std::size_t(batch_ * seq_);
    if (cursor_ + n + 1 > tokens_.size()) cursor_ = 0;
    inputs.assign(tokens_.begin() + std::ptrdiff_t(cursor_), tokens_.begin() + std::ptrdiff_t(cursor_ + n));
    targets.assign(tokens_.begin() + std::ptrdiff_t(cursor_ + 1), tokens_.begin() + std::ptrdiff_t(cursor_ + n + 1));
    cursor_ += n;
  }
  std::size_t cursor() const override { return cursor_; }
  void set_cursor(std::size_t c) override {
    if (c > tokens_.size()) throw milora::value_error(milora::detail::concat("DataLoader: cursor ", c, " past the data's end"));
    cursor_ = c;
  }
  Index batch() const override { return batch_; }
  Index seq() const override { return seq_; }
  const std::vector<Token>& tokens() const { return tokens_; }

 private:
  std::vector<Token> tokens_;
  Index batch_, seq_;
  std::size_t cursor_ = 0;
};

}  // namespace llama
