// transformers.js's side of tokenizer_bench: encodes a text file with one model's tokenizer.json
// `passes` times after one warm-up pass and prints the fastest pass in seconds (loading excluded).
//
// node tokenizer_bench.mjs <references cache> <model> <text file> <passes>
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [cache, model, textPath, passes] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(cache), "node", "package.json"));
const { Tokenizer } = require("@huggingface/tokenizers");
const dir = path.join(cache, "models", model);
const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
                          JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
const text = fs.readFileSync(textPath, "utf8");
let ids = tok.encode(text).ids.length;  // warm-up (and the BPE cache, as the C++ side's)
let best = Infinity;
for (let i = 0; i < Number(passes); ++i) {
  const t0 = process.hrtime.bigint();
  ids = tok.encode(text).ids.length;
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
console.log(JSON.stringify({ seconds: best, ids }));
