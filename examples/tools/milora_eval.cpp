// milora-eval: mean loss and perplexity of a LLaMA folder (with an optional PEFT adapter) on a data file,
// or its accuracy on a task.
//
//   milora-eval --model DIR [--adapter DIR] --data FILE [--seq 256] [--batch 4] [--device cpu|cuda]
//               [--dtype float32|bf16]
//   milora-eval --model DIR [--adapter DIR] --task FILE.jsonl [--limit N] [--max-new-tokens 256] [--stop S]
//
// The text is cut into consecutive windows of --seq tokens, each predicting its next tokens. A
// .jsonl file of examples (docs/data.md) is scored on what fine-tuning learns from it: the answers'
// tokens, one example per window (--train-on-prompt: every token). The last line of output is JSON:
// {"loss": ..., "perplexity": ..., "tokens": ...}.
//
// --task (llama/tasks.hpp): multiple choice scored by log-likelihood, {"acc", "acc_norm"}, or
// generation scored by exact match, {"exact_match"}; each {"value", "stderr", "ci95": [low, high],
// "hits", "n"} (Wilson's 95% interval).
#include <cmath>
#include <iostream>

#include "common/cli.hpp"
#include "common/options.hpp"
#include "llama/data.hpp"
#include "llama/inference.hpp"
#include "llama/instruction_data.hpp"
#include "llama/generation.hpp"
#include "llama/non_finite.hpp"
#include "llama/tasks.hpp"
#include "llama/trainer.hpp"

int main(int argc, char** argv) {
  milora::tools::InferenceOptions m;
  std::string data, task;
  milora::Index seq = 256, batch = 4, max_batches = 0, limit = 0;
  llama::GenerationOptions generation{.max_new_tokens = 256, .stop = {}};
  llama::InstructionOptions instruction;
  CLI::App app{"milora-eval: mean next-token loss and perplexity of a LLaMA (optionally with a LoRA adapter) on a data file."};
  milora::tools::add_inference_options(app, m);
  auto* data_option = app.add_option("--data", data, "text, uint32 token ids in a .u32 file, or examples in a .jsonl file (docs/data.md)")
                          ->check(CLI::ExistingFile);
  auto* task_option = app.add_option("--task", task, "a task (.jsonl): multiple choice or question/answer, scored by accuracy (docs/llama.md)")
                          ->check(CLI::ExistingFile)
                          ->excludes(data_option);
  data_option->excludes(task_option);
  app.add_option("--limit", limit, "--task: the first N examples (0: all)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--max-new-tokens", generation.max_new_tokens, "--task, generation: tokens per answer at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--stop", generation.stop, "--task, generation: end an answer before this string (repeatable; default a blank line)");
  app.add_flag("--train-on-prompt", instruction.train_on_prompt, ".jsonl data: score the prompts too, not only the answers");
  app.add_option("--prompt-format", instruction.prompt_format, ".jsonl data: auto, model or alpaca (as milora-finetune)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "model", "alpaca"}));
  app.add_option("--seq", seq, "tokens per window (at most max_position_embeddings)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "windows per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--max-batches", max_batches, "stop after this many batches (0: the whole file)")->capture_default_str()->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-eval", app, argc, argv, [&] {
    if (data.empty() == task.empty()) throw milora::value_error("give --data (loss and perplexity) or --task (accuracy)");
    llama::with_inference_model(m.model, m.adapter, m.device, m.dtype, "milora-eval", [&]<class BE>(auto& model) {
      const auto& cfg = model.config();
      const auto tokenizer = llama::Tokenizer::for_model(m.model, cfg.vocab_size);
      if (!task.empty()) {
        auto set = llama::read_task(task);
        if (limit > 0) {
          if (set.choice.size() > std::size_t(limit)) set.choice.resize(std::size_t(limit));
          if (set.generation.size() > std::size_t(limit)) set.generation.resize(std::size_t(limit));
        }
        nlohmann::json out = {{"task", task}, {"examples", set.size()}};
        if (set.multiple_choice()) {
          const auto scores = llama::score_choices(set.choice, [&](const std::string& c, const std::string& x) {
            const double ll = llama::continuation_loglik(model, tokenizer, c, x);
            if (!std::isfinite(ll)) throw milora::numerical_error("a log-likelihood is not finite");
            return ll;
          });
          out["acc"] = scores.acc.json();
          out["acc_norm"] = scores.acc_norm.json();
          std::cerr << "milora-eval: " << set.size() << " multiple-choice examples, acc " << scores.acc.value << " ["
                    << scores.acc.low << ", " << scores.acc.high << "], acc_norm " << scores.acc_norm.value << "\n";
        } else {
          if (generation.stop.empty()) generation.stop = {"\n\n"};
          const auto em = llama::score_generation(set.generation, [&](const std::string& prompt) {
            return llama::generate(model, tokenizer, tokenizer.encode(prompt), generation).text;
          });
          out["exact_match"] = em.json();
          std::cerr << "milora-eval: " << set.size() << " generation examples, exact match " << em.value << " [" << em.low << ", "
                    << em.high << "]\n";
        }
        std::cout << out.dump() << std::endl;
        return;
      }
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
