// milora-finetune's work, templated on the backend (see milora_finetune.cpp for the tool): the
// options, add_adapters_for (the init policy that --method and --solver name, calibrated where it
// is data-driven), finetune<BE, Weights> (load, initialise the adapters, train, print the JSON
// line) and run_on<BE>, which picks the frozen weights' storage from --dtype.
//
// The model and its trainer are compiled once per backend and storage: the adapters hold their
// policy as an AnyInit, so only add_adapters_for is instantiated per policy. A header so that the CPU and the
// CUDA instantiations compile in two translation units (milora_finetune.cpp and
// milora_finetune_cuda.cpp), in parallel.
#pragma once

#include <iostream>
#include <string>

#include "common/cli.hpp"
#include "llama/calibration.hpp"
#include "llama/checkpoint_folder.hpp"
#include "llama/device.hpp"
#include "llama/instruction_data.hpp"
#include "llama/trainer.hpp"
#include "common/job.hpp"
#if defined(MILORA_HAS_NCCL) && defined(MILORA_LLAMA_CUDA)
#include "llama/data_parallel_nccl.hpp"
#define MILORA_FINETUNE_NCCL 1
#endif

namespace llama::finetune {

using milora::Index;
using milora::detail::concat;
namespace fs = std::filesystem;

struct Options {
  std::string model, data, val_data, method = "milora", solver = "exact", out, resume, device = "cpu", dtype = "float32";
  std::string targets = "q_proj,k_proj,v_proj,up_proj,down_proj";  // MiLoRA's and PiSSA's experiments
  Index rank = 16;
  Index calibration_batches = 8;  // corda-kpm / corda-ipm / eva / lora-ga: batches of --data they see
  double alpha = 0;  // 0: alpha = 2 * rank
  double val_fraction = 0.1;
  double epochs = 0;  // > 0: --steps from the number of examples (JSON-lines data)
  bool pack = false;  // JSON-lines data: several examples per row
  llama::InstructionOptions instruction;
  std::uint64_t seed = 0;
  bool quiet = false;
  bool tf32 = false;
  llama::TrainConfig train;
  milora::tools::Job job;   // the job this process is one rank of (mpirun / srun; main() joins it)
  Index check_every = 10;  // steps between comparisons of the ranks' parameters
#if defined(MILORA_FINETUNE_NCCL)
  milora::distributed::NcclCommunicator* nccl = nullptr;  // --comm nccl
#endif
};

/// Where a rank's messages go: stderr on rank 0, nowhere on the others (one job, one log).
inline std::ostream& note(const Options& o) {
  static std::ostream nowhere(nullptr);
  return o.job.rank == 0 ? std::cerr : nowhere;
}

/// The replicas of this rank's job on backend BE (null: one process): NCCL on the GPUs with --comm
/// nccl, else MPI with the gradients summed on the host.
template <class BE>
std::shared_ptr<llama::Replicas<BE>> replicas_for([[maybe_unused]] const Options& o) {
#if defined(MILORA_FINETUNE_NCCL)
  if constexpr (std::is_same_v<BE, milora::CudaBackend<float>>)
    if (o.nccl != nullptr) return std::make_shared<llama::NcclReplicas<float>>(*o.nccl);
#endif
#if defined(MILORA_HAS_MPI)
  if (o.job.mpi != nullptr)
    return std::make_shared<llama::CommunicatorReplicas<BE, milora::distributed::MpiCommunicator>>(*o.job.mpi);
#endif
  return nullptr;
}

/// A test's fault (MILORA_TEST_FAULT="RANK:BATCH"): rank RANK throws when it reads its micro-batch
/// number BATCH, as a rank whose disk or data fails would, while the others wait in the step's
/// reduction. Used by tests/llama/test_distributed.cpp to check that such a job ends, naming the
/// rank; unset, the loader is passed through.
class FaultyBatches final : public llama::Batches {
 public:
  FaultyBatches(std::unique_ptr<llama::Batches> inner, Index fail_at) : inner_(std::move(inner)), fail_at_(fail_at) {}
  void next(std::vector<llama::Token>& in, std::vector<llama::Token>& tg) override {
    if (read_++ == fail_at_) throw milora::io_error(concat("MILORA_TEST_FAULT: micro-batch ", fail_at_, " could not be read"));
    inner_->next(in, tg);
  }
  std::span<const std::int32_t> segment_starts() const override { return inner_->segment_starts(); }
  std::size_t cursor() const override { return inner_->cursor(); }
  void set_cursor(std::size_t c) override { inner_->set_cursor(c); }
  Index batch() const override { return inner_->batch(); }
  Index seq() const override { return inner_->seq(); }

