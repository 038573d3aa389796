// libFuzzer target: the config.json reader (io::LlamaConfig) (contract in contracts.hpp).
#include "contracts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  milora_fuzz::llama_config(data, size);
  return 0;
}
