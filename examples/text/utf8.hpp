// UTF-8, checked once at the door: every text the tokenizers take is validated here, so the rest
// of the pipeline can walk code points without re-checking (and PCRE2 can skip its own check).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "milora/core/errors.hpp"

namespace milora::text {

/// Bytes of the UTF-8 sequence whose first byte is `lead` (1 to 4), or 0 for a byte that cannot
/// start one.
inline int utf8_sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

/// Length of the valid UTF-8 sequence at s[i] (no overlong forms, surrogates or code points past
/// U+10FFFF, the rules of RFC 3629), or 0 when the bytes there are not one.
inline int valid_sequence_at(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const int n = utf8_sequence_length(b(i));
  if (n == 0 || i + std::size_t(n) > s.size()) return 0;
  for (int k = 1; k < n; ++k)
    if ((b(i + std::size_t(k)) & 0xC0) != 0x80) return 0;
  if (n == 3) {
    const unsigned char l = b(i), c = b(i + 1);
    if ((l == 0xE0 && c < 0xA0) || (l == 0xED && c >= 0xA0)) return 0;  // overlong, surrogate
  } else if (n == 4) {
    const unsigned char l = b(i), c = b(i + 1);
    if ((l == 0xF0 && c < 0x90) || (l == 0xF4 && c >= 0x90)) return 0;  // overlong, past U+10FFFF
  }
  return n;
}

/// Offset of the first byte that is not part of valid UTF-8, or npos.
inline std::size_t find_invalid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int n = valid_sequence_at(s, i);
    if (n == 0) return i;
    i += std::size_t(n);
  }
  return std::string_view::npos;
}

/// Throws value_error naming `what` and the offset when `s` is not valid UTF-8.
inline void require_utf8(std::string_view s, const std::string& what) {
  if (const auto at = find_invalid_utf8(s); at != std::string_view::npos)
    throw milora::value_error(milora::detail::concat(what, " is not valid UTF-8 (byte ", at, " is 0x", std::hex,
                                                     int(static_cast<unsigned char>(s[at])), ")"));
}

/// The code point of the valid sequence at s[i]; advances i past it.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b = [&](std::size_t k) { return char32_t(static_cast<unsigned char>(s[k])); };
  const int n = utf8_sequence_length(static_cast<unsigned char>(s[i]));
  char32_t cp = n == 1 ? b(i) : n == 2 ? b(i) & 0x1F : n == 3 ? b(i) & 0x0F : b(i) & 0x07;
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (b(i + std::size_t(k)) & 0x3F);
  i += std::size_t(n);
  return cp;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

/// `bytes` with every ill-formed part replaced by U+FFFD, one per maximal subpart (the WHATWG
/// decoder's rule, which JavaScript's TextDecoder and Rust's from_utf8_lossy follow): what a
/// decoder gives when byte tokens end in the middle of a character.
inline std::string to_utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const int n = valid_sequence_at(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, std::size_t(n)));
      i += std::size_t(n);
      continue;
    }
    // The maximal subpart: the lead byte and the continuation bytes that could still have
    // completed a valid sequence.
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(bytes[k]); };
    const unsigned char lead = b(i);
    const int want = utf8_sequence_length(lead);
    std::size_t j = i + 1;
    if (want > 1) {
      for (int k = 1; k < want && j < bytes.size(); ++k, ++j) {
        const unsigned char c = b(j);
        unsigned char lo = 0x80, hi = 0xBF;
        if (k == 1) {
          if (lead == 0xE0) lo = 0xA0;
          if (lead == 0xED) hi = 0x9F;
          if (lead == 0xF0) lo = 0x90;
          if (lead == 0xF4) hi = 0x8F;
        }
        if (c < lo || c > hi) break;
      }
    }
    out += "\xEF\xBF\xBD";
    i = j;
  }
  return out;
}

}  // namespace milora::text
