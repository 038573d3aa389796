// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): a vocabulary, ranked merges,
// and what to do with a character the vocabulary lacks (byte fallback, unk). Encodes one
// pre-tokenized word at a time, as Hugging Face's tokenizers do:
//   1. the word's characters become symbols (vocabulary ids; <0xXX> byte tokens with byte_fallback;
//      unk, fused with a previous unk when fuse_unk, otherwise);
//   2. the adjacent pair with the lowest merge rank is merged, leftmost first among equal ranks,
//      until no adjacent pair has a merge (a heap over (rank, position), so a long word, such as a
//      whole LLaMA-2 or Gemma text without pre-tokenizer, costs O(n log n), not O(n^2)).
// With ignore_merges (LLaMA-3), a word that is itself in the vocabulary is that one token.
#pragma once

#include <array>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/core/errors.hpp"
#include "token.hpp"
#include "utf8.hpp"

namespace milora::text {

/// Hash and equality that let an unordered_map<std::string, V> be searched with a string_view.
struct StringViewHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringViewHash, std::equal_to<>>;

class Bpe {
 public:
  /// Reads tokenizer.json's "model" object; `where` starts every message. Everything that would
  /// change the tokenization and is not implemented (dropout, subword prefixes and suffixes) is
  /// refused by name.
  Bpe(const nlohmann::json& model, const std::string& where) {
    using milora::detail::concat;
    const auto field = [&](const char* key) { return concat(where, ": model.", key); };
    if (!model.is_object()) throw milora::format_error(concat(where, ": \"model\" is not an object"));
    const std::string type = model.value("type", std::string("BPE"));
    if (type != "BPE")
      throw milora::format_error(concat(where, ": the model type '", type, "' is not supported (BPE only: WordPiece, Unigram and ",
                                        "WordLevel tokenizers are not implemented)"));
    if (model.contains("dropout") && !model["dropout"].is_null() && !(model["dropout"].is_number() && model["dropout"].get<double>() == 0))
      throw milora::format_error(concat(field("dropout"), " is ", model["dropout"].dump(), ": BPE dropout is not supported"));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (model.contains(key) && !model[key].is_null() && !(model[key].is_string() && model[key].get<std::string>().empty()))
        throw milora::format_error(concat(field(key), " is ", model[key].dump(), ": not supported"));
    byte_fallback_ = read_bool(model, "byte_fallback", field("byte_fallback"));
    fuse_unk_ = read_bool(model, "fuse_unk", field("fuse_unk"));
    ignore_merges_ = read_bool(model, "ignore_merges", field("ignore_merges"));

    if (!model.contains("vocab") || !model["vocab"].is_object()) throw milora::format_error(concat(field("vocab"), " is not an object"));
    const auto& vocab = model["vocab"];
    vocab_.reserve(vocab.size());
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() >= (1LL << 31) - 1)
        throw milora::format_error(concat(field("vocab"), ": the id of '", token, "' is ", id.dump(), ", not an integer in [0, 2^31 - 1)"));
      require_utf8(token, concat(field("vocab"), ": a token"));
      const auto tid = id.get<TokenId>();
      vocab_.emplace(token, tid);
      if (std::size_t(tid) >= tokens_.size()) tokens_.resize(std::size_t(tid) + 1);
      if (!tokens_[std::size_t(tid)].empty())
        throw milora::format_error(concat(field("vocab"), ": id ", tid, " is given to both '", tokens_[std::size_t(tid)], "' and '", token, "'"));
      tokens_[std::size_t(tid)] = token;
    }
    if (model.contains("unk_token") && !model["unk_token"].is_null()) {
      if (!model["unk_token"].is_string()) throw milora::format_error(concat(field("unk_token"), " is not a string"));
      const auto unk = model["unk_token"].get<std::string>();
      const auto it = vocab_.find(unk);
      if (it == vocab_.end()) throw milora::format_error(concat(field("unk_token"), " '", unk, "' is not in the vocabulary"));
      unk_ = it->second;
    }
    byte_ids_.fill(-1);
    if (byte_fallback_)
      for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        if (const auto it = vocab_.find(std::string_view(name)); it != vocab_.end()) byte_ids_[std::size_t(b)] = it->second;
      }

    if (!model.contains("merges") || !model["merges"].is_array()) throw milora::format_error(concat(field("merges"), " is not an array"));
    const auto& merges = model["merges"];
    merges_.reserve(merges.size());
    std::string joined;
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& m = merges[rank];
      std::string_view left, right;
      std::string storage;
      if (m.is_string()) {  // "left right", one space
        storage = m.get<std::string>();
        const auto space = storage.find(' ');
        if (space == std::string::npos || storage.find(' ', space + 1) != std::string::npos)
          throw milora::format_error(concat(field("merges"), "[", rank, "] '", storage, "' is not two tokens separated by one space"));
        left = std::string_view(storage).substr(0, space);
        right = std::string_view(storage).substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        left = m[0].get_ref<const std::string&>();
        right = m[1].get_ref<const std::string&>();
      } else {
        throw milora::format_error(concat(field("merges"), "[", rank, "] is ", m.dump(), ", not a pair of tokens"));
      }
      joined.assign(left).append(right);
      const auto a = vocab_.find(left), b = vocab_.find(right), ab = vocab_.find(std::string_view(joined));
      if (a == vocab_.end() || b == vocab_.end() || ab == vocab_.end())
        throw milora::format_error(concat(field("merges"), "[", rank, "] ('", left, "', '", right, "'): '",
                                          a == vocab_.end() ? left : b == vocab_.end() ? right : std::string_view(joined),
                                          "' is not in the vocabulary"));
      merges_.try_emplace(pair_key(a->second, b->second), Merge{TokenId(rank), ab->second});  // the first rank wins, as in HF
    }
  }

  /// Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<TokenId>& out) const {
    if (word.empty()) return;
    if (ignore_merges_)
      if (const auto it = vocab_.find(word); it != vocab_.end()) {
        out.push_back(it->second);
        return;
      }
    const bool cacheable = word.size() < kMaxCachedWordBytes;
    if (cacheable) {
      std::lock_guard lock(cache_mutex_);
      if (const auto it = cache_.find(word); it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = out.size();
    merge_word(word, out);
    if (cacheable) {
      std::lock_guard lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity) cache_.try_emplace(std::string(word), out.begin() + std::ptrdiff_t(first), out.end());
    }
  }

  std::optional<TokenId> id_of(std::string_view token) const {
    const auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<TokenId>(it->second);
  }
  /// The token of `id`, or an empty view for an id the vocabulary does not use.
  std::string_view token_of(TokenId id) const {
    return id >= 0 && std::size_t(id) < tokens_.size() ? std::string_view(tokens_[std::size_t(id)]) : std::string_view();
  }
  /// One past the largest id of the vocabulary.
  std::size_t id_limit() const { return tokens_.size(); }
  std::optional<TokenId> unk_id() const { return unk_; }

 private:
  struct Merge {
    TokenId rank, id;
  };
  struct Symbol {
    TokenId id;
    std::int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    TokenId rank;
    std::int32_t pos;
    TokenId id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  static constexpr std::size_t kMaxCachedWordBytes = 256;
  static constexpr std::size_t kCacheCapacity = 10000;

  static std::uint64_t pair_key(TokenId a, TokenId b) { return std::uint64_t(std::uint32_t(a)) << 32 | std::uint32_t(b); }
  static bool read_bool(const nlohmann::json& j, const char* key, const std::string& where) {
    if (!j.contains(key) || j[key].is_null()) return false;
    if (!j[key].is_boolean()) throw milora::format_error(where + " is not true or false");
    return j[key].get<bool>();
  }

  void merge_word(std::string_view word, std::vector<TokenId>& out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    bool last_unk = false;
    const auto push = [&](TokenId id) {
      const auto n = std::int32_t(symbols.size());
      symbols.push_back({id, n - 1, n + 1, true});
    };
    for (std::size_t i = 0; i < word.size();) {
      const std::size_t start = i;
      const int n = utf8_sequence_length(static_cast<unsigned char>(word[i]));
      i += std::size_t(n == 0 ? 1 : n);
      const std::string_view ch = word.substr(start, i - start);
      if (const auto it = vocab_.find(ch); it != vocab_.end()) {
        push(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback_) {
        bool all = true;
        for (const char c : ch) all = all && byte_ids_[static_cast<unsigned char>(c)] >= 0;
        if (all) {
          for (const char c : ch) push(byte_ids_[static_cast<unsigned char>(c)]);
          last_unk = false;
          continue;
        }
      }
      if (unk_) {  // without an unk token, the character is dropped, as in Hugging Face's BPE
        if (!(fuse_unk_ && last_unk)) push(*unk_);
        last_unk = true;
      }
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](std::int32_t pos) {
      const std::int32_t next = symbols[std::size_t(pos)].next;
      if (next < 0) return;
      const auto it = merges_.find(pair_key(symbols[std::size_t(pos)].id, symbols[std::size_t(next)].id));
      if (it != merges_.end()) heap.push({it->second.rank, pos, it->second.id});
    };
    for (std::int32_t p = 0; p + 1 < std::int32_t(symbols.size()); ++p) consider(p);
    while (!heap.empty()) {
      const Candidate top = heap.top();
      heap.pop();
      Symbol& left = symbols[std::size_t(top.pos)];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols[std::size_t(left.next)];
      const auto it = merges_.find(pair_key(left.id, right.id));
      if (it == merges_.end() || it->second.id != top.id) continue;  // a stale candidate: its pair has changed
      left.id = top.id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) symbols[std::size_t(right.next)].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    for (std::int32_t p = 0; p >= 0; p = symbols[std::size_t(p)].next) out.push_back(symbols[std::size_t(p)].id);
  }

  StringMap<TokenId> vocab_;
  std::vector<std::string> tokens_;  // by id
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::optional<TokenId> unk_;
  std::array<TokenId, 256> byte_ids_{};
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<TokenId>> cache_;
};

}  // namespace milora::text
