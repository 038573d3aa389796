// libFuzzer target: the adapter_config.json reader (io::PeftLoraConfig) (contract in contracts.hpp).
#include "contracts.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  milora_fuzz::adapter_config(data, size);
  return 0;
}
