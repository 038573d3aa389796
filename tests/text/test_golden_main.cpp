// The golden text suite's main: the cases compare with encodings transformers.js wrote at build time
// (tests/text/prepare_references.sh). Where the npm registry could not be reached there are none,
// and every case exits with CTest's skip code (77), printing why.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "../doctest_main.hpp"
#include "text_test_util.hpp"

namespace {
int skip_without_references() {
  if (std::filesystem::exists(text_test::references() / "reference.json")) return -1;
  std::ifstream why(text_test::references() / "skip_reason.txt");
  const std::string reason((std::istreambuf_iterator<char>(why)), std::istreambuf_iterator<char>());
  std::printf("SKIPPED: no reference encodings in '%s' (%s)\n", text_test::references().string().c_str(),
              reason.empty() ? "the build step that fetches them has not run" : reason.c_str());
  return 77;
}
}  // namespace

int main(int argc, char** argv) { return test::run_doctest(argc, argv, &skip_without_references); }
