#!/usr/bin/env python3
"""The reference LLaMA in PyTorch, as the C++ one is checked against it (the way llm.c checks
its C against train_gpt2.py).

The model is written out here in plain torch, operation for operation as transformers'
LlamaForCausalLM computes it (eager attention, float32), with LoRA applied the way PEFT's
lora.Linear does: y = base(x) + scale * lora_B(lora_A(x)), scale = lora_alpha / r, no dropout.
Neither transformers nor PEFT is needed: Debian ships python3-torch, not them.

  golden --out DIR   writes a Hugging Face model folder (DIR/model), a PEFT adapter folder
                     (DIR/adapter), and DIR/golden.safetensors: tokens, targets, logits, loss and
                     the gradient of every lora_A / lora_B (key + ".grad"). tests/llama reads them.
  bench ...          times LoRA fine-tuning steps (forward + backward + AdamW) on the CPU, for
                     benchmarks/llama_vs_pytorch.sh; prints tokens/s as its last line.

The configs of the models people fine-tune today, scaled down (golden --config NAME, see CONFIGS):
  llama     LLaMA-2 (plain RoPE, separate LM head)                  tests/data/llama_tiny
  llama3.2  LLaMA-3.1 / 3.2: rope_scaling "llama3", tied embeddings, head_dim != hidden / heads
                                                                   tests/data/llama32_tiny
  qwen2     Qwen2 / Qwen2.5: q/k/v biases, tied embeddings, rope_theta 1e6, sliding window off
                                                                   tests/data/qwen2_tiny
  mistral   Mistral-7B-v0.1: a sliding window (longer than the batch's sequences), GQA
                                                                   tests/data/mistral_tiny
  llama-bias  LLaMA with attention_bias and mlp_bias (every projection biased)
                                                                   tests/data/llama_bias_tiny

Regenerate the committed goldens with (Debian's python3-torch; its generator draws the same numbers
on every machine):
  for c in llama:llama_tiny llama3.2:llama32_tiny qwen2:qwen2_tiny mistral:mistral_tiny llama-bias:llama_bias_tiny; do
    /usr/bin/python3 tests/reference/llama_reference.py golden --config ${c%%:*} --out tests/data/${c##*:}; done
"""
import argparse
import json
import math
import os
import struct
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---- safetensors, written by hand (the format is a JSON header and raw little-endian bytes) ----
DTYPES = {torch.float32: "F32", torch.int32: "I32", torch.float64: "F64"}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---- the model -------------------------------------------------------------------------------
def rms_norm(x, w, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(variance + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def llama3_inv_freq(inv_freq, scaling):
    """transformers' _compute_llama3_parameters: low frequencies divided by `factor`, high ones kept,
    the band between interpolated by wavelength."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_cos_sin(seq, head_dim, theta, scaling=None):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is not None:
        assert scaling["rope_type"] == "llama3"
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    freqs = torch.arange(seq, dtype=torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Llama:
    """Weights in a dict under transformers' names; adapters in a dict {module: (A, B)}."""

    def __init__(self, config, weights, adapters=None, scale=1.0):
        self.c, self.w, self.adapters, self.scale = config, weights, adapters or {}, scale

    def linear(self, module, x):
        y = x @ self.w[module + ".weight"].T
        if module + ".bias" in self.w:  # PEFT: the base layer's output, bias included, plus the adapter's
            y = y + self.w[module + ".bias"]
        if module in self.adapters:
            a, b = self.adapters[module]
            y = y + self.scale * ((x @ a.T) @ b.T)
        return y

    def __call__(self, tokens):
        c = self.c
        bsz, seq = tokens.shape
        nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        eps = c["rms_norm_eps"]
        cos, sin = rope_cos_sin(seq, hd, c["rope_theta"], c.get("rope_scaling"))
        window = c.get("sliding_window") if c.get("model_type") == "mistral" or c.get("use_sliding_window") else None
        assert window is None or seq <= window  # then the window masks nothing (the C++ model refuses longer)
        mask = torch.full((seq, seq), float("-inf")).triu(1)
        x = self.w["model.embed_tokens.weight"][tokens]
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], eps)
            q = self.linear(p + "self_attn.q_proj", h).view(bsz, seq, nh, hd).transpose(1, 2)
            k = self.linear(p + "self_attn.k_proj", h).view(bsz, seq, nkv, hd).transpose(1, 2)
            v = self.linear(p + "self_attn.v_proj", h).view(bsz, seq, nkv, hd).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(nh // nkv, dim=1)  # transformers' repeat_kv
            v = v.repeat_interleave(nh // nkv, dim=1)
            att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1, dtype=torch.float32)
            o = (att @ v).transpose(1, 2).reshape(bsz, seq, nh * hd)
            x = x + self.linear(p + "self_attn.o_proj", o)
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], eps)
            m = torch.nn.functional.silu(self.linear(p + "mlp.gate_proj", h)) * self.linear(p + "mlp.up_proj", h)
            x = x + self.linear(p + "mlp.down_proj", m)
        x = rms_norm(x, self.w["model.norm.weight"], eps)
        head = self.w["model.embed_tokens.weight" if c.get("tie_word_embeddings") else "lm_head.weight"]
        return x @ head.T


