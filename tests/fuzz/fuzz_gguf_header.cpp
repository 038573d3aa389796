// libFuzzer target: the GGUF header parser and tensor decoder (contract in contracts.hpp).
#include "contracts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  milora_fuzz::gguf_header(data, size);
  return 0;
}