 private:
  std::unique_ptr<llama::Batches> inner_;
  Index fail_at_, read_ = 0;
};
template <class Loader>
std::unique_ptr<llama::Batches> with_test_fault(const Options& o, Loader loader) {
  std::unique_ptr<llama::Batches> out = std::make_unique<Loader>(std::move(loader));
  const char* fault = std::getenv("MILORA_TEST_FAULT");
  int rank = -1;
  long long batch = -1;
  if (fault != nullptr && std::sscanf(fault, "%d:%lld", &rank, &batch) == 2 && rank == o.job.rank)
    out = std::make_unique<FaultyBatches>(std::move(out), Index(batch));
  return out;
}

/// Adds the adapters of --method (--solver fast: the fast spectral solvers) to `model`; data-driven
/// policies calibrate on the first --calibration-batches batches of `tokens`. Returns the
/// calibration tokens.
template <class Model>
Index add_adapters_for(const Options& o, Model& model, const std::vector<std::string>& targets,
                       const milora::AdapterConfig& config, const std::vector<llama::Token>& tokens) {
  return llama::add_adapters_for_method(model, o.method, o.solver == "fast", targets, config, tokens, o.train.batch,
                                        o.train.seq, o.calibration_batches);
}

// Adapters, trainer, resume, training and the JSON line: the same for token streams and examples.
template <class Model, class Loader, class Validation>
void train(const Options& o, Model& model, Loader loader, Validation val, const std::vector<llama::Token>& calibration_data,
           nlohmann::json run, llama::TrainConfig tc) {
  auto t0 = std::chrono::steady_clock::now();
  const double alpha = o.alpha > 0 ? o.alpha : 2.0 * double(o.rank);
  const auto targets = milora::tools::parse_targets(o.targets);
  const milora::AdapterConfig adapter_config{.rank = o.rank, .alpha = alpha, .seed = o.seed};
  // CorDA / EVA / LoRA-GA first see --calibration-batches batches of the training data through the base model
  const Index calibration_tokens = add_adapters_for(o, model, targets, adapter_config, calibration_data);
  llama::use_tf32<typename Model::backend>(o.tf32);  // after the init: its SVDs and QRs run in full float
  note(o) << "milora-finetune: " << o.method << " r = " << o.rank << " on " << model.num_adapters() << " projections ("
            << model.num_trainable() << " trainable of " << model.num_frozen() << " frozen parameters), initialised in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  run.update({{"model", fs::weakly_canonical(o.model).string()}, {"data", fs::weakly_canonical(o.data).string()},
              {"method", o.method}, {"solver", o.solver}, {"rank", o.rank}, {"alpha", alpha},
              {"targets", targets}, {"seed", o.seed}, {"batch", tc.batch}, {"seq", tc.seq},
              {"accumulation", tc.accumulation * o.job.size}, {"lr", tc.lr}, {"warmup", tc.warmup},
              {"steps", tc.steps}, {"weight_decay", tc.weight_decay}, {"grad_clip", tc.grad_clip}});
  if (calibration_tokens > 0) run["calibration_batches"] = o.calibration_batches;
  if (o.dtype != "float32") run["dtype"] = o.dtype;  // a bf16 run resumes in bf16 (absent: float32, as before --dtype)
  tc.out = o.out;
  tc.progress = !o.quiet;
  // The global batch is what a checkpoint records ("accumulation": micro-batches per step over all
  // ranks), so a run resumes with another number of ranks as long as that product is the same.
  auto held_out = llama::Trainer<Model>::held_out_loss(model, std::move(val), tc.batch, tc.seq);
  llama::Trainer<Model> trainer(model, tc, with_test_fault(o, std::move(loader)), std::move(held_out), run);
  trainer.distribute(replicas_for<typename Model::backend>(o), o.check_every);
  if (!o.resume.empty()) {
    const fs::path from = o.resume == "latest" ? llama::latest_checkpoint(o.out) : fs::path(o.resume);
    if (from.empty()) {
      note(o) << "milora-finetune: no complete checkpoint in " << o.out << " yet; starting at step 0\n";
    } else {
      trainer.resume(from);
      note(o) << "milora-finetune: resumed from " << from.string() << " at step " << trainer.step() << "\n";
    }
  }
  trainer.run();
  nlohmann::json result = {{"steps", trainer.step()}, {"train_loss", trainer.last_loss()},
                           {"checkpoint", (fs::path(o.out) / ("checkpoint-" + std::to_string(trainer.step()))).string()}};
  if (trainer.last_val_loss()) {
    result["val_loss"] = *trainer.last_val_loss();
    result["val_perplexity"] = std::exp(*trainer.last_val_loss());
  }
  if (trainer.is_root()) std::cout << result.dump() << std::endl;
}

