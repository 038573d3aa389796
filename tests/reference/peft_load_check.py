#!/usr/bin/env python3
"""Does an adapter milora wrote load in PEFT and compute what milora computes?

Loads a Hugging Face LLaMA folder with transformers, puts a PEFT adapter folder on it with
PeftModel.from_pretrained (for a PiSSA / MiLoRA checkpoint of milora-finetune: its plain_lora/
folder, the form that fits the original model), and prints the mean next-token loss over a .u32
token file cut into windows exactly as milora-eval cuts it (llama::evaluate: windows of --seq
tokens starting at multiples of --seq, each predicting the token after each position, --batch
windows per forward). scripts/gpu.sh compares the number with milora-eval's on the same files.

    python3 tests/reference/peft_load_check.py --model DIR --adapter DIR --data FILE.u32
                                               [--seq 32] [--batch 2] [--device cuda|cpu]
                                               [--dtype float32|bfloat16]

The last line is JSON: {"loss": ..., "tokens": ...}.
"""
import argparse
import array
import json
import sys

import torch


def read_u32(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) == 0 or len(raw) % 4 != 0:
        raise SystemExit(f"{path}: {len(raw)} bytes, not a non-empty multiple of 4")
    ids = array.array("I")
    ids.frombytes(raw)
    if sys.byteorder != "little":
        ids.byteswap()
    return torch.tensor(ids.tolist(), dtype=torch.long)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    a = ap.parse_args()

    from peft import PeftModel
    from transformers import LlamaForCausalLM

    dtype = getattr(torch, a.dtype)
    base = LlamaForCausalLM.from_pretrained(a.model, torch_dtype=dtype).to(a.device)
    model = PeftModel.from_pretrained(base, a.adapter).to(a.device)
    model.eval()
    tokens = read_u32(a.data)
    vocab = base.config.vocab_size
    if int(tokens.max()) >= vocab:
        raise SystemExit(f"{a.data}: token {int(tokens.max())} is outside the vocabulary of {vocab}")
    windows = (len(tokens) - 1) // a.seq
    if windows <= 0:
        raise SystemExit(f"{a.data}: {len(tokens)} tokens; needs at least {a.seq + 1}")
    total, counted = 0.0, 0
    with torch.no_grad():
        for w in range(0, windows, a.batch):
            b = min(a.batch, windows - w)
            x = tokens[w * a.seq:(w + b) * a.seq].reshape(b, a.seq).to(a.device)
            y = tokens[w * a.seq + 1:(w + b) * a.seq + 1].reshape(b, a.seq).to(a.device)
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
            total += float(loss) * b * a.seq
            counted += b * a.seq
    print(json.dumps({"loss": total / counted, "tokens": counted}))


if __name__ == "__main__":
    main()
