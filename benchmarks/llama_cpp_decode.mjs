// llama.cpp's side of benchmarks/llama_cpp_decode.sh: greedy decoding of a GGUF model with
// @fugood/llama.node (llama.cpp's prebuilt CPU build), timed by llama.cpp itself.
//
//   node llama_cpp_decode.mjs <node_modules> <model.gguf> <prompt text> <new tokens> <threads> <repetitions>
//
// Prints one JSON line: the prompt's token count and, per repetition, llama.cpp's own timings
// (prompt_per_second, predicted_per_second: new tokens per second of the decoding loop).
import { createRequire } from 'node:module'
import path from 'node:path'

const [nodeModules, model, prompt, newTokens, threads, repetitions] = process.argv.slice(2)
const require = createRequire(path.join(nodeModules, 'x.js'))
const { loadModel } = require('@fugood/llama.node')
const ctx = await loadModel({ model, n_ctx: 1024, n_batch: 512, n_threads: Number(threads), n_gpu_layers: 0, flash_attn_type: 'off' })
const runs = []
for (let i = 0; i < Number(repetitions); ++i) {
  await ctx.clearCache(false)  // the prompt read again each time, as milora's benchmark does
  const r = await ctx.completion({
    prompt, temperature: 0, n_predict: Number(newTokens), ignore_eos: true, top_k: 0, top_p: 1, min_p: 0,
    dry_multiplier: 0, xtc_probability: 0, penalty_last_n: 0,
  })
  runs.push({ prompt_tokens: r.timings.prompt_n, new_tokens: r.timings.predicted_n, prompt_per_second: r.timings.prompt_per_second,
              predicted_per_second: r.timings.predicted_per_second })
  await new Promise((resolve) => setTimeout(resolve, 200))  // see tests/gguf/llama_cpp_check.mjs: llama.node's completion race
}
console.log(JSON.stringify({ runs }))
process.exit(0)
