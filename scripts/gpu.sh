#!/usr/bin/env bash
# The CUDA backend on a GPU: its test suite, its benchmark and torch.linalg.svd on the same GPU;
# the reference LLaMA there: the CUDA LLaMA tests, milora-finetune / milora-eval --device cuda
# against the CPU, PEFT loading milora's adapter, and a LoRA step of a ~1.1B LLaMA against
# transformers + PEFT; a short table printed last. Two steps, because the GPU machines lent to this project
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
programs=("$out/tests/milora_cuda_tests" "$out/tests/milora_cuda_llama_tests" "$out/benchmarks/cuda_bench"
          "$out/benchmarks/llama_step_bench" "$out/benchmarks/generate_bench" "$out/examples/tools/milora-finetune"
          "$out/examples/tools/milora-eval")

build() {
  bash "$root/scripts/deps.sh"
  if ! command -v nvcc >/dev/null && [ -z "${CUDACXX:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDACXX=/usr/local/cuda/bin/nvcc
  fi
  cmake -S "$root" -B "$out" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${MILORA_CUDA_ARCH:-90}" \
    -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=ON \
    -DMILORA_USE_LAPACKE=OFF -DMILORA_USE_XTENSOR=OFF >/dev/null  # small enough to carry
  cmake --build "$out" -j"$(nproc)" --target milora_cuda_tests milora_cuda_llama_tests cuda_bench \
    llama_step_bench generate_bench milora-finetune milora-eval
  # Debian's libraries the programs need that a CUDA image may lack (not glibc, not CUDA's own).
  mkdir -p "$out/lib"
  for exe in "${programs[@]}"; do
    ldd "$exe" | awk '/=> \// {print $3}' |
      grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libcusolver|libcusparse|libnvJitLink)\.so' |
      xargs -r -I{} cp -L {} "$out/lib/"
  done
  # Only the programs and lib/ have to travel: drop the object files (carry is limited in size).
  find "$out" -name '*.o' -delete
  echo "built $out ($(du -sh "$out" | awk '{print $1}'))"
}

# The device machine's lease is short (/work/.library/device: 15 minutes a session, start included),
# so every stage runs under `stage`: a time limit of its own, cut to what is left before the run's
# deadline (MILORA_GPU_DEADLINE seconds after the start, default 540), so one hang or slow stage
# cannot take the rest of the call with it, and the logs always come back. MILORA_GPU_ONLY="NAME ..."
# runs only the stages named (a second call after a fix need not repeat what did not change).
run_start=$SECONDS
stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND with its output in $log/NAME.log
  local name="$1" limit="$2"; shift 2
  if [ -n "${MILORA_GPU_ONLY:-}" ] && [[ " $MILORA_GPU_ONLY " != *" $name "* ]]; then
    echo "== $name: not run (MILORA_GPU_ONLY)" >> "$log/stages.txt"; return 0
  fi
  local left=$(( ${MILORA_GPU_DEADLINE:-540} - (SECONDS - run_start) ))
  (( limit > left )) && limit=$left
  if (( limit < 5 )); then echo "== $name: skipped, no time left" | tee -a "$log/stages.txt"; return 124; fi
  local t0=$SECONDS rc=0
  timeout -k 5 "$limit" "$@" > "$log/$name.log" 2>&1 || rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s (limit $limit s)$([ $rc = 124 ] && echo ', TIMED OUT')" | tee -a "$log/stages.txt"
  return $rc
}

