// The llama.cpp side of tests/gguf/test_llama_cpp.cpp: runs milora's GGUF files in llama.cpp
// (@fugood/llama.node, its prebuilt CPU build) and parses them with @huggingface/gguf, an
// independent reader, then prints what they said as one JSON object.
//
//   node llama_cpp_check.mjs <node_modules folder> <job.json> <result.json>
//
// (the result goes to a file: llama.cpp logs to stdout)
//
// job: {"runs": [{"name", "model", "loras": [paths], "prompts": [texts], "n_predict", "n_probs"}],
//       "files": [GGUF paths]}
// out: {"runs": {name: [{"prompt_tokens", "greedy_text", "greedy_steps": [tok_str...],
//                        "first_probs": [[tok_str, prob]...]}]},
//       "files": {path: {"metadata": {key: {"type", "subType", "value"}}, "tensors": [{name, shape, dtype, offset}],
//                        "tensorDataOffset"}}}
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'

const [nodeModules, jobPath, resultPath] = process.argv.slice(2)
const require = createRequire(path.join(nodeModules, 'x.js'))
const { loadModel } = require('@fugood/llama.node')
const { gguf } = await import(path.join(nodeModules, '@huggingface/gguf/dist/index.js'))
const job = JSON.parse(readFileSync(jobPath, 'utf8'))

// Every filter off: what llama.cpp samples from (and reports with n_probs) is softmax(logits).
const open = {
  top_k: 0, top_p: 1, min_p: 0, typical_p: 1, xtc_probability: 0, dry_multiplier: 0, penalty_last_n: 0,
  penalty_repeat: 1, top_n_sigma: -1, mirostat: 0, seed: 1,
}

// llama.node 1.7.15 queues a completion's worker before it records it as the one in progress and
// registers the hook that clears that record, so a worker that finishes first (a one-token
// completion of a cached prompt, on a machine busy enough to preempt the main thread) leaves the
// record set: the next completion is refused ("Another completion is in progress") and release()
// touches the freed worker. One thread per context (no helper thread competing with the main one
// for the cores) makes this rare; the test runs this script again when it happens.
const complete = (ctx, options) => ctx.completion(options)

const out = { runs: {}, files: {} }
for (const run of job.runs) {
  const ctx = await loadModel({
    // float32 keys and values (the default cache is f16) and no flash attention: llama.cpp in float32
    // throughout, as milora computes
    model: run.model, n_ctx: 512, n_batch: 512, n_threads: 1, n_gpu_layers: 0, use_mmap: true,
    cache_type_k: 'f32', cache_type_v: 'f32', flash_attn_type: 'off',
    lora_list: run.loras.map((p) => ({ path: p, scaled: 1.0 })),
  })
  const results = []
  // completion_probabilities holds the steps of the context's earlier completions too: the entries
  // after those seen so far are this completion's
  let seen = 0
  const steps = (r) => {
    const all = r.completion_probabilities ?? []
    const mine = all.slice(seen)
    seen = all.length
    return mine
  }
  for (const prompt of run.prompts) {
    const tokens = await ctx.tokenize(prompt)
    const greedy = await complete(ctx, { ...open, prompt, temperature: 0, n_predict: run.n_predict, n_probs: 1, ignore_eos: false })
    const greedySteps = steps(greedy)
    const first = await complete(ctx, { ...open, prompt, temperature: 1, n_predict: 1, n_probs: run.n_probs })
    results.push({
      prompt_tokens: Array.from(tokens.tokens),
      greedy_text: greedy.text,
      greedy_steps: greedySteps.map((s) => s.content),
      first_probs: steps(first)[0]?.probs.map((p) => [p.tok_str, p.prob]) ?? [],
    })
  }
  // no ctx.release(): llama.node 1.7.15 crashes in it (a segfault in ~llama_context); the process ends instead
  out.runs[run.name] = results
}

const plain = (v) => (typeof v === 'bigint' ? Number(v) : Array.isArray(v) ? v.map(plain) : v)
for (const file of job.files) {
  const g = await gguf(file, { allowLocalFile: true, typedMetadata: true })
  const metadata = {}
  for (const [k, v] of Object.entries(g.typedMetadata)) metadata[k] = { type: v.type, subType: v.subType ?? null, value: plain(v.value) }
  out.files[file] = {
    metadata,
    tensors: g.tensorInfos.map((t) => ({ name: t.name, shape: t.shape.map(Number), dtype: t.dtype, offset: Number(t.offset) })),
    tensorDataOffset: Number(g.tensorDataOffset),
  }
}
writeFileSync(resultPath, JSON.stringify(out))
process.exit(0)