/// JSON-lines examples (instruction_data.hpp): the answers learned, one example per row, shuffled
/// per epoch; the held-out examples are --val-data's or the file's last --val-fraction.
template <class Model>
void finetune_on_examples(const Options& o, Model& model, const llama::Tokenizer& tokenizer) {
  const auto& cfg = model.config();
  const auto chat_template = llama::model_chat_template(o.model);
  llama::InstructionOptions io = o.instruction;
  io.seq = o.train.seq;
  const auto read = [&](const std::string& path) {
    return llama::read_instruction_data(path, tokenizer, cfg.vocab_size, io, chat_template ? &*chat_template : nullptr);
  };
  llama::ExampleSet set = read(o.data), val;
  if (!o.val_data.empty()) {
    val = read(o.val_data);
  } else if (o.val_fraction > 0) {  // the held-out examples are the end of the file
    const auto n = std::size_t(double(set.examples.size()) * o.val_fraction);
    if (n >= 1 && n < set.examples.size()) {
      val.format = set.format;
      val.examples.assign(std::make_move_iterator(set.examples.end() - std::ptrdiff_t(n)), std::make_move_iterator(set.examples.end()));
      set.examples.resize(set.examples.size() - n);
    }
  }
  llama::TrainConfig tc = o.train;
  const Index per_step = tc.batch * tc.accumulation * o.job.size;  // sequences per step over all ranks
  // Packed, a row holds several examples: an epoch is the rows the examples fill, counted by
  // packing one epoch's order (the next epochs' orders pack alike).
  double examples_per_row = 1;
  if (o.pack) {
    llama::ExampleLoader probe(set, 1, tc.seq, o.seed, true);
    std::vector<llama::Token> in, tg;
    Index rows = 0;
    while (probe.cursor() < set.examples.size()) probe.next(in, tg), ++rows;
    examples_per_row = double(probe.cursor()) / double(rows);
  }
  if (o.epochs > 0)
    tc.steps = std::max<Index>(1, Index(std::ceil(o.epochs * double(set.examples.size()) / (double(per_step) * examples_per_row))));
  note(o) << "milora-finetune: " << set.format << " data: " << set.examples.size() << " training examples (" << set.learned_tokens()
            << " answer tokens to learn" << (io.train_on_prompt ? ", prompts included" : "") << "), " << val.examples.size()
            << " held out; " << set.truncated << " truncated and " << set.skipped_long << " skipped as longer than --seq + 1 = "
            << tc.seq + 1 << ", " << set.without_answer << " without a token to learn";
  if (set.boundary_merges > 0) note(o) << ", " << set.boundary_merges << " with a token across the prompt/answer boundary (counted as prompt)";
  if (o.pack) {
    note(o) << "; packed " << examples_per_row << " examples per row";
  } else {  // one example per row: what the rows hold besides padding is what a step computes usefully
    double filled = 0;
    for (const auto& e : set.examples) filled += double(e.tokens.size() - 1);
    note(o) << "; rows " << 100.0 * filled / double(set.examples.size() * std::size_t(tc.seq)) << "% example tokens, the rest padding";
  }
  note(o) << "; " << double(tc.steps * per_step) * examples_per_row / double(set.examples.size()) << " epochs in " << tc.steps << " steps\n";
  nlohmann::json run = {{"train_examples", set.examples.size()}, {"train_on_prompt", io.train_on_prompt},
                        {"prompt_format", io.prompt_format}, {"skip_long", io.skip_long}, {"pack", o.pack}};
  const auto calibration = set.concatenated();
  llama::ExampleLoader loader(std::move(set), tc.batch, tc.seq, o.seed, o.pack);
  train(o, model, std::move(loader), std::move(val), calibration, run, tc);
}

