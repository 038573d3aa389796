// The split patterns of tokenizer.json, run by PCRE2 (Debian's libpcre2-dev).
//
// Why PCRE2: the patterns (GPT-2's, LLaMA-3's, Qwen's) need Unicode letter and number classes
// (\p{L}, \p{N}), case-insensitive groups and a negative lookahead (\s+(?!\S)); a hand-written
// scanner would need Unicode's category tables and would be right for the patterns it was written
// for only, while PCRE2 takes any pattern of the files, JIT-compiles it, and is maintained.
//
// Hugging Face's tokenizers compile these patterns with Oniguruma, whose \s is Unicode's
// White_Space property; PCRE2's \s (with UCP) also matches U+180E, so \s and \S are spelled as
// \p{White_Space} and \P{White_Space} before compiling.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "milora/core/errors.hpp"

namespace milora::text {

class Regex {
 public:
  /// Compiles `pattern` (Oniguruma syntax as tokenizer.json holds it); `where` starts the error
  /// message of a pattern PCRE2 refuses.
  Regex(std::string_view pattern, const std::string& where) : source_(pattern) {
    const std::string translated = translate(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), PCRE2_UTF | PCRE2_UCP,
                              &error, &offset, nullptr));
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw milora::format_error(milora::detail::concat(where, ": the pattern '", source_, "' is not supported (PCRE2: ",
                                                        reinterpret_cast<const char*>(message), " at offset ", offset, ")"));
    }
    pcre2_jit_compile(code_.get(), PCRE2_JIT_COMPLETE);  // without JIT (an unsupported CPU) it still matches, slower
  }

  const std::string& source() const { return source_; }

  /// Calls fn(begin, end) for each non-empty match in `s`, left to right, without overlaps; `s` must
  /// be valid UTF-8 (checked by the caller, so PCRE2 does not check again).
  template <class Fn>
  void for_each_match(std::string_view s, Fn&& fn) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(pcre2_match_data_create_from_pattern(code_.get(), nullptr),
                                                                          &pcre2_match_data_free);
    if (!md) throw std::bad_alloc();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    std::size_t at = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code_.get(), subject, s.size(), at, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(rc, message, sizeof message);
        throw milora::value_error(milora::detail::concat("the pattern '", source_, "' failed to match: ",
                                                         reinterpret_cast<const char*>(message)));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const std::size_t begin = ov[0], end = ov[1];
      if (end > begin) {
        fn(begin, end);
        at = end;
      } else {  // an empty match: step over one character
        if (begin >= s.size()) return;
        std::size_t next = begin + 1;
        while (next < s.size() && (static_cast<unsigned char>(s[next]) & 0xC0) == 0x80) ++next;
        at = next;
      }
    }
  }

 private:
  static std::string translate(std::string_view p) {
    std::string out;
    out.reserve(p.size() + 32);
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (p[i] == '\\' && i + 1 < p.size()) {
        const char c = p[++i];
        if (c == 's') out += "\\p{White_Space}";
        else if (c == 'S') out += "\\P{White_Space}";
        else {
          out += '\\';
          out += c;
        }
      } else {
        out += p[i];
      }
    }
    return out;
  }
  struct Free {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  std::string source_;
  std::unique_ptr<pcre2_code, Free> code_;
};

}  // namespace milora::text