# Issue 8 on the GPU. The tiny LLaMA of tests/data: milora-finetune and milora-eval with
# --device cuda against the CPU (float 1e-4, bf16 2e-2), and transformers + PEFT on the adapter
# milora wrote (its plain_lora/ export) against milora-eval (float 1e-4, bf16 2e-2).
tiny_checks() {
  local tools="$out/examples/tools" tiny="$root/tests/data/llama_tiny/model" tmp="$log/tiny" rc=0
  mkdir -p "$tmp"
  python3 - "$tmp" <<'PY'
import array, random, sys
random.seed(0)
words = ["low", "rank", "adapter", "minor", "singular", "subspace", "fine", "tuning", "of", "the", "model"]
open(sys.argv[1] + "/train.txt", "w").write(" ".join(random.choice(words) for _ in range(600)))
open(sys.argv[1] + "/val.u32", "wb").write(array.array("I", [random.randrange(256) for _ in range(32 * 8 + 1)]).tobytes())
PY
  local common="--model $tiny --data $tmp/train.txt --method milora --rank 4 --steps 4 --lr 5e-3 --batch 2 --seq 32 --quiet"
  local evaluate="--model $tiny --adapter $tmp/cpu/checkpoint-4 --data $tmp/val.u32 --seq 32 --batch 2"
  local peft="$root/tests/reference/peft_load_check.py --model $tiny --adapter $tmp/cpu/checkpoint-4/plain_lora --data $tmp/val.u32 --seq 32 --batch 2"
  "$tools/milora-finetune" $common --out "$tmp/cpu" | tail -n 1 > "$tmp/finetune_cpu.json" || rc=1
  "$tools/milora-finetune" $common --out "$tmp/gpu" --device cuda | tail -n 1 > "$tmp/finetune_gpu.json" || rc=1
  "$tools/milora-finetune" $common --out "$tmp/gpu_tf32" --device cuda --tf32 | tail -n 1 > "$tmp/finetune_gpu_tf32.json" || rc=1
  "$tools/milora-finetune" $common --dtype bf16 --out "$tmp/cpu16" | tail -n 1 > "$tmp/finetune_cpu16.json" || rc=1
  "$tools/milora-finetune" $common --dtype bf16 --out "$tmp/gpu16" --device cuda | tail -n 1 > "$tmp/finetune_gpu16.json" || rc=1
  "$tools/milora-eval" $evaluate | tail -n 1 > "$tmp/eval_cpu.json" || rc=1
  "$tools/milora-eval" $evaluate --device cuda | tail -n 1 > "$tmp/eval_gpu.json" || rc=1
  "$tools/milora-eval" $evaluate --device cuda --dtype bf16 | tail -n 1 > "$tmp/eval_gpu16.json" || rc=1
  python3 $peft | tail -n 1 > "$tmp/peft.json" || rc=1
  python3 $peft --dtype bfloat16 | tail -n 1 > "$tmp/peft16.json" || rc=1
  python3 - "$tmp" <<'PY' || rc=1
import json, sys
d = sys.argv[1]
def get(name, key):
    try:
        return json.load(open(f"{d}/{name}.json"))[key]
    except Exception as e:
        return float("nan")
rows = [("milora-finetune val_loss, cuda vs cpu", get("finetune_gpu", "val_loss"), get("finetune_cpu", "val_loss"), 1e-4),
        ("... --tf32 (tensor-core products), cuda vs cpu", get("finetune_gpu_tf32", "val_loss"), get("finetune_cpu", "val_loss"), 1e-2),
        ("... --dtype bf16, cuda vs cpu", get("finetune_gpu16", "val_loss"), get("finetune_cpu16", "val_loss"), 2e-2),
        ("milora-eval loss, cuda vs cpu", get("eval_gpu", "loss"), get("eval_cpu", "loss"), 1e-4),
        ("... --dtype bf16 cuda vs float32 cpu", get("eval_gpu16", "loss"), get("eval_cpu", "loss"), 2e-2),
        ("transformers+PEFT loss vs milora-eval", get("peft", "loss"), get("eval_cpu", "loss"), 1e-4),
        ("... bfloat16 PEFT vs bf16 milora-eval", get("peft16", "loss"), get("eval_gpu16", "loss"), 2e-2)]
bad = 0
for name, a, b, tol in rows:
    rel = abs(a - b) / max(abs(b), 1e-30)
    ok = rel <= tol
    bad += not ok
    print(f"{name:40s} {a:.6f} vs {b:.6f}  rel {rel:.1e}  {'ok' if ok else 'FAIL'} (<= {tol:g})")
sys.exit(1 if bad else 0)
PY
  return $rc
}

