#!/usr/bin/env bash
# Builds and runs the main demo (installs what is missing first): LoRA, PiSSA, MiLoRA and full
# fine-tuning compared on a small LLaMA pre-trained here on Debian's English `fortunes` texts,
# fine-tuned on its German ones (`fortunes-de`): how much each learns the new language (held-out
# loss) vs how much it forgets the English corpus (perplexity), over three seeds. Results, CSVs and plots go to
# build/demo/compare_inits/ (the pre-trained model is cached there; a second run skips pre-training).
# Extra arguments go to the demo (e.g. --seeds 1 --steps 100; see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/deps.sh" fortunes fortunes-de
cmake -S "$root" -B "$root/build/demo" -DCMAKE_BUILD_TYPE=Release \
  -DMILORA_BUILD_TESTS=OFF -DMILORA_BUILD_EXAMPLES=ON -DMILORA_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$root/build/demo" -j"$(nproc)" --target compare_inits
"$root/build/demo/examples/compare_inits/compare_inits" --out "$root/build/demo/compare_inits" "$@"
