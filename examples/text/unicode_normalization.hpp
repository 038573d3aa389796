// Unicode normalization forms (NFC, NFD, NFKC, NFKD) by ICU (Debian's libicu-dev): Qwen's
// tokenizer.json starts with NFC, and writing the composition tables by hand would be a second
// copy of Unicode's data to keep current.
#pragma once

#include <string>
#include <string_view>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "milora/core/errors.hpp"

namespace milora::text {

enum class NormalForm { NFC, NFD, NFKC, NFKD };

inline const icu::Normalizer2& icu_normalizer(NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case NormalForm::NFC: n = icu::Normalizer2::getNFCInstance(status); break;
    case NormalForm::NFD: n = icu::Normalizer2::getNFDInstance(status); break;
    case NormalForm::NFKC: n = icu::Normalizer2::getNFKCInstance(status); break;
    case NormalForm::NFKD: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  if (U_FAILURE(status) || n == nullptr)
    throw milora::io_error(milora::detail::concat("ICU cannot load its normalization data: ", u_errorName(status)));
  return *n;
}

/// `s` (valid UTF-8) in the normal form. ASCII is in every form, so it is returned as is.
inline std::string normalize_unicode(std::string_view s, NormalForm form) {
  bool ascii = true;
  for (const char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);
  const icu::Normalizer2& n = icu_normalizer(form);
  UErrorCode status = U_ZERO_ERROR;
  const icu::StringPiece piece(s.data(), int32_t(s.size()));
  if (n.isNormalizedUTF8(piece, status) && U_SUCCESS(status)) return std::string(s);
  status = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out, int32_t(s.size()));
  n.normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) throw milora::value_error(milora::detail::concat("ICU could not normalize a text: ", u_errorName(status)));
  return out;
}

}  // namespace milora::text
