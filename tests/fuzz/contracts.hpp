// What each fuzz target checks for one input, shared by the libFuzzer entry points (fuzz_*.cpp,
// built with clang by scripts/fuzz.sh) and by the doctest that replays the committed corpora
// (tests/fuzz/corpus/<target>/, including every input that ever crashed a target) in the normal
// suite and under the sanitizers. Contract of every reader: any byte string is either refused with
// milora's exception for bad input (format_error / value_error) or yields a result that satisfies
// the reader's documented invariants; anything else (another exception, a crash, a sanitizer
// report, a violated invariant) is a bug. A violated invariant calls __builtin_trap() so that
// libFuzzer records the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llama/config.hpp"
#include "llama/data.hpp"  // examples/llama: the token-file reader
#include "milora/io/gguf.hpp"
#include "milora/io/json.hpp"
#include "milora/io/peft.hpp"
#include "milora/io/safetensors.hpp"

namespace milora_fuzz {

inline void require(bool ok) {
  if (!ok) __builtin_trap();
}

/// safetensors: the header parser accepts only layouts inside the file, sorted and disjoint, and
/// decoding an accepted tensor reads nothing outside it.
inline void safetensors_header(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto header = milora::io::parse_safetensors(file, "fuzz-input");
    std::uint64_t previous_end = 0;
    for (const auto& t : header.tensors) {
      require(header.data_start + t.end <= size && t.begin >= previous_end && t.end - t.begin == t.nbytes());
      previous_end = t.end;
      if (t.nbytes() > (1u << 20) || !milora::io::dtype_info(t.dtype).floating_point) continue;
      std::vector<float> out(t.numel);
      milora::io::decode<float>(t.dtype, file.subspan(header.data_start + t.begin, t.nbytes()), std::span<float>(out));
    }
  } catch (const milora::format_error&) {
    // refused: the expected outcome for almost every input
  }
}

/// GGUF: the header parser accepts only tensors that follow each other inside the file, aligned,
/// with the bytes their type and shape need; every key has a value of its declared type; decoding
/// an accepted tensor of a type milora decodes reads nothing outside it.
inline void gguf_header(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto h = milora::io::parse_gguf(file, "fuzz-input");
    require(h.data_start % h.alignment == 0 && h.data_start <= size);
    for (const auto& [key, v] : h.metadata) require(!key.empty() && (v.is_array || v.items.size() == 1) && h.find(key) != nullptr);
    std::uint64_t previous_end = 0;
    for (const auto& t : h.tensors) {
      const auto* type = milora::io::ggml_type(t.type);
      require(type != nullptr && t.offset % h.alignment == 0 && t.offset >= previous_end);
      require(t.nbytes == t.numel / type->block * type->block_bytes && h.data_start + t.offset + t.nbytes <= size);
      previous_end = t.offset + t.nbytes;
      if (t.nbytes > (1u << 20)) continue;
      std::vector<float> out(t.numel);
      try {
        milora::io::decode_ggml<float>(t.type, file.subspan(h.data_start + t.offset, t.nbytes), std::span<float>(out), t.name);
      } catch (const milora::format_error&) {  // a type milora validates but does not decode
      }
    }
  } catch (const milora::format_error&) {
  }
}

/// config.json: an accepted config has positive sizes, heads that divide into key/value groups,
/// and survives being written and read back unchanged.
inline void llama_config(const std::uint8_t* data, std::size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  try {
    const auto j = milora::io::parse_json_strict(text, text + size, "fuzz config.json");
    const auto c = llama::LlamaConfig::from_json(j, "fuzz config.json");
    require(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers > 0);
    require(c.num_attention_heads > 0 && c.num_key_value_heads > 0 && c.head_dim > 0);
    require(c.num_attention_heads % c.num_key_value_heads == 0);
    require(c.rms_norm_eps > 0 && c.rope_theta > 0);
  } catch (const milora::format_error&) {
  }
}

/// adapter_config.json: an accepted config has r > 0 and alpha > 0, and what milora writes for it
/// reads back as the same adapter.
inline void adapter_config(const std::uint8_t* data, std::size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  try {
    const auto j = milora::io::parse_json_strict(text, text + size, "fuzz adapter_config.json");
    const auto c = milora::io::PeftLoraConfig::from_json(j, "fuzz adapter_config.json");
    require(c.r > 0 && c.lora_alpha > 0);
    const auto back = milora::io::PeftLoraConfig::from_json(c.to_json(), "round trip");
    require(back.r == c.r && back.lora_alpha == c.lora_alpha && back.use_rslora == c.use_rslora &&
            back.target_modules == c.target_modules);
  } catch (const milora::format_error&) {
  }
}

/// Token files: the first input byte picks the format (odd: .u32 ids, even: byte-level text) and
/// the second the vocabulary size (1..256); every accepted token is below it, a .u32 file gives one
/// token per 4 bytes and text one per byte.
inline void token_file(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return;
  const bool u32 = data[0] & 1;
  const llama::Index vocab = llama::Index(data[1]) + 1;
  static const auto bytes = llama::Tokenizer::for_model("/nonexistent", 256);
  const std::string_view body(reinterpret_cast<const char*>(data) + 2, size - 2);
  try {
    const auto tokens = llama::parse_tokens(body, u32, bytes, vocab, "fuzz token file");
    require(tokens.size() == (u32 ? body.size() / 4 : body.size()));
    for (auto t : tokens) require(t >= 0 && t < vocab);
  } catch (const milora::format_error&) {
  } catch (const milora::value_error&) {
  }
}

}  // namespace milora_fuzz
