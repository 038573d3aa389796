#!/usr/bin/env bash
# The CUDA backend on a GPU: its test suite, its benchmark and torch.linalg.svd on the same GPU, with
# a short table printed last (issue 5). Two steps, because the GPU machines lent to this project
# (/work/.library/device) have nvcc and PyTorch but not Debian's Eigen, doctest or Google Benchmark,
# and cannot install anything:
#
#   bash scripts/gpu.sh build    here (nvcc, no GPU needed): builds build/gpu (sm_90: H100 / H200)
#                                with the shared libraries it needs from Debian copied into build/gpu/lib
#   bash scripts/gpu.sh run      on the GPU machine, with build/gpu carried there: runs everything
#
# On a machine with both a GPU and the Debian packages, `bash scripts/gpu.sh` does both steps.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/gpu"
step="${1:-all}"

build() {
  bash "$root/scripts/deps.sh"
  if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
  fi
  cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${MILORA_CUDA_ARCH:-90}" \
    -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_BUILD_BENCHMARKS=ON \
    -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF >/dev/null  # small enough to carry
  cmake --build "$out" -j"$(nproc)" --target milora_cuda_tests milora_cuda_llama_tests cuda_bench
  # Debian's libraries the programs need that a CUDA image may lack (not glibc, not CUDA's own).
  mkdir -p "$out/lib"
  for exe in "$out/tests/milora_cuda_tests" "$out/tests/milora_cuda_llama_tests" "$out/benchmarks/cuda_bench"; do
    ldd "$exe" | awk '/=> \// {print $3}' |
      grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libcusolver|libcusparse|libnvJitLink)\.so' |
      xargs -r -I{} cp -L {} "$out/lib/"
  done
  echo "built $out ($(du -sh "$out/tests/milora_cuda_tests" "$out/benchmarks/cuda_bench" "$out/lib" | awk '{print $1}' | paste -sd' '))"
}

run() {
  [ -x "$out/tests/milora_cuda_tests" ] || { echo "no $out: run 'bash scripts/gpu.sh build' first (and carry build/gpu)" >&2; exit 1; }
  # CUDA's libraries: the toolkit's, else the ones PyTorch's wheels bring.
  local libs="$out/lib:/usr/local/cuda/lib64"
  libs="$libs:$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = []
for s in site.getsitepackages():
    dirs += sorted(glob.glob(os.path.join(s, "nvidia", "*", "lib")))
print(":".join(dirs))
PY
)"
  export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local log="${OUT:-$out}"
  set +e
  "$out/tests/milora_cuda_tests" 2>&1 | tee "$log/cuda_tests.log" | tail -n 30
  local tests_rc=${PIPESTATUS[0]}
  # the reference LLaMA on CudaBackend against the CPU (the tiny golden model of this checkout)
  MILORA_TEST_DATA="$root/tests/data" "$out/tests/milora_cuda_llama_tests" 2>&1 | tee "$log/cuda_llama_tests.log" | tail -n 10
  [ "${PIPESTATUS[0]}" = 0 ] || tests_rc=1
  "$out/benchmarks/cuda_bench" --benchmark_repetitions=3 2>&1 | tee "$log/cuda_bench.log" | tail -n 5
  local bench_rc=${PIPESTATUS[0]}
  python3 - <<'PY' 2>&1 | tee "$log/torch_svd.log"
import time, torch
torch.manual_seed(0)
w = torch.randn(4096, 4096, device="cuda", dtype=torch.float32) * 0.02
for name, fn in [("torch.linalg.svd full_matrices=False", lambda: torch.linalg.svd(w, full_matrices=False)),
                 ("torch.svd_lowrank q=16 niter=4", lambda: torch.svd_lowrank(w, q=16, niter=4))]:
    fn(); torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter(); fn(); torch.cuda.synchronize(); best = min(best, time.perf_counter() - t)
    print(f"{name:44s} {best * 1e3:12.3f} ms  (4096x4096 float, min of 3)")
PY
  set -e
  echo
  echo "== summary (cuda_tests exit $tests_rc, cuda_bench exit $bench_rc)"
  grep -E "test cases:" "$log/cuda_tests.log" || true
  sed -n '/ratio = time/,$p' "$log/cuda_bench.log"
  cat "$log/torch_svd.log"
  [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
}

case "$step" in
  build) build ;;
  run) run ;;
  all) build && run ;;
  *) echo "usage: bash scripts/gpu.sh [build|run]" >&2; exit 2 ;;
esac
