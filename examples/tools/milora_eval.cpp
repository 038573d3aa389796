// milora-eval: mean loss and perplexity of a LLaMA folder (with an optional PEFT adapter) on a data file.
//
//   milora-eval --model DIR [--adapter DIR] --data FILE [--seq 256] [--batch 4] [--device cpu|cuda]
//               [--dtype float32|bf16]
//
// The text is cut into consecutive windows of --seq tokens, each predicting its next tokens; the
// last line of output is JSON: {"loss": ..., "perplexity": ..., "tokens": ...}.
#include <cmath>
#include <iostream>

#include "common/cli.hpp"
#include "common/options.hpp"
#include "llama/data.hpp"
#include "llama/inference.hpp"
#include "llama/non_finite.hpp"
#include "llama/trainer.hpp"

int main(int argc, char** argv) {
  milora::tools::InferenceOptions m;
  std::string data;
  milora::Index seq = 256, batch = 4, max_batches = 0;
  CLI::App app{"milora-eval: mean next-token loss and perplexity of a LLaMA (optionally with a LoRA adapter) on a data file."};
  milora::tools::add_inference_options(app, m);
  app.add_option("--data", data, "text, or uint32 token ids in a .u32 file")->required()->check(CLI::ExistingFile);
  app.add_option("--seq", seq, "tokens per window (at most max_position_embeddings)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "windows per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-batches", max_batches, "stop after this many batches (0: the whole file)")->capture_default_str()->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-eval", app, argc, argv, [&] {
    llama::with_inference_model(m.model, m.adapter, m.device, m.dtype, "milora-eval", [&]<class BE>(auto& model) {
      const auto& cfg = model.config();
      const auto tokens = llama::load_tokens(data, llama::Tokenizer::for_model(m.model, cfg.vocab_size), cfg.vocab_size);
      const auto [loss, n] = llama::evaluate(model, tokens, batch, std::min(seq, cfg.max_position_embeddings), max_batches);
      if (!std::isfinite(loss)) {  // the weights and adapter were checked on load: an overflow in the forward
        const auto where = llama::find_non_finite(model);
        throw milora::numerical_error(milora::detail::concat("the mean loss is ", loss, where.empty() ? "" : "; first: " + where));
      }
      std::cerr << "milora-eval: " << n << " tokens, mean loss " << loss << ", perplexity " << std::exp(loss) << "\n";
      std::cout << nlohmann::json{{"loss", loss}, {"perplexity", std::exp(loss)}, {"tokens", n}}.dump() << std::endl;
    });
  });
}
