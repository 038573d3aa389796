#!/usr/bin/env bash
# Fuzzes the readers of outside files with libFuzzer + AddressSanitizer + UBSan, each for a bounded
# time:  bash scripts/fuzz.sh [seconds per target = 60] [target ...]
# Targets (tests/fuzz/, contracts in tests/fuzz/contracts.hpp): safetensors_header, gguf_header, llama_config,
# adapter_config, token_file. Installs clang and its fuzzer runtime if missing, builds build/fuzz
# with clang++, starts each from a working copy of its committed seed corpus
# (tests/fuzz/corpus/<target>/) and prints the executions it survived. A crashing input is written
# to build/fuzz/crashes/<target>/; copy it into tests/fuzz/corpus/<target>/ with the fix, and the
# normal suite replays it from then on (tests/llama/test_fuzz_corpora.cpp). Exit status: non-zero
# when any target found a crash.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(safetensors_header gguf_header llama_config adapter_config token_file)
bash "$root/scripts/deps.sh" clang libclang-rt-14-dev

build="$root/build/fuzz"
CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMILORA_BUILD_FUZZERS=ON \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_USE_XTENSOR=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

cat > "$build/json.dict" <<'DICT'
"{"
"}"
"["
"]"
":"
","
"null"
"true"
"false"
"-1"
"0"
"1e400"
"18446744073709551615"
"9223372036854775808"
"\"r\""
"\"lora_alpha\""
"\"target_modules\""
"\"use_rslora\""
"\"use_dora\""
"\"bias\""
"\"alpha_pattern\""
"\"peft_type\""
"\"vocab_size\""
"\"hidden_size\""
"\"intermediate_size\""
"\"num_hidden_layers\""
"\"num_attention_heads\""
"\"num_key_value_heads\""
"\"head_dim\""
"\"rms_norm_eps\""
"\"rope_theta\""
"\"rope_scaling\""
"\"tie_word_embeddings\""
"\"model_type\""
DICT
cat > "$build/safetensors.dict" <<'DICT'
"{"
"}"
"\"dtype\""
"\"shape\""
"\"data_offsets\""
"\"__metadata__\""
"\"F32\""
"\"F16\""
"\"BF16\""
"\"F64\""
"\"I64\""
"[0,"
"]"
DICT

cat > "$build/gguf.dict" <<'DICT'
"GGUF"
"\x03\x00\x00\x00"
"\x08\x00\x00\x00"
"\x09\x00\x00\x00"
"\x1e\x00\x00\x00"
"\x20\x00\x00\x00\x00\x00\x00\x00"
"\xff\xff\xff\xff\xff\xff\xff\xff"
"general.alignment"
"general.architecture"
"tokenizer.ggml.tokens"
DICT

status=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  crashes="$build/crashes/$t"
  mkdir -p "$corpus" "$crashes"
  cp -n "$root/tests/fuzz/corpus/$t/"* "$corpus/"
  dict=()
  case "$t" in
    safetensors_header) dict=(-dict="$build/safetensors.dict") ;;
    gguf_header) dict=(-dict="$build/gguf.dict") ;;
    llama_config|adapter_config) dict=(-dict="$build/json.dict") ;;
  esac
  log="$build/$t.log"
  rc=0
  "$build/tests/fuzz_$t" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 -artifact_prefix="$crashes/" \
    "${dict[@]}" "$corpus" > "$log" 2>&1 || rc=$?
  runs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}')
  cov=$(grep -oE "cov: [0-9]+" "$log" | tail -1 | awk '{print $2}')
  echo "fuzz_$t: ${runs:-?} executions in ${seconds} s, coverage ${cov:-?} edges, corpus $(ls "$corpus" | wc -l) inputs, exit $rc"
  if [ "$rc" -ne 0 ]; then
    status=1
    grep -E "SUMMARY|==[0-9]+==ERROR|deadly signal" "$log" | head -5 || true
    echo "  crashing input(s): $(ls "$crashes")"
  fi
done
exit "$status"