def biased(c):
    """The projections with a bias: Qwen2's q/k/v always; LLaMA's as attention_bias (q, k, v, o) and
    mlp_bias (gate, up, down) say."""
    if c.get("model_type") == "qwen2":
        return {"q_proj", "k_proj", "v_proj"}
    return ({"q_proj", "k_proj", "v_proj", "o_proj"} if c.get("attention_bias") else set()) | \
        ({"gate_proj", "up_proj", "down_proj"} if c.get("mlp_bias") else set())


def weight_shapes(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    bias = biased(c)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                       p + "self_attn.o_proj.weight": (h, q), p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)})
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv), ("o_proj", h), ("gate_proj", i), ("up_proj", i),
                           ("down_proj", h)):
            if name in bias:
                shapes[p + ("mlp." if name in ("gate_proj", "up_proj", "down_proj") else "self_attn.") + name + ".bias"] = (rows,)
    shapes["model.norm.weight"] = (h,)
    if not c.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def random_weights(c, gen, std):
    w = {}
    for name, shape in weight_shapes(c).items():
        if name.endswith(".bias"):  # large enough that a bias left out (or added twice) fails every tolerance
            w[name] = 0.5 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # norms: around 1, not exactly 1, so that a kernel ignoring them fails
            w[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            w[name] = std * torch.randn(shape, generator=gen)
    return w


def adapter_modules(c, targets):
    mods = []
    for l in range(c["num_hidden_layers"]):
        for t in targets:
            mods.append(f"model.layers.{l}.{'mlp' if t in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{t}")
    return mods


LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
         "vocab_size": 256, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32"}
# The others are smaller (hidden 32; vocab 256, so the tools read text as bytes): the committed files stay small. The scaled-down
# rope_scaling keeps all three of llama3's bands at head_dim 16: wavelengths 6.3 (kept, < 64 / 4),
# 19.9 and 62.8 (interpolated), 199 and up (divided by the factor, > 64 / 1).
SMALL = dict(LLAMA, vocab_size=256, hidden_size=32, intermediate_size=96, head_dim=8, max_position_embeddings=128)
CONFIGS = {
    "llama": LLAMA,
    # head_dim 16 is not hidden_size / heads (48 / 4): the explicit head_dim must be used
    "llama3.2": dict(SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_size=48,
                     max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False,
                     mlp_bias=False, bos_token_id=1, eos_token_id=2,
                     rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64, "rope_type": "llama3"}),
    "qwen2": dict(SMALL, architectures=["Qwen2ForCausalLM"], model_type="qwen2", rms_norm_eps=1e-6, rope_theta=1000000.0,
                  tie_word_embeddings=True, use_sliding_window=False, sliding_window=128, max_window_layers=2),
    "mistral": dict(SMALL, architectures=["MistralForCausalLM"], model_type="mistral", num_attention_heads=4,
                    num_key_value_heads=1, head_dim=8, sliding_window=32),
    "llama-bias": dict(SMALL, attention_bias=True, mlp_bias=True),
}


