#!/usr/bin/env bash
# The build step behind the llama.cpp tests (tests/gguf/test_llama_cpp.cpp): fetches llama.cpp's
# prebuilt Node binding for linux-x64 (@fugood/llama.node with its CPU package only, not the CUDA
# and Vulkan builds npm would add) and @huggingface/gguf, pinned, into <cache>/node. Where npm or the
# registry cannot be reached it writes <cache>/skip_reason.txt instead and succeeds, so the build
# goes on and the tests report themselves skipped with that reason; the next build tries again.
#
# tests/gguf/prepare_llama_cpp.sh <cache> <stamp>
set -euo pipefail
cache=$1 stamp=$2
PACKAGES=(@fugood/llama.node@1.7.15 @fugood/node-llama-linux-x64@1.7.15 @huggingface/gguf@0.4.6)
mkdir -p "$cache/node"
rm -f "$cache/skip_reason.txt"
skip() { echo "$1" > "$cache/skip_reason.txt"; echo "prepare_llama_cpp: $1" >&2; exit 0; }
command -v npm >/dev/null && command -v node >/dev/null || skip "node and npm are not installed (Debian: nodejs, npm)"
timeout 60 npm ping >/dev/null 2>&1 || skip "the npm registry cannot be reached (npm ping failed)"
[ -f "$cache/node/package.json" ] || echo '{"private": true}' > "$cache/node/package.json"
# --ignore-scripts: the binding's postinstall only checks for a platform package, named here
(cd "$cache/node" && npm install --silent --no-audit --no-fund --no-save --omit=optional --ignore-scripts "${PACKAGES[@]}" >/dev/null)
touch "$stamp"
