#!/usr/bin/env python3
"""The GPU baseline of the reference LLaMA: one LoRA fine-tuning step of Hugging Face transformers' LlamaForCausalLM
with PEFT, on a GPU, for the config llama_step_bench runs (scripts/gpu.sh runs both and prints the
ratio).

The step is what milora's Trainer::train_step does: forward on batch x seq tokens, mean next-token
cross-entropy (in float), backward, clip the adapter gradients' global norm to 1, AdamW (lr 1e-4, no
weight decay) over the adapter parameters only; LoRA rank r, alpha 2r, dropout 0, on all seven
projections. Weights are random (only the shapes matter for the time). transformers picks its
default attention (SDPA: a fused kernel, no seq x seq matrix kept).

    python3 benchmarks/peft_step.py --config CONFIG.json [--batch 4 --seq 1024 --rank 16]
                                    [--dtype float32|bfloat16] [--tf32] [--steps 3]

Prints key=value lines: tokens_per_s, step_ms, peak_allocated_MiB (torch.cuda.max_memory_allocated),
gpu_used_MiB (cudaMemGetInfo after the steps, the CUDA context included, as llama_step_bench
reports it), and the versions used.
"""
import argparse
import json
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a LLaMA config.json (the keys llama_step_bench reads)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="float32 products on tensor cores (allow_tf32)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        raise SystemExit("peft_step.py: no CUDA device")
    with open(a.config) as f:
        c = json.load(f)
    keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
            "head_dim"]
    config = LlamaConfig(**{k: c[k] for k in keys if k in c})
    config.use_cache = False
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    dev = torch.device("cuda")
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, bias="none",
                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(0, config.vocab_size, (a.batch, a.seq + 1), device=dev)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step():
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, config.vocab_size), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step()  # warm-up: cuBLAS handles, kernels, the optimizer state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t
    free, total = torch.cuda.mem_get_info()
    print(f"tokens_per_s={a.batch * a.seq * a.steps / elapsed}")
    print(f"step_ms={elapsed / a.steps * 1e3}")
    print(f"peak_allocated_MiB={torch.cuda.max_memory_allocated() / 2**20}")
    print(f"gpu_used_MiB={(total - free) / 2**20}")
    print(f"trainable_params={sum(p.numel() for p in params)}")
    print(f"tf32={a.tf32}")
    print(f"versions=torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
          f"attention {getattr(model.config, '_attn_implementation', '?')}, {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