def golden(args):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    written = CONFIGS[args.config]
    if args.config == "qwen2":  # Qwen2's config.json has no head_dim: hidden_size / num_attention_heads
        written = {k: v for k, v in written.items() if k != "head_dim"}
    c = dict(written, head_dim=CONFIGS[args.config]["head_dim"])
    rank, alpha = 4, 8
    w = random_weights(c, gen, 0.2)
    shapes = {}
    adapters = {}
    for m in adapter_modules(c, TARGETS):
        out_f, in_f = w[m + ".weight"].shape
        adapters[m] = (0.1 * torch.randn(rank, in_f, generator=gen), 0.1 * torch.randn(out_f, rank, generator=gen))
    for a, b in adapters.values():
        a.requires_grad_(True)
        b.requires_grad_(True)
    bsz, seq = 2, 16
    tokens = torch.randint(0, c["vocab_size"], (bsz, seq), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, c["vocab_size"], (bsz, seq), generator=gen, dtype=torch.int64)
    targets[0, 3] = -100  # ignore_index is honoured
    model = Llama(c, w, adapters, alpha / rank)
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, c["vocab_size"]), targets.view(-1), ignore_index=-100)
    loss.backward()

    os.makedirs(os.path.join(args.out, "model"), exist_ok=True)
    os.makedirs(os.path.join(args.out, "adapter"), exist_ok=True)
    with open(os.path.join(args.out, "model", "config.json"), "w") as f:
        json.dump(written, f, indent=2)
    save_safetensors(os.path.join(args.out, "model", "model.safetensors"), w, {"format": "pt"})
    peft = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": TARGETS, "lora_dropout": 0.0,
            "bias": "none", "task_type": "CAUSAL_LM", "base_model_name_or_path": os.path.basename(os.path.normpath(args.out)), "use_rslora": False}
    with open(os.path.join(args.out, "adapter", "adapter_config.json"), "w") as f:
        json.dump(peft, f, indent=2)
    factors = {}
    grads = {}
    for m, (a, b) in adapters.items():
        factors[f"base_model.model.{m}.lora_A.weight"] = a
        factors[f"base_model.model.{m}.lora_B.weight"] = b
        grads[f"base_model.model.{m}.lora_A.weight.grad"] = a.grad
        grads[f"base_model.model.{m}.lora_B.weight.grad"] = b.grad
    save_safetensors(os.path.join(args.out, "adapter", "adapter_model.safetensors"), factors, {"format": "pt"})
    g = {"tokens": tokens.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits.view(bsz * seq, -1),
         "loss": loss.detach().reshape(1)}
    g.update(grads)
    save_safetensors(os.path.join(args.out, "golden.safetensors"), g,
                     {"torch": torch.__version__, "generator": "tests/reference/llama_reference.py golden"})
    print(f"wrote {args.out}: loss {loss.item():.6f}")


def bench(args):
    """LoRA fine-tuning steps at a given config, timed after warm-up; prints tokens/s last."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c = json.load(open(args.config))
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("rms_norm_eps", 1e-6)  # transformers' LlamaConfig defaults
    c.setdefault("rope_theta", 10000.0)
    gen = torch.Generator().manual_seed(1)
    w = random_weights(c, gen, 0.02)
    adapters = {}
    for m in adapter_modules(c, args.targets.split(",")):
        out_f, in_f = w[m + ".weight"].shape
        adapters[m] = (torch.nn.Parameter(0.01 * torch.randn(args.rank, in_f, generator=gen)),
                       torch.nn.Parameter(torch.zeros(out_f, args.rank)))
    params = [p for ab in adapters.values() for p in ab]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model = Llama(c, w, adapters, args.alpha / args.rank)
    tokens = torch.randint(0, c["vocab_size"], (args.batch, args.seq + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step():
        opt.zero_grad(set_to_none=False)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    import resource
    print(f"peak_MiB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    print(f"tokens_per_s={args.batch * args.seq * args.steps / dt:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden")
    g.add_argument("--out", required=True)
    g.add_argument("--config", default="llama", choices=sorted(CONFIGS))
    b = sub.add_parser("bench")
    b.add_argument("--config", required=True)
    b.add_argument("--batch", type=int, default=4)
    b.add_argument("--seq", type=int, default=256)
    b.add_argument("--rank", type=int, default=16)
    b.add_argument("--alpha", type=float, default=32)
    b.add_argument("--targets", default=",".join(TARGETS))
    b.add_argument("--threads", type=int, default=os.cpu_count())
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    golden(args) if args.cmd == "golden" else bench(args)


if __name__ == "__main__":
    main()
