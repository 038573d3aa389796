// Writes the reference encodings of the text tests: every tokenizer in <cache>/models, on every text
// of the corpus, encoded and decoded by transformers.js's tokenizers (@huggingface/tokenizers), an
// implementation independent of milora's.
//
// Besides the real files, it derives one variant the registry has no package for: "llama2_metaspace",
// LLaMA-2's vocabulary with Mistral-7B-v0.3's components (a Metaspace pre-tokenizer and decoder,
// prepend_scheme "first", instead of Prepend/Replace normalizers), so that path is checked too.
//
// It also renders every chat template (the fetched models' tokenizer_config.json, and the fixtures
// of chat_templates.json) on every conversation of conversations.json, with and without the
// generation prompt, by @huggingface/jinja (transformers.js's renderer), and encodes each text without
// special tokens (the template writes them), as apply_chat_template(tokenize=True) does.
//
// node reference_tokenizers.mjs <cache> <corpus.json> <chat_templates.json> <conversations.json> <out.json>
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [cache, corpusPath, templatesPath, conversationsPath, outPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(cache), "node", "package.json"));
const { Tokenizer } = require("@huggingface/tokenizers");
const { Template } = require("@huggingface/jinja");

const corpus = JSON.parse(fs.readFileSync(corpusPath, "utf8"));
// One long text (every entry, twice) so that whole-segment BPE (LLaMA-2, Gemma) meets long words.
corpus.push(corpus.concat(corpus).join("\n"));

const modelsDir = path.join(cache, "models");
const variant = path.join(modelsDir, "llama2_metaspace");
if (!fs.existsSync(path.join(variant, "tokenizer.json"))) {
  const t = JSON.parse(fs.readFileSync(path.join(modelsDir, "llama2", "tokenizer.json"), "utf8"));
  t.normalizer = null;
  t.pre_tokenizer = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
  t.decoder = { type: "Metaspace", replacement: "\u2581", prepend_scheme: "first", split: false };
  fs.mkdirSync(variant + ".tmp", { recursive: true });
  fs.writeFileSync(path.join(variant + ".tmp", "tokenizer.json"), JSON.stringify(t));
  fs.copyFileSync(path.join(modelsDir, "llama2", "tokenizer_config.json"), path.join(variant + ".tmp", "tokenizer_config.json"));
  fs.renameSync(variant + ".tmp", variant);
}

const out = { corpus, models: {}, chat: {} };
const tokenizers = {};
for (const name of fs.readdirSync(modelsDir).sort()) {
  const dir = path.join(modelsDir, name);
  if (!fs.existsSync(path.join(dir, "tokenizer.json"))) continue;
  const json = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const config = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  const tok = new Tokenizer(json, config);
  tokenizers[name] = { tok, config };
  out.models[name] = corpus.map((text) => {
    const ids = tok.encode(text).ids.map(Number);
    const plain = tok.encode(text, { add_special_tokens: false }).ids.map(Number);
    return {
      ids,
      plain,
      // transformers.js refuses to decode no ids; the empty text is what every decoder gives.
      decoded: ids.length ? tok.decode(ids, { skip_special_tokens: false }) : "",
      decoded_skip: ids.length ? tok.decode(ids, { skip_special_tokens: true }) : "",
    };
  });
}
// Chat templates: each fetched model's own, and the fixtures with the tokenizer they name.
const conversations = JSON.parse(fs.readFileSync(conversationsPath, "utf8"));
const templates = {};
for (const [name, { config }] of Object.entries(tokenizers))
  if (typeof config.chat_template === "string" && !name.endsWith("_metaspace"))
    templates[name] = { tokenizer: name, chat_template: config.chat_template, bos_token: config.bos_token, eos_token: config.eos_token };
for (const [name, t] of Object.entries(JSON.parse(fs.readFileSync(templatesPath, "utf8"))))
  if (!name.startsWith("_")) templates[name] = t;
const content = (t) => (t && typeof t === "object" ? t.content : t) ?? "";
for (const [name, t] of Object.entries(templates)) {
  const template = new Template(t.chat_template);
  const { tok } = tokenizers[t.tokenizer];
  out.chat[name] = { tokenizer: t.tokenizer, bos_token: content(t.bos_token), eos_token: content(t.eos_token),
                     chat_template: t.chat_template, cases: [] };
  conversations.forEach((messages, conversation) => {
    for (const add_generation_prompt of [false, true]) {
      const c = { conversation, add_generation_prompt };
      try {
        c.text = template.render({
          messages, add_generation_prompt, bos_token: content(t.bos_token), eos_token: content(t.eos_token),
        });  // raise_exception is @huggingface/jinja's own
        c.ids = tok.encode(c.text, { add_special_tokens: false }).ids.map(Number);
      } catch (e) {
        c.error = String(e.message ?? e);
      }
      out.chat[name].cases.push(c);
    }
  });
}
out.conversations = conversations;
fs.writeFileSync(outPath + ".tmp", JSON.stringify(out));
fs.renameSync(outPath + ".tmp", outPath);
