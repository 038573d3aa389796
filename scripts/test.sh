#!/usr/bin/env bash
# Builds and runs the whole test suite (installs what is missing first). CI runs exactly this.
#
# Two builds, compiled side by side (the second is one large translation unit, which would leave
# one of CI's two cores idle for minutes if it ran alone):
#  1. build/test: everything (the core suite on Eigen and xtensor, the file-layer and LLaMA suites
#     with the tools end to end, the examples, the benchmarks' smoke runs, the installed package,
#     the layout checks, the CUDA suites), built with AddressSanitizer + UndefinedBehaviorSanitizer
#     at -O1, so every test also checks for memory errors, leaks and undefined behaviour; any report
#     fails the run. nvcc's device code is not instrumented; without a GPU the CUDA suites are
#     compiled and linked and their cases reported as skipped, saying why. UBSan's vptr, null and
#     alignment checks are left out: in this template-heavy code they double the compile time
#     (milora-convert: 15 s at -O1, 24 s with ASan, 42 s with all of UBSan, 20 s without those
#     three), a null dereference still stops the run as ASan's SEGV report, and x86-64 does not
#     fault on misalignment.
#  2. build/test-nolapacke: the tests whose results depend on the factorisations (backend, init,
#     spectral) again with MILORA_USE_LAPACKE=OFF, so Eigen's own fallback paths are tested too (the
#     xtensor backend, which always goes through BLAS/LAPACK, the file layer and the LLaMA, which do
#     not touch LAPACK, and the package tests are left out of that build). Its five files are one
#     unity translation unit (tests/CMakeLists.txt): Eigen's own SVD / QR / eigen / GEMM code is then
#     instantiated once, not once per file (on CI's 2 cores: 8 min as 5 units, 3.5 min as one). -O2:
#     CMake's Release default, -O3, compiles about a fifth slower for no test's benefit.
# No test needs an optimised build of the rest: the benchmarks' numbers come from `bash
# scripts/demo.sh`'s and docs/benchmarks.md's own -O3 builds.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc)"
bash "$root/scripts/deps.sh"
# nvcc where the CUDA toolkit puts it, if it is not on PATH (CMake's check_language looks at CUDACXX).
if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDACXX=/usr/local/cuda/bin/nvcc
fi

cmake -S "$root" -B "$root/build/test-nolapacke" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
  -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF -DMILORA_USE_IO=OFF -DMILORA_USE_CUDA=OFF \
  -DMILORA_TEST_FALLBACKS_ONLY=ON -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
nolapacke_log="$root/build/test-nolapacke/build.log"
cmake --build "$root/build/test-nolapacke" -j1 --target milora_tests >"$nolapacke_log" 2>&1 &
nolapacke_build=$!
trap 'kill "$nolapacke_build" 2>/dev/null || true' EXIT  # a failure below must not leave it running

cmake -S "$root" -B "$root/build/test" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -g1" \
  -DMILORA_SANITIZE=address,undefined -DMILORA_NO_SANITIZE=vptr,null,alignment \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=ON >/dev/null
cmake --build "$root/build/test" -j"$jobs"
if { command -v nvcc >/dev/null || [ -n "${CUDACXX:-}" ]; } && [ ! -x "$root/build/test/tests/milora_cuda_tests" ]; then
  echo "nvcc is here but the CUDA suite was not built: the CUDA backend must compile and link" >&2
  exit 1
fi
if ! wait "$nolapacke_build"; then
  cat "$nolapacke_log" >&2
  echo "the build without LAPACKE failed" >&2
  exit 1
fi

echo "== milora tests without LAPACKE (Eigen fallbacks)"
ctest --test-dir "$root/build/test-nolapacke" -j"$jobs" --output-on-failure
echo "== milora tests (OpenBLAS + LAPACKE) under AddressSanitizer + UBSan, examples, benchmark smoke runs, install"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$root/build/test" -j"$jobs" --output-on-failure --no-tests=error
