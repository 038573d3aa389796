#!/usr/bin/env bash
# Builds and runs the whole test suite (installs what is missing first). CI runs exactly this.
#
# Every test runs once, in the build that checks it best:
#  1. build/test-asan: the core, file-layer and LLaMA suites (every backend-generic case on Eigen and
#     xtensor, the tools end to end, the kill and full-disk tests, the fuzz corpora) and the
#     examples, built with AddressSanitizer + UndefinedBehaviorSanitizer at -O1; any report fails
#     the run. UBSan's vptr, null and alignment checks are left out: in this template-heavy code
#     they double the compile time (milora-convert: 15 s at -O1, 24 s with ASan, 42 s with all of
#     UBSan, 20 s without those three), a null dereference still stops the run as ASan's SEGV
#     report, and x86-64 does not fault on misalignment.
#  2. build/test: what needs an optimised build or nvcc: the CUDA suites (compiled and linked; with
#     no GPU their cases are reported as skipped, saying why), the benchmarks' smoke runs, the
#     installed package (find_package, FetchContent, add_subdirectory) and the layout checks, at
#     -O2 (CMake's Release default, -O3, compiles about a fifth slower for no test's benefit).
#  3. build/test-nolapacke: the tests whose results depend on the factorisations (backend, init,
#     spectral) again with MILORA_USE_LAPACKE=OFF, so Eigen's own fallback paths are tested too (the
#     xtensor backend, which always goes through BLAS/LAPACK, the file layer and the LLaMA, which do
#     not touch LAPACK, and the package tests are left out of that build). Its five files are one
#     unity translation unit (tests/CMakeLists.txt): Eigen's own SVD / QR / eigen / GEMM code is then
#     instantiated once, not once per file (on CI's 2 cores: 8 min as 5 units, 3.5 min as one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc)"
bash "$root/scripts/deps.sh"
# nvcc where the CUDA toolkit puts it, if it is not on PATH (CMake's check_language looks at CUDACXX).
if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

sanitize=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1"
  -DMILORA_SANITIZE=address,undefined -DMILORA_NO_SANITIZE=vptr,null,alignment -DMILORA_USE_CUDA=OFF)
cmake -S "$root" -B "$root/build/test-asan" "${sanitize[@]}" \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-asan" -j"$jobs"

cmake -S "$root" -B "$root/build/test" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DMILORA_BUILD_TESTS=ON -DMILORA_TEST_HOST_SUITES=OFF -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$root/build/test" -j"$jobs"
if { command -v nvcc >/dev/null || [ -n "${CUDACXX:-}" ]; } && [ ! -x "$root/build/test/tests/milora_cuda_tests" ]; then
  echo "nvcc is here but the CUDA suite was not built: the CUDA backend must compile and link" >&2
  exit 1
fi

cmake -S "$root" -B "$root/build/test-nolapacke" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF -DMILORA_USE_IO=OFF -DMILORA_USE_CUDA=OFF \
  -DMILORA_TEST_FALLBACKS_ONLY=ON -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/test-nolapacke" -j"$jobs" --target milora_tests

echo "== milora tests under AddressSanitizer + UBSan: the core, file-layer and LLaMA suites, the examples"
# The package and layout checks run in build/test (they build and install unsanitized programs).
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build/test-asan" -j"$jobs" --output-on-failure --no-tests=error -E '^(package|layout)\.'
echo "== milora tests without LAPACKE (Eigen fallbacks)"
ctest --test-dir "$root/build/test-nolapacke" -j"$jobs" --output-on-failure
echo "== CUDA suites (skipped without a GPU), benchmark smoke runs, the installed package, the layout"
ctest --test-dir "$root/build/test" -j"$jobs" --output-on-failure
