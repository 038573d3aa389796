#!/usr/bin/env bash
# milora's greedy decoding (key/value cache, generate_bench) against llama.cpp's on the same model,
# in one run on the same machine: generate_bench writes the random model it times (4 layers, hidden
# 256, 32000 tokens, float32), milora-merge exports it as an F32 GGUF with LLaMA-2's tokenizer, and
# llama.cpp (@fugood/llama.node's prebuilt CPU build, fetched from npm like the tests' copy) decodes
# the same number of tokens after a prompt of the same length, with the same threads, from F32, F16
# and Q8_0 files (milora decodes the float32 model).
#
#   bash benchmarks/llama_cpp_decode.sh [build folder with benchmarks and tools = build/bench] [new tokens = 256] [threads = 2]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$(cd "${1:-$root/build/bench}" && pwd)"
new="${2:-256}"
threads="${3:-2}"
work="$build/llama_cpp_decode"
mkdir -p "$work"
for f in "$build/benchmarks/generate_bench" "$build/examples/tools/milora-merge"; do
  [ -x "$f" ] || { echo "llama_cpp_decode: $f missing: configure with -DMILORA_BUILD_BENCHMARKS=ON and build generate_bench and milora-merge" >&2; exit 1; }
done
bash "$root/tests/gguf/prepare_llama_cpp.sh" "$work/cache" "$work/cache/fetched.stamp"
[ -f "$work/cache/skip_reason.txt" ] && { cat "$work/cache/skip_reason.txt" >&2; exit 77; }
bash "$root/tests/text/fetch_references.sh" "$work/text"

rm -rf "$work/model" "$work"/model-*.gguf
"$build/benchmarks/generate_bench" --save-model "$work/model"
cp "$work/text/models/llama2/tokenizer.json" "$work/text/models/llama2/tokenizer_config.json" "$work/model/"
prompt="low rank adapters train the minor singular subspace of each weight while the principal one stays frozen"
prompt_tokens=0
for type in f32 f16 q8_0; do
  "$build/examples/tools/milora-merge" --model "$work/model" --format gguf --outtype "$type" --out "$work/model-$type.gguf" 2>/dev/null
  runs=$(node "$root/benchmarks/llama_cpp_decode.mjs" "$work/cache/node/node_modules" "$work/model-$type.gguf" "$prompt" "$new" "$threads" 3 2>/dev/null | tail -1)
  echo "llama.cpp $type: $runs"
  prompt_tokens=$(echo "$runs" | grep -oE '"prompt_tokens":[0-9]+' | head -1 | cut -d: -f2)
done
# milora on the float32 model, the prompt as long as llama.cpp's
OPENBLAS_NUM_THREADS="$threads" "$build/benchmarks/generate_bench" --prompt "$prompt_tokens" --new "$new" --benchmark_filter=kv_cache \
  --benchmark_repetitions=3 --benchmark_report_aggregates_only=true --benchmark_color=false 2>&1 | grep -E "decode/kv_cache" || true
