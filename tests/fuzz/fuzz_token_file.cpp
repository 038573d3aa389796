// libFuzzer target: the token-file reader (llama::parse_tokens) (contract in contracts.hpp).
#include "contracts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  milora_fuzz::token_file(data, size);
  return 0;
}
