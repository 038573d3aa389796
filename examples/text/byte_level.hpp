// GPT-2's byte-level alphabet: each of the 256 byte values as one printable code point, so that a
// BPE vocabulary of strings covers every byte sequence. Used by the ByteLevel pre-tokenizer (bytes
// -> code points) and decoder (back).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "utf8.hpp"

namespace milora::text {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& get() {
    static const ByteLevelAlphabet alphabet;
    return alphabet;
  }
  /// The UTF-8 of the code point that stands for byte b.
  std::string_view encode(unsigned char b) const { return {utf8_[b].data(), std::size_t(utf8_len_[b])}; }
  /// The byte a code point stands for, or -1 for a code point outside the alphabet.
  int decode(char32_t cp) const { return cp < byte_of_.size() ? byte_of_[cp] : -1; }
  /// `bytes` spelled in the alphabet.
  void append_encoded(std::string_view bytes, std::string& out) const {
    for (const char c : bytes) out.append(encode(static_cast<unsigned char>(c)));
  }

 private:
  // Printable Latin-1 bytes stand for themselves; the other 68 get 256, 257, ... in byte order.
  ByteLevelAlphabet() {
    byte_of_.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : char32_t(next++);
      std::string s;
      append_utf8(s, cp);
      utf8_len_[std::size_t(b)] = std::uint8_t(s.size());
      for (std::size_t k = 0; k < s.size(); ++k) utf8_[std::size_t(b)][k] = s[k];
      byte_of_[cp] = std::int16_t(b);
    }
  }
  std::array<std::array<char, 2>, 256> utf8_{};
  std::array<std::uint8_t, 256> utf8_len_{};
  std::array<std::int16_t, 324> byte_of_{};  // code points 0 .. 323 (256 + 68 - 1)
};

}  // namespace milora::text