template <class BE, class Weights>
void finetune(const Options& o) {
  using Model = llama::Llama<BE, Weights>;
  std::optional<llama::CheckpointFolder> out_folder;  // rank 0 writes the checkpoints
  if (o.job.rank == 0) out_folder.emplace(o.out);         // claimed (writable, locked, leftovers cleared) before any work
  const milora::io::HFModel hf(o.model);
  auto model = llama::from_pretrained<Model>(hf);
  model->keep_activations_in_bf16(o.dtype == "bf16");  // bf16 fine-tuning: frozen weights and saved activations
  const auto& cfg = model->config();
  const auto tokenizer = llama::Tokenizer::for_model(o.model, cfg.vocab_size);
  note(o) << "milora-finetune: " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", vocab " << cfg.vocab_size
            << "; on the " << o.device << "\n";
  if (fs::path(o.data).extension() == ".jsonl") return finetune_on_examples(o, *model, tokenizer);
  if (o.epochs > 0) throw milora::value_error("--epochs needs JSON-lines examples (.jsonl); text and .u32 data count --steps");
  if (o.pack) throw milora::value_error("--pack needs JSON-lines examples (.jsonl); text and .u32 data fill every row already");
  auto tokens = llama::load_tokens(o.data, tokenizer, cfg.vocab_size);
  std::vector<llama::Token> val;
  if (!o.val_data.empty()) {
    val = llama::load_tokens(o.val_data, tokenizer, cfg.vocab_size);
  } else if (o.val_fraction > 0) {  // the held-out split is the end of the data
    const auto n = std::size_t(double(tokens.size()) * o.val_fraction);
    if (n > std::size_t(o.train.seq)) {
      val.assign(tokens.end() - std::ptrdiff_t(n), tokens.end());
      tokens.resize(tokens.size() - n);
    }
  }
  const Index n_train = Index(tokens.size()), n_val = Index(val.size());
  llama::DataLoader loader(std::move(tokens), o.train.batch, o.train.seq, "'" + o.data + "'");
  note(o) << "milora-finetune: " << n_train << " training tokens, " << n_val << " held out\n";
  const auto calibration = loader.tokens();
  train(o, *model, std::move(loader), std::move(val), calibration, {{"train_tokens", n_train}}, o.train);
}

/// finetune with the frozen projections stored as --dtype says.
template <class BE>
void run_on(const Options& o) {
  llama::with_dtype(o.dtype, [&]<class Weights>() { finetune<BE, Weights>(o); });
}

#if defined(MILORA_LLAMA_CUDA)
extern template void run_on<milora::CudaBackend<float>>(const Options&);  // milora_finetune_cuda.cpp
#endif

}  // namespace llama::finetune
