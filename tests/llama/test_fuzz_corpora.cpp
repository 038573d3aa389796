// Replays the fuzzers' committed corpora (tests/fuzz/corpus/<target>/: the seeds and every input
// that ever crashed a target) through the same contracts the libFuzzer targets check, so the
// normal suite and the sanitizer build keep each past crash fixed. scripts/fuzz.sh runs the
// fuzzers themselves (clang + libFuzzer).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "contracts.hpp"

namespace {

std::size_t replay(const char* target, void (*contract)(const std::uint8_t*, std::size_t)) {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(MILORA_FUZZ_CORPUS) / target)) {
    std::ifstream in(e.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CAPTURE(e.path().string());
    contract(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());  // traps on a broken contract
    ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("fuzz corpora: every committed input keeps its reader's contract") {
  CHECK(replay("safetensors_header", milora_fuzz::safetensors_header) >= 5);
  CHECK(replay("gguf_header", milora_fuzz::gguf_header) >= 6);
  CHECK(replay("llama_config", milora_fuzz::llama_config) >= 5);
  CHECK(replay("adapter_config", milora_fuzz::adapter_config) >= 5);
  CHECK(replay("token_file", milora_fuzz::token_file) >= 5);
}

TEST_CASE("fuzz contracts: the seeds that should be refused are, and the valid ones are read") {
  auto read = [](const char* rel) {
    std::ifstream in(std::filesystem::path(MILORA_FUZZ_CORPUS) / rel, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  auto config = [&](const char* rel) {
    const std::string s = read(rel);
    return llama::LlamaConfig::from_json(milora::io::parse_json_strict(s.data(), s.data() + s.size(), rel), rel);
  };
  CHECK(config("llama_config/gqa_head_dim").num_key_value_heads == 8);
  CHECK_THROWS_AS(config("llama_config/bad_heads"), milora::format_error);
  CHECK_THROWS_AS(config("llama_config/duplicate_key"), milora::format_error);
  auto adapter = [&](const char* rel) {
    const std::string s = read(rel);
    return milora::io::PeftLoraConfig::from_json(milora::io::parse_json_strict(s.data(), s.data() + s.size(), rel), rel);
  };
  CHECK(adapter("adapter_config/regex_targets").use_rslora);
  CHECK_THROWS_AS(adapter("adapter_config/dora"), milora::format_error);
  CHECK_THROWS_AS(adapter("adapter_config/alpha_pattern"), milora::format_error);
  const auto bytes = llama::Tokenizer::for_model("/nonexistent", 256);
  const std::string u32 = read("token_file/u32").substr(2);
  CHECK(llama::parse_tokens(u32, true, bytes, 256, "u32") == std::vector<llama::Token>{1, 2, 3, 254, 255});
  CHECK_THROWS_WITH_AS(llama::parse_tokens(read("token_file/u32_out_of_vocab").substr(2), true, bytes, 10, "f"),
                       "f: token 1 is 10, not below vocab_size 10", milora::value_error);
  CHECK_THROWS_AS(llama::parse_tokens(read("token_file/u32_ragged").substr(2), true, bytes, 256, "f"), milora::format_error);
  auto gguf = [&](const char* rel) {
    const std::string s = read(rel);
    return milora::io::parse_gguf(std::span(reinterpret_cast<const std::byte*>(s.data()), s.size()), rel);
  };
  const auto valid = gguf("gguf_header/valid");
  CHECK(valid.tensors.size() == 3);
  CHECK(valid.find("tokenizer.ggml.tokens")->items.size() == 3);
  CHECK(gguf("gguf_header/bf16_aligned64").alignment == 64);
  CHECK(gguf("gguf_header/version2").version == 2);
  CHECK(gguf("gguf_header/q4_0").tensors[0].nbytes == 36);
  CHECK_THROWS_WITH_AS(gguf("gguf_header/truncated"), doctest::Contains("tensor name 0 has length 26 but only 3 bytes are left"), milora::format_error);
  CHECK_THROWS_WITH_AS(gguf("gguf_header/bad_offset"), doctest::Contains("tensor 'q8' is at offset 40 but the tensors before it end at 32"),
                       milora::format_error);
}
