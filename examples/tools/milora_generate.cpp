// milora-generate: continue a prompt with a LLaMA folder (and an optional PEFT adapter).
//
//   milora-generate --model DIR [--adapter DIR] --prompt "Once upon a time" [--max-new-tokens 64]
//                   [--temperature 0.8 --top-k 40 --seed 1] [--device cpu|cuda] [--dtype float32|bf16]
//
// Temperature 0 is greedy decoding. Each new token re-runs the model on the whole context (no KV
// cache: this is the reference, written to be read); the context keeps the last
// max_position_embeddings tokens.
#include <algorithm>
#include <cmath>
#include <iostream>

#include "common/cli.hpp"
#include "common/options.hpp"
#include "llama/data.hpp"
#include "llama/inference.hpp"
#include "llama/non_finite.hpp"

int main(int argc, char** argv) {
  milora::tools::InferenceOptions m;
  std::string prompt;
  milora::Index max_new = 64, top_k = 0;
  double temperature = 0;
  std::uint64_t seed = 0;
  CLI::App app{"milora-generate: continue a prompt with a LLaMA (optionally with a LoRA adapter)."};
  milora::tools::add_inference_options(app, m);
  app.add_option("--prompt", prompt, "text to continue")->required();
  app.add_option("--max-new-tokens", max_new, "tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--temperature", temperature, "0: greedy; otherwise sample softmax(logits / T)")->capture_default_str()->check(milora::tools::finite_non_negative);
  app.add_option("--top-k", top_k, "sample among the k most likely tokens (0: all)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--seed", seed, "sampling seed")->capture_default_str()->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-generate", app, argc, argv, [&] {
    llama::with_inference_model(m.model, m.adapter, m.device, m.dtype, "milora-generate", [&]<class BE>(auto& model) {
      const auto& cfg = model.config();
      const auto tokenizer = llama::Tokenizer::for_model(m.model, cfg.vocab_size);
      std::vector<llama::Token> context = tokenizer.encode(prompt);
      if (context.empty()) throw milora::value_error("the prompt encodes to no tokens");
      std::vector<llama::Token> generated;
      for (milora::Index i = 0; i < max_new; ++i) {
        const milora::Index n = std::min<milora::Index>(milora::Index(context.size()), cfg.max_position_embeddings);
        const std::span<const llama::Token> window(context.data() + context.size() - std::size_t(n), std::size_t(n));
        model.forward(window, 1, n);
        // Only the last position's logits come to the host (on a GPU the rest stay there).
        const std::vector<float> last = BE::to_host(BE::cblock(model.logits(), n - 1, 0, 1, cfg.vocab_size));
        if (!std::all_of(last.begin(), last.end(), [](float x) { return std::isfinite(x); })) {
          const auto where = llama::find_non_finite(model);
          throw milora::numerical_error(milora::detail::concat("the logits of new token ", i, " are not finite",
                                                               where.empty() ? "" : "; first: " + where));
        }
        const llama::Token next = llama::sample(last, temperature, top_k, seed, std::uint64_t(i));
        context.push_back(next);
        generated.push_back(next);
      }
      std::cout << prompt << tokenizer.decode(generated) << std::endl;
    });
  });
}
