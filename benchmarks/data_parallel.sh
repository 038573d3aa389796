#!/usr/bin/env bash
# Data-parallel fine-tuning on one host: tokens/s of milora-finetune as 2 ranks under mpirun (each
# with half the cores' BLAS threads) against 1 rank with all of them and --accum 2, the same global
# batch, in the same run. Each side is timed at two step counts and the difference taken, so that
# loading, the MiLoRA init and MPI's start-up cancel; the pair is repeated and the fastest kept.
#
#   bash benchmarks/data_parallel.sh [repetitions]
#
# The model is a random byte-level LLaMA (vocab 256, hidden 256, 4 layers, 4 heads, MLP 688: 3.3 M
# parameters) written here in safetensors by plain python3; MiLoRA r = 16 on all seven projections,
# batch 4 x 256 per rank. Needs a build with the tools and MPI (build/x or build/test; or
# MILORA_FINETUNE=path/to/milora-finetune).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reps="${1:-3}"
tool="${MILORA_FINETUNE:-$(ls "$root"/build/*/examples/tools/milora-finetune 2>/dev/null | head -1)}"
[ -x "$tool" ] || { echo "build milora-finetune first"; exit 1; }
command -v mpirun >/dev/null || { echo "needs Open MPI: apt-get install libopenmpi-dev openmpi-bin"; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/model" <<'PY'
import json, os, random, struct, sys
out = sys.argv[1]; os.makedirs(out)
c = {"vocab_size": 256, "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
     "num_attention_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5}
h, m, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
shapes = [("model.embed_tokens.weight", (v, h))]
for l in range(c["num_hidden_layers"]):
    p = f"model.layers.{l}."
    shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    shapes += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in "qkvo"]
    shapes += [(p + "mlp.gate_proj.weight", (m, h)), (p + "mlp.up_proj.weight", (m, h)), (p + "mlp.down_proj.weight", (h, m))]
shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
rng = random.Random(1); header = {}; blobs = []; offset = 0
for name, shape in shapes:
    n = 1
    for d in shape: n *= d
    vals = [1.0] * n if name.endswith("norm.weight") else [rng.gauss(0, 0.02) for _ in range(n)]
    blob = struct.pack(f"<{n}f", *vals)
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob); offset += len(blob)
hb = json.dumps(header).encode(); hb += b" " * (-len(hb) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hb))); f.write(hb); [f.write(b) for b in blobs]
json.dump(c, open(os.path.join(out, "config.json"), "w"))
words = "low rank adapters train the minor singular subspace of each weight".split()
open(os.path.join(os.path.dirname(out), "train.txt"), "w").write(" ".join(words[(i * 7 + i // 3) % len(words)] for i in range(60000)))
PY
python3 - "$tool" "$tmp" "$reps" <<'PY'
import os, shutil, subprocess, sys, time
tool, tmp, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cores = os.cpu_count(); half = max(1, cores // 2)
args = ["--model", f"{tmp}/model", "--data", f"{tmp}/train.txt", "--method", "milora", "--rank", "16",
        "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--batch", "4", "--seq", "256",
        "--lr", "1e-4", "--quiet", "--val-fraction", "0"]
def run(side, steps):  # wall seconds of one run
    shutil.rmtree(f"{tmp}/out", ignore_errors=True)
    common = args + ["--steps", str(steps), "--out", f"{tmp}/out"]
    if side == 1:
        cmd, env = [tool] + common + ["--accum", "2"], dict(os.environ, OPENBLAS_NUM_THREADS=str(cores))
    else:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader",
               "-x", f"OPENBLAS_NUM_THREADS={half}", "-np", "2", tool] + common
        env = dict(os.environ)
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0
short, long_ = 2, 12
best = {1: float("inf"), 2: float("inf")}
for _ in range(reps):
    for side in (1, 2):  # interleaved: both see the same machine
        best[side] = min(best[side], run(side, long_) - run(side, short))
tokens = (long_ - short) * 2 * 4 * 256
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"== {cpu}, {cores} cores; {long_ - short} steps of 2 x 4 x 256 tokens, best of {reps}")
print(f"1 rank, {cores} threads, --accum 2: {tokens / best[1]:8.1f} tokens/s ({best[1]:.2f} s)")
print(f"2 ranks, {half} thread(s) each:    {tokens / best[2]:8.1f} tokens/s ({best[2]:.2f} s)")
print(f"ratio (2 ranks / 1 rank):        {best[1] / best[2]:8.3f}")
PY