# One LoRA step of a ~1.1B LLaMA (TinyLlama-1.1B's shape), batch 4 x seq 1024, rank 16 on all seven
# projections: milora (float, TF32, bf16) against transformers + PEFT in float32, TF32 and bf16.
step_table() {
  python3 - "$log" <<'PY'
import json, sys
d = sys.argv[1]
try:
    b = {x["name"].split("/")[0]: x for x in json.load(open(f"{d}/llama_step_cuda.json"))["benchmarks"]}
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"llama_step_bench --device cuda left no result ({e}); see {d}/llama_step_cuda.log")
for step, gemm in (("lora_step", "sgemm_peak"), ("lora_step_tf32", "sgemm_peak_tf32")):
    if step in b and gemm in b:
        m, peak = b[step], b[gemm]["GFLOP/s"]
        print(f"milora {step:22s} {m['items_per_second']:10.0f} tokens/s  {m['GFLOP/s'] / 1e3:.1f} TFLOP/s "
              f"= {m['GFLOP/s'] / peak:.0%} of cuBLAS {gemm}'s {peak / 1e3:.1f}  device memory {m['gpu_used_MiB']:.0f} MiB")
for step in ("lora_step_bf16", "lora_step_bf16_weights", "lora_step_bf16_tf32"):  # --dtype bf16; weights alone. MFU against H100/H200's dense bf16 peak
    if step in b:
        m = b[step]
        print(f"milora {step:22s} {m['items_per_second']:10.0f} tokens/s  {m['GFLOP/s'] / 1e3:.1f} TFLOP/s "
              f"= {m['GFLOP/s'] / 989e3:.0%} of 989 (dense bf16)  device memory {m['gpu_used_MiB']:.0f} MiB, "
              f"saved activations {m['saved_act_MiB']:.0f} MiB, frozen weights {m['frozen_MiB']:.0f} MiB")
t = {}
for dt in ("f32", "tf32", "bf16"):
    mine = {"f32": "lora_step", "tf32": "lora_step_tf32", "bf16": "lora_step_bf16"}[dt]
    try:
        t = dict(l.strip().split("=", 1) for l in open(f"{d}/peft_step_{dt}.log") if "=" in l)
    except OSError:
        t = {}
    if "tokens_per_s" not in t or mine not in b:
        print(f"transformers+PEFT {dt}: no result (see {d}/peft_step_{dt}.log)")
        continue
    p = float(t["tokens_per_s"])
    print(f"transformers+PEFT {dt:5s}  {p:10.0f} tokens/s  peak allocated {float(t['peak_allocated_MiB']):.0f} MiB, "
          f"device memory {float(t['gpu_used_MiB']):.0f} MiB;  milora {mine} / this = {b[mine]['items_per_second'] / p:.2f}x")
print(t.get("versions", ""))
PY
}

torch_svd() {
  python3 - <<'PY'
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
}

