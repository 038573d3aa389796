// libFuzzer target for the safetensors header parser (scripts/fuzz.sh builds and runs it with
// AddressSanitizer and UBSan). Contract under test: any byte string either throws format_error or
// yields tensors whose byte ranges lie inside the input, and decoding them reads nothing outside.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "milora/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto header = milora::io::parse_safetensors(file, "fuzz-input");
    std::uint64_t previous_end = 0;
    for (const auto& t : header.tensors) {
      if (header.data_start + t.end > size || t.begin < previous_end) __builtin_trap();  // accepted a bad layout
      previous_end = t.end;
      if (t.nbytes() > (1u << 20) || !milora::io::dtype_info(t.dtype).floating_point) continue;
      std::vector<float> out(t.numel);
      milora::io::decode<float>(t.dtype, file.subspan(header.data_start + t.begin, t.nbytes()), std::span<float>(out));
    }
  } catch (const milora::format_error&) {
    // refused: the expected outcome for almost every input
  }
  return 0;
}
