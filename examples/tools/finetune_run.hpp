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
#include "llama/trainer.hpp"

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
  std::uint64_t seed = 0;
  bool quiet = false;
  bool tf32 = false;
  llama::TrainConfig train;
};

/// Adds the adapters of --method (--solver fast: the fast spectral solvers) to `model`; data-driven
/// policies calibrate on the first --calibration-batches batches of `tokens`. Returns the
/// calibration tokens.
template <class Model>
Index add_adapters_for(const Options& o, Model& model, const std::vector<std::string>& targets,
                       const milora::AdapterConfig& config, const std::vector<llama::Token>& tokens) {
  return llama::add_adapters_for_method(model, o.method, o.solver == "fast", targets, config, tokens, o.train.batch,
                                        o.train.seq, o.calibration_batches);
}

template <class BE, class Weights>
void finetune(const Options& o) {
  using Model = llama::Llama<BE, Weights>;
  const llama::CheckpointFolder out_folder(o.out);  // claimed (writable, locked, leftovers cleared) before any work
  const milora::io::HFModel hf(o.model);
  auto model = llama::from_pretrained<Model>(hf);
  model->keep_activations_in_bf16(o.dtype == "bf16");  // bf16 fine-tuning: frozen weights and saved activations
  const auto& cfg = model->config();
  const auto tokenizer = llama::Tokenizer::for_model(o.model, cfg.vocab_size);
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
  const double alpha = o.alpha > 0 ? o.alpha : 2.0 * double(o.rank);
  const auto targets = milora::tools::parse_targets(o.targets);
  const Index n_train = Index(tokens.size()), n_val = Index(val.size());
  llama::DataLoader loader(std::move(tokens), o.train.batch, o.train.seq, "'" + o.data + "'");
  std::cerr << "milora-finetune: " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", vocab "
            << cfg.vocab_size << "; " << n_train << " training tokens, " << n_val << " held out; on the " << o.device << "\n";
  auto t0 = std::chrono::steady_clock::now();
  const milora::AdapterConfig adapter_config{.rank = o.rank, .alpha = alpha, .seed = o.seed};
  // CorDA / EVA / LoRA-GA first see --calibration-batches batches of the training data through the base model
  const Index calibration_tokens = add_adapters_for(o, *model, targets, adapter_config, loader.tokens());
  llama::use_tf32<BE>(o.tf32);  // after the init: its SVDs and QRs run in full float
  std::cerr << "milora-finetune: " << o.method << " r = " << o.rank << " on " << model->num_adapters() << " projections ("
            << model->num_trainable() << " trainable of " << model->num_frozen() << " frozen parameters), initialised in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  nlohmann::json run = {{"model", fs::weakly_canonical(o.model).string()}, {"data", fs::weakly_canonical(o.data).string()},
                              {"method", o.method}, {"solver", o.solver}, {"rank", o.rank}, {"alpha", alpha},
                              {"targets", targets}, {"seed", o.seed}, {"batch", o.train.batch}, {"seq", o.train.seq},
                              {"accumulation", o.train.accumulation}, {"lr", o.train.lr}, {"warmup", o.train.warmup},
                              {"steps", o.train.steps}, {"weight_decay", o.train.weight_decay},
                              {"grad_clip", o.train.grad_clip}, {"train_tokens", n_train}};
  if (calibration_tokens > 0) run["calibration_batches"] = o.calibration_batches;
  if (o.dtype != "float32") run["dtype"] = o.dtype;  // a bf16 run resumes in bf16 (absent: float32, as before --dtype)
  llama::TrainConfig tc = o.train;
  tc.out = o.out;
  tc.progress = !o.quiet;
  llama::Trainer<Model> trainer(*model, tc, std::move(loader), std::move(val), run);
  if (!o.resume.empty()) {
    const fs::path from = o.resume == "latest" ? llama::latest_checkpoint(o.out) : fs::path(o.resume);
    if (from.empty()) {
      std::cerr << "milora-finetune: no complete checkpoint in " << o.out << " yet; starting at step 0\n";
    } else {
      trainer.resume(from);
      std::cerr << "milora-finetune: resumed from " << from.string() << " at step " << trainer.step() << "\n";
    }
  }
  trainer.run();
  nlohmann::json result = {{"steps", trainer.step()}, {"train_loss", trainer.last_loss()},
                           {"checkpoint", (fs::path(o.out) / ("checkpoint-" + std::to_string(trainer.step()))).string()}};
  if (trainer.last_val_loss()) {
    result["val_loss"] = *trainer.last_val_loss();
    result["val_perplexity"] = std::exp(*trainer.last_val_loss());
  }
  std::cout << result.dump() << std::endl;
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
