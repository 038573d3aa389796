#!/usr/bin/env bash
# Fuzzes the safetensors header parser with libFuzzer + AddressSanitizer + UBSan for a bounded time.
#   bash scripts/fuzz.sh [seconds=60]
# Installs clang and its fuzzer runtime if missing, builds build/fuzz with clang++, seeds a corpus
# with a valid file and a few near misses, and prints libFuzzer's final statistics (executions).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
source "$root/scripts/deps.sh"
milora_install_missing clang libclang-rt-14-dev

CXX=clang++ cmake -S "$root" -B "$root/build/fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMILORA_BUILD_FUZZERS=ON \
  -DMILORA_BUILD_TESTS=ON -DMILORA_BUILD_EXAMPLES=OFF -DMILORA_USE_XTENSOR=OFF >/dev/null
cmake --build "$root/build/fuzz" --target fuzz_safetensors_header -j"$(nproc)"

corpus="$root/build/fuzz/corpus"
mkdir -p "$corpus"
seed() {  # seed NAME HEADER DATA_BYTES: 8-byte little-endian length, header, zero data
  local n=${#2}
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x\\x00\\x00\\x00\\x00' $((n & 255)) $(((n >> 8) & 255)) $(((n >> 16) & 255)) $(((n >> 24) & 255)))" > "$corpus/$1"
  printf '%s' "$2" >> "$corpus/$1"
  head -c "$3" /dev/zero >> "$corpus/$1"
}
seed valid '{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}' 22
seed f16 '{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}' 8
seed overlap '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}' 8
seed scalar '{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}' 8

cat > "$root/build/fuzz/safetensors.dict" <<'DICT'
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
log="$root/build/fuzz/fuzz.log"
rc=0
"$root/build/fuzz/tests/fuzz_safetensors_header" -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
  -dict="$root/build/fuzz/safetensors.dict" "$corpus" > "$log" 2>&1 || rc=$?
grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs|SUMMARY|==[0-9]+==ERROR)" "$log" || true
tail -n 3 "$log"
exit "$rc"
