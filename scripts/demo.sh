#!/usr/bin/env bash
# Builds and runs the main demo (installs what is missing first).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/deps.sh"
cmake -S "$root" -B "$root/build/demo" -DCMAKE_BUILD_TYPE=Release \
  -DMILORA_BUILD_TESTS=OFF -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/demo" -j"$(nproc)" --target quickstart
"$root/build/demo/examples/quickstart"
