#!/usr/bin/env bash
# Tokens/s of one LoRA fine-tuning step (forward + backward + AdamW, rank 16 on all seven
# projections, float32, CPU) of the reference LLaMA against the PyTorch reference
# (tests/reference/llama_reference.py bench: the same model in plain torch, autograd, torch AdamW),
# same config, threads, batch and sequence length, in the same run. Prints both and the ratio.
#
#   bash benchmarks/llama_vs_pytorch.sh [15M|110M|CONFIG.json] [batch] [seq] [threads]
#
# The two configs are llama2.c's TinyStories models (vocab 32000): 15M = dim 288, 6 layers,
# 6 heads, hidden 768; 110M = dim 768, 12 layers, 12 heads, hidden 2048. Needs python3-torch
# (apt) and a build with benchmarks (build/x or build/test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
which="${1:-15M}" batch="${2:-4}" seq="${3:-256}" threads="${4:-$(nproc)}"
bench="$(ls "$root"/build/*/benchmarks/llama_step_bench 2>/dev/null | head -1)"
[ -x "$bench" ] || { echo "build llama_step_bench first (cmake -DMILORA_BUILD_BENCHMARKS=ON)"; exit 1; }
py=/usr/bin/python3
$py -c "import torch" 2>/dev/null || { echo "needs python3-torch: apt-get install python3-torch"; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
case "$which" in
  15M) echo '{"vocab_size":32000,"hidden_size":288,"intermediate_size":768,"num_hidden_layers":6,"num_attention_heads":6,"max_position_embeddings":1024}' > "$tmp/c.json" ;;
  110M) echo '{"vocab_size":32000,"hidden_size":768,"intermediate_size":2048,"num_hidden_layers":12,"num_attention_heads":12,"max_position_embeddings":1024}' > "$tmp/c.json" ;;
  *) cp "$which" "$tmp/c.json" ;;
esac
echo "== $which, batch $batch x seq $seq, $threads threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads "$bench" --config "$tmp/c.json" --batch "$batch" --seq "$seq" \
  --benchmark_format=json > "$tmp/milora.json" 2>/dev/null
OMP_NUM_THREADS=$threads $py "$root/tests/reference/llama_reference.py" bench --config "$tmp/c.json" --batch "$batch" \
  --seq "$seq" --threads "$threads" --steps 3 > "$tmp/torch.txt"
$py - "$tmp/milora.json" "$tmp/torch.txt" <<'PY'
import json, sys
b = {x["name"].split("/")[0]: x for x in json.load(open(sys.argv[1]))["benchmarks"]}
t = dict(l.strip().split("=") for l in open(sys.argv[2]) if "=" in l)
m, p = b["lora_step"]["items_per_second"], float(t["tokens_per_s"])
peak = b["sgemm_peak"]["GFLOP/s"]
print(f"milora   {m:10.1f} tokens/s  {b['lora_step']['GFLOP/s']:.1f} GFLOP/s = {b['lora_step']['GFLOP/s'] / peak:.0%} of sgemm's {peak:.1f}  peak RSS {b['lora_step']['peak_MiB']:.0f} MiB")
print(f"pytorch  {p:10.1f} tokens/s  peak RSS {float(t['peak_MiB']):.0f} MiB (includes the Python runtime)")
print(f"ratio milora / pytorch: {m / p:.2f}x")
PY