run() {
  for exe in "${programs[@]}"; do
    [ -x "$exe" ] || { echo "no $exe: run 'bash scripts/gpu.sh build' first (and carry build/gpu)" >&2; exit 1; }
  done
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
  log="$(mktemp -d)"
  packed="${OUT:-$out}/gpu_logs.tar.gz"
  # whatever happens below, the logs come back in one file (the tiny runs' checkpoints stay behind)
  trap 'tar -czf "$packed" -C "$log" --exclude="./tiny/cpu*" --exclude="./tiny/gpu*" . 2>/dev/null || true' EXIT
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$log/stages.txt" || true
  local tiny="$root/tests/data/llama_tiny/model" shape
  echo '{"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
         "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}' \
    > "$log/llama_1b.json"
  shape="--config $log/llama_1b.json --batch 4 --seq 1024 --rank 16"
  local fails=()
  # correctness first: the backend's suite, the LLaMA parity suite, the tools against the CPU and PEFT
  stage cuda_tests 120 "$out/tests/milora_cuda_tests" || fails+=(cuda_tests)
  stage cuda_llama_tests 60 env MILORA_TEST_DATA="$root/tests/data" "$out/tests/milora_cuda_llama_tests" || fails+=(cuda_llama_tests)
  export -f tiny_checks torch_svd; export out root log
  stage tiny_checks 90 bash -c tiny_checks || fails+=(tiny_checks)
  # then the step against transformers + PEFT
  stage llama_step_cuda 180 "$out/benchmarks/llama_step_bench" $shape --device cuda --benchmark_format=json \
    --benchmark_out="$log/llama_step_cuda.json" --benchmark_out_format=json || fails+=(llama_step_cuda)
  # where the step's time goes: every LLaMA kernel timed by name (kernel_profile.hpp)
  stage llama_step_profile 60 env MILORA_CUDA_PROFILE=1 "$out/benchmarks/llama_step_bench" $shape --device cuda \
    --benchmark_filter='^lora_step/' || fails+=(llama_step_profile)
  stage llama_step_profile_bf16 60 env MILORA_CUDA_PROFILE=1 "$out/benchmarks/llama_step_bench" $shape --device cuda \
    --benchmark_filter='^lora_step_bf16_tf32/' || fails+=(llama_step_profile_bf16)
  stage peft_step_bf16 60 python3 "$root/benchmarks/peft_step.py" $shape --dtype bfloat16 || fails+=(peft_step_bf16)
  stage peft_step_tf32 60 python3 "$root/benchmarks/peft_step.py" $shape --dtype float32 --tf32 || fails+=(peft_step_tf32)
  stage peft_step_f32 60 python3 "$root/benchmarks/peft_step.py" $shape --dtype float32 || fails+=(peft_step_f32)
  step_table > "$log/step_table.txt" 2>&1 || true
  # decoding 256 tokens after a 32-token prompt, with the key/value cache and by recomputation
  stage generate_cuda 90 "$out/benchmarks/generate_bench" --config "$log/llama_1b.json" --device cuda \
    --benchmark_repetitions=2 || fails+=(generate_cuda)
  # last, the backend's benchmark and torch's SVD on the same GPU
  stage torch_svd 40 bash -c torch_svd || fails+=(torch_svd)
  stage cuda_bench 150 "$out/benchmarks/cuda_bench" --benchmark_repetitions="${MILORA_GPU_BENCH_REPS:-1}" || fails+=(cuda_bench)
  echo
  echo "== summary ($((SECONDS - run_start)) s; failed: ${fails[*]:-none})"
  cat "$log/stages.txt"
  grep -E "test cases:|assertions:" "$log/cuda_tests.log" "$log/cuda_llama_tests.log" || true
  grep -E "rel .*(ok|FAIL)" "$log/tiny_checks.log" || true
  cat "$log/step_table.txt"
  for p in llama_step_profile llama_step_profile_bf16; do
    echo "$p:"; sed -n '/MILORA_CUDA_PROFILE/,/total/p' "$log/$p.log" 2>/dev/null | head -25 || true
  done
  sed -n '/ratio: times slower/,$p' "$log/generate_cuda.log" 2>/dev/null || true
  cat "$log/torch_svd.log" 2>/dev/null || true
  sed -n '/ratio = time/,$p' "$log/cuda_bench.log" 2>/dev/null | head -60 || true
  [ ${#fails[@]} -eq 0 ]
}

case "$step" in
  build) build ;;
  run) run ;;
  all) build && run ;;
  *) echo "usage: bash scripts/gpu.sh [build|run]" >&2; exit 2 ;;
esac
