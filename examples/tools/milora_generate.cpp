// milora-generate: continue a prompt with a LLaMA folder (and an optional PEFT adapter).
//
//   milora-generate --model DIR [--adapter DIR] --prompt "Once upon a time" [--prompt ...] [--max-new-tokens 64]
//                   [--temperature 0.8 --top-k 40 --top-p 0.95 --repetition-penalty 1.1 --seed 1]
//                   [--stop "\n\n"] [--chat] [--no-kv-cache] [--device cpu|cuda] [--dtype float32|bf16]
//
// Temperature 0 is greedy decoding; the processors and their order are transformers'
// (llama/generation.hpp). Generation ends at the tokenizer's EOS, a --stop string (cut from the
// text) or --max-new-tokens. --chat renders the prompt as a user message through the model's chat
// template (tokenizer_config.json) with the generation prompt, as apply_chat_template does, and
// prints the answer only. Several --prompt are generated together as one batch (each gets what it
// gets alone). The model reads the prompt once into a key/value cache, then a token at a time;
// --no-kv-cache recomputes the whole context per token (the reference, slower). Output per prompt:
// the prompt and its continuation (with --chat, the answer), then a JSON line {"text",
// "new_tokens", "stopped_by"} (bytes that are not UTF-8 shown as U+FFFD there); --top-probs K adds
// "tokens" (the new ids) and "top_probs": per step the K most likely [id, probability] under
// softmax(logits), before any processor (what llama.cpp's n_probs reports at temperature 1).
#include <iostream>

#include "common/cli.hpp"
#include "common/options.hpp"
#include "llama/data.hpp"
#include "llama/generation.hpp"
#include "llama/inference.hpp"
#include "llama/instruction_data.hpp"

int main(int argc, char** argv) {
  milora::tools::InferenceOptions m;
  std::vector<std::string> prompts;
  bool no_kv_cache = false;
  bool chat = false;
  llama::GenerationOptions g;
  CLI::App app{"milora-generate: continue a prompt with a LLaMA (optionally with a LoRA adapter)."};
  milora::tools::add_inference_options(app, m);
  app.add_option("--prompt", prompts, "text to continue (repeatable: a batch generated together)")->required();
  app.add_option("--max-new-tokens", g.max_new_tokens, "tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--temperature", g.temperature, "0: greedy; otherwise sample softmax(logits / T)")->capture_default_str()->check(milora::tools::finite_non_negative);
  app.add_option("--top-k", g.top_k, "sample among the k most likely tokens (0: all)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--top-p", g.top_p, "sample among the most likely tokens whose probability reaches p (1: all)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--repetition-penalty", g.repetition_penalty, "divide (multiply, if negative) the logits of tokens already seen (1: none)")
      ->capture_default_str()
      ->check(milora::tools::finite_positive);
  app.add_option("--stop", g.stop, "end the text before this string (repeatable)");
  app.add_flag("--chat", chat, "apply the model's chat template to the prompt (a user message) and print the answer");
  app.add_flag("--no-kv-cache", no_kv_cache, "recompute the whole context for every new token (the reference)");
  app.add_option("--top-probs", g.top_probs, "report each step's K most likely tokens and probabilities in the JSON line")
      ->check(milora::tools::whole_number);
  app.add_option("--seed", g.seed, "sampling seed")->capture_default_str()->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-generate", app, argc, argv, [&] {
    g.kv_cache = !no_kv_cache;
    llama::with_inference_model(m.model, m.adapter, m.device, m.dtype, "milora-generate", [&]<class BE>(auto& model) {
      const auto tokenizer = llama::Tokenizer::for_model(m.model, model.config().vocab_size);
      std::vector<std::vector<llama::Token>> contexts;
      for (const auto& prompt : prompts) {
        if (chat) {
          const auto chat_template = llama::model_chat_template(m.model);
          if (!chat_template) throw milora::value_error("--chat: '" + m.model + "' has no chat template (tokenizer_config.json's chat_template)");
#if defined(MILORA_HAS_TOKENIZER_JSON)
          const nlohmann::json messages = nlohmann::json::array({{{"role", "user"}, {"content", prompt}}});
          contexts.push_back(tokenizer.encode(chat_template->render(messages, true), false));  // the template writes the special tokens
#else
          contexts.emplace_back();  // refused below: encodes to no tokens
#endif
        } else {
          contexts.push_back(tokenizer.encode(prompt));
        }
      }
      const auto outs = llama::generate_batch(model, tokenizer, std::move(contexts), g);
      for (std::size_t i = 0; i < outs.size(); ++i) {
        const auto& out = outs[i];
        std::cout << (chat ? out.text : prompts[i] + out.text) << std::endl;
        // a byte-level model may end inside a UTF-8 sequence: the JSON line shows such bytes as U+FFFD
        nlohmann::json line{{"text", out.text}, {"new_tokens", out.tokens.size()}, {"stopped_by", out.stopped_by}};
        if (g.top_probs > 0) {
          line["tokens"] = out.tokens;
          line["top_probs"] = out.top_probs;  // [[[id, p], ...] per step]
        }
        std::cout << line.dump(
                         -1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << std::endl;
      }
    });
  });
}
