// milora-eval: mean loss and perplexity of a LLaMA folder (with an optional PEFT adapter) on a data file.
//
//   milora-eval --model DIR [--adapter DIR] --data FILE [--seq 256] [--batch 4] [--device cpu|cuda]
//               [--dtype float32|bf16]
//
// The text is cut into consecutive windows of --seq tokens, each predicting its next tokens. A
// .jsonl file of examples (docs/data.md) is scored on what fine-tuning learns from it: the answers'
// tokens, one example per window (--train-on-prompt: every token). The last line of output is JSON:
// {"loss": ..., "perplexity": ..., "tokens": ...}.
#include <cmath>
#include <iostream>

#include "common/cli.hpp"
#include "common/options.hpp"
#include "llama/data.hpp"
#include "llama/inference.hpp"
#include "llama/instruction_data.hpp"
#include "llama/non_finite.hpp"
#include "llama/trainer.hpp"

int main(int argc, char** argv) {
  milora::tools::InferenceOptions m;
  std::string data;
  milora::Index seq = 256, batch = 4, max_batches = 0;
  llama::InstructionOptions instruction;
  CLI::App app{"milora-eval: mean next-token loss and perplexity of a LLaMA (optionally with a LoRA adapter) on a data file."};
  milora::tools::add_inference_options(app, m);
  app.add_option("--data", data, "text, uint32 token ids in a .u32 file, or examples in a .jsonl file (docs/data.md)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_flag("--train-on-prompt", instruction.train_on_prompt, ".jsonl data: score the prompts too, not only the answers");
  app.add_option("--prompt-format", instruction.prompt_format, ".jsonl data: auto, model or alpaca (as milora-finetune)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "model", "alpaca"}));
  app.add_option("--seq", seq, "tokens per window (at most max_position_embeddings)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "windows per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-batches", max_batches, "stop after this many batches (0: the whole file)")->capture_default_str()->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-eval", app, argc, argv, [&] {
    llama::with_inference_model(m.model, m.adapter, m.device, m.dtype, "milora-eval", [&]<class BE>(auto& model) {
      const auto& cfg = model.config();
      const auto tokenizer = llama::Tokenizer::for_model(m.model, cfg.vocab_size);
      const milora::Index window = std::min(seq, cfg.max_position_embeddings);
      std::pair<double, milora::Index> result;
      if (std::filesystem::path(data).extension() == ".jsonl") {
        instruction.seq = window;
        const auto chat_template = llama::model_chat_template(m.model);
        const auto set = llama::read_instruction_data(data, tokenizer, cfg.vocab_size, instruction, chat_template ? &*chat_template : nullptr);
        result = llama::evaluate(model, set, batch, window, max_batches);
      } else {
        result = llama::evaluate(model, llama::load_tokens(data, tokenizer, cfg.vocab_size), batch, window, max_batches);
      }
      const auto [loss, n] = result;
      if (!std::isfinite(loss)) {  // the weights and adapter were checked on load: an overflow in the forward
        const auto where = llama::find_non_finite(model);
        throw milora::numerical_error(milora::detail::concat("the mean loss is ", loss, where.empty() ? "" : "; first: " + where));
      }
      std::cerr << "milora-eval: " << n << " tokens, mean loss " << loss << ", perplexity " << std::exp(loss) << "\n";
      std::cout << nlohmann::json{{"loss", loss}, {"perplexity", std::exp(loss)}, {"tokens", n}}.dump() << std::endl;
    });
  });
}
