#!/usr/bin/env bash
# Builds and runs the whole test suite (installs what is missing first). CI runs exactly this.
#
#  1. the suite, examples and benchmark smoke runs with OpenBLAS + LAPACKE (the normal build);
#  2. the tests whose results depend on the factorisations (backend, init, spectral) again with
#     MILORA_USE_LAPACKE=OFF, so Eigen's own fallback paths are tested too (the xtensor backend, which
#     always goes through BLAS/LAPACK, the file layer and the LLaMA, which do not touch LAPACK, and
#     the package tests are left out of that build).
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
