// libFuzzer target: the safetensors header parser (contract in contracts.hpp).
#include "contracts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  milora_fuzz::safetensors_header(data, size);
  return 0;
}
