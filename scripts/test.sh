#!/usr/bin/env bash
# Builds and runs the whole test suite (installs what is missing first). CI runs exactly this.
#
#  1. the suite, examples and benchmark smoke runs with OpenBLAS + LAPACKE (the normal build);
#  2. the tests whose results depend on the factorisations (backend, init, spectral) again with
#     MILORA_USE_LAPACKE=OFF, so Eigen's own fallback paths are tested too (the xtensor backend, which
#     always goes through BLAS/LAPACK, the file layer and the LLaMA, which do not touch LAPACK, and
#     the package tests are left out of that build);
#  3. the test suites again built with AddressSanitizer + UndefinedBehaviorSanitizer (-O1, Eigen
#     backend only, so it stays inside CI's time): the core library, the file readers (with the
#     fuzzers' corpora), the LLaMA and its tools, the fault-injection tests. Any report fails the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc)"
bash "$root/scripts/deps.sh"

cmake -S "$root" -B "$root/build/test" -DCMAKE_BUILD_TYPE=Release \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$root/build/test" -j"$jobs"

cmake -S "$root" -B "$root/build/test-nolapacke" -DCMAKE_BUILD_TYPE=Release -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF -DMILORA_USE_IO=OFF \
  -DMILORA_TEST_FALLBACKS_ONLY=ON -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-nolapacke" -j"$jobs" --target milora_tests

echo "== milora tests without LAPACKE (Eigen fallbacks)"
ctest --test-dir "$root/build/test-nolapacke" -j"$jobs" --output-on-failure
echo "== milora tests (OpenBLAS + LAPACKE), examples, benchmark smoke runs, install"
ctest --test-dir "$root/build/test" -j"$jobs" --output-on-failure

cmake -S "$root" -B "$root/build/test-asan" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DMILORA_SANITIZE=address,undefined -DMILORA_USE_XTENSOR=OFF \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-asan" -j"$jobs" --target milora_tests milora_io_tests milora_llama_tests
echo "== milora tests under AddressSanitizer + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build/test-asan" -j"$jobs" --output-on-failure -E '^(example|benchmark_smoke|package)[.]'
