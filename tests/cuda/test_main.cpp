// The CUDA suite's main: without a CUDA device, every case exits with CTest's skip code (77) and
// says why, so CI (nvcc, no GPU) builds and links all of it and reports the cases as skipped.
#include <cstdio>

#include "../doctest_main.hpp"
#include "milora/backend/cuda/context.hpp"

namespace {
int skip_without_gpu() {
  const std::string why = milora::cuda::no_device_reason();
  if (why.empty()) return -1;  // a device: run the cases
  std::printf("SKIPPED: the CUDA tests need a CUDA device (%s)\n", why.c_str());
  return 77;
}
}  // namespace

int main(int argc, char** argv) { return test::run_doctest(argc, argv, &skip_without_gpu); }
