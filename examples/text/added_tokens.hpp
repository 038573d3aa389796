// Added tokens (tokenizer.json's "added_tokens": special tokens such as <|eot_id|>, and extra
// vocabulary) are found in the text before anything else runs, so "<|im_start|>" in a text is one
// token and never BPE pieces. Matching is leftmost-longest over a byte trie, as Hugging Face's
// Aho-Corasick search and transformers.js's DictionarySplitter do.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bpe.hpp"
#include "utf8.hpp"

namespace milora::text {

struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = false;     // skipped by decode(skip_special_tokens)
  bool lstrip = false;      // swallows the whitespace before it
  bool rstrip = false;      // swallows the whitespace after it
  bool normalized = false;  // matched in the normalized text instead of the raw one
};

/// A piece of a text: [begin, end) of it, and the index of the added token it is (-1: plain text).
struct Span {
  std::size_t begin, end;
  int token;
};

/// Unicode's White_Space code points: what lstrip / rstrip swallow.
inline bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

class AddedTokenMatcher {
 public:
  /// Matches the tokens of `tokens` whose indices are in `which`.
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const std::vector<int>& which) : tokens_(&tokens) {
    first_.fill(false);
    nodes_.push_back(-1);
    for (const int t : which) {
      const std::string& s = tokens[std::size_t(t)].content;
      if (s.empty()) continue;
      std::int32_t node = 0;
      for (const char c : s) {
        const auto key = edge(node, c);
        auto it = edges_.find(key);
        if (it == edges_.end()) {
          it = edges_.emplace(key, std::int32_t(nodes_.size())).first;
          nodes_.push_back(-1);
        }
        node = it->second;
      }
      if (nodes_[std::size_t(node)] < 0) nodes_[std::size_t(node)] = t;  // the first of equal contents wins
      first_[static_cast<unsigned char>(s[0])] = true;
    }
  }

  bool empty() const { return nodes_.size() == 1; }

  /// Splits `s` into plain and added-token spans, in order, none empty; lstrip / rstrip tokens
  /// take the whitespace next to them out of the plain spans.
  void split(std::string_view s, std::vector<Span>& out) const {
    out.clear();
    std::size_t plain = 0;
    for (std::size_t i = 0; i < s.size();) {
      int found = -1;
      std::size_t found_end = 0;
      if (first_[static_cast<unsigned char>(s[i])]) {
        std::int32_t node = 0;
        for (std::size_t j = i; j < s.size(); ++j) {
          const auto it = edges_.find(edge(node, s[j]));
          if (it == edges_.end()) break;
          node = it->second;
          if (nodes_[std::size_t(node)] >= 0) {
            found = nodes_[std::size_t(node)];
            found_end = j + 1;
          }
        }
      }
      if (found < 0) {
        ++i;
        continue;
      }
      if (i > plain) out.push_back({plain, i, -1});
      out.push_back({i, found_end, found});
      i = plain = found_end;
    }
    if (plain < s.size()) out.push_back({plain, s.size(), -1});
    // lstrip / rstrip, as transformers.js applies them: the neighbouring plain span loses its
    // whitespace on that side (and is dropped when nothing is left).
    for (std::size_t k = 0; k < out.size(); ++k) {
      if (out[k].token < 0) continue;
      const AddedToken& t = (*tokens_)[std::size_t(out[k].token)];
      if (t.lstrip && k > 0 && out[k - 1].token < 0) out[k - 1].end = trim_end(s, out[k - 1].begin, out[k - 1].end);
      if (t.rstrip && k + 1 < out.size() && out[k + 1].token < 0) out[k + 1].begin = trim_begin(s, out[k + 1].begin, out[k + 1].end);
    }
    std::erase_if(out, [](const Span& sp) { return sp.begin >= sp.end; });
  }

 private:
  static std::uint64_t edge(std::int32_t node, char c) { return std::uint64_t(std::uint32_t(node)) << 8 | static_cast<unsigned char>(c); }
  static std::size_t trim_begin(std::string_view s, std::size_t b, std::size_t e) {
    while (b < e) {
      std::size_t n = b;
      if (!is_white_space(next_code_point(s, n))) break;
      b = n;
    }
    return b;
  }
  static std::size_t trim_end(std::string_view s, std::size_t b, std::size_t e) {
    while (e > b) {
      std::size_t start = e - 1;
      while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
      std::size_t n = start;
      if (!is_white_space(next_code_point(s, n))) break;
      e = start;
    }
    return e;
  }

  const std::vector<AddedToken>* tokens_;
  std::array<bool, 256> first_{};
  std::vector<int> nodes_;  // per trie node: the token ending there, or -1
  std::unordered_map<std::uint64_t, std::int32_t> edges_;
};

}  // namespace milora::text
