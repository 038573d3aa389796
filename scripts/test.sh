#!/usr/bin/env bash
# Builds and runs the whole test suite (installs what is missing first). CI runs exactly this.
#
#  1. the suite, examples and benchmark smoke runs with OpenBLAS + LAPACKE (the normal build);
#  2. the tests whose results depend on the factorisations (backend, init, spectral) again with
#     MILORA_USE_LAPACKE=OFF, so Eigen's own fallback paths are tested too (the xtensor backend, which
#     always goes through BLAS/LAPACK, the file layer and the LLaMA, which do not touch LAPACK, and
#     the package tests are left out of that build). Its five files are one unity translation
#     unit (tests/CMakeLists.txt): Eigen's own SVD / QR / eigen / GEMM code is then instantiated
#     once, not once per file (on CI's 2 cores: 8 min as 5 units, 3.5 min as one);
#  3. the file readers (with the fuzzers' corpora), the LLaMA and its tools and the fault-injection
#     tests again, built with AddressSanitizer + UndefinedBehaviorSanitizer (-O1, Eigen backend only).
#     They drive the core adapter code too; the core suite itself is left out of this build to keep
#     CI near its time budget. Any report fails the run.
# When the CUDA toolkit and nvcc are found (as on CI's machine), build 1 also compiles and links the
# CUDA suite (tests/cuda); without a GPU its cases are reported as skipped, saying why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc)"
bash "$root/scripts/deps.sh"
# nvcc where the CUDA toolkit puts it, if it is not on PATH (CMake's check_language looks at CUDACXX).
if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

cmake -S "$root" -B "$root/build/test" -DCMAKE_BUILD_TYPE=Release \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$root/build/test" -j"$jobs"
if { command -v nvcc >/dev/null || [ -n "${CUDACXX:-}" ]; } && [ ! -x "$root/build/test/tests/milora_cuda_tests" ]; then
  echo "nvcc is here but the CUDA suite was not built: the CUDA backend must compile and link" >&2
  exit 1
fi

cmake -S "$root" -B "$root/build/test-nolapacke" -DCMAKE_BUILD_TYPE=Release -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF -DMILORA_USE_IO=OFF -DMILORA_USE_CUDA=OFF \
  -DMILORA_TEST_FALLBACKS_ONLY=ON -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-nolapacke" -j"$jobs" --target milora_tests

echo "== milora tests without LAPACKE (Eigen fallbacks)"
ctest --test-dir "$root/build/test-nolapacke" -j"$jobs" --output-on-failure
echo "== milora tests (OpenBLAS + LAPACKE), examples, benchmark smoke runs, install"
ctest --test-dir "$root/build/test" -j"$jobs" --output-on-failure

cmake -S "$root" -B "$root/build/test-asan" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DMILORA_SANITIZE=address,undefined -DMILORA_USE_XTENSOR=OFF -DMILORA_USE_CUDA=OFF \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-asan" -j"$jobs" --target milora_io_tests milora_llama_tests
echo "== milora tests under AddressSanitizer + UBSan"
# Only the two suites built above (the others are registered too and would report *_NOT_BUILT).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build/test-asan" -j"$jobs" --output-on-failure --no-tests=error -R '^(io|llama):'
