// milora-finetune: fine-tune a Hugging Face LLaMA folder with LoRA, PiSSA, MiLoRA, OLoRA, orthogonal, MiCA,
// CorDA, EVA or LoRA-GA adapters, on the CPU or (--device cuda, when built with the CUDA toolkit)
// on a GPU: the same model code on CudaBackend, the same files, so a run started on one can be
// resumed on the other.
//
//   milora-finetune --model DIR --data train.txt --method milora --rank 16 --steps 200 --out run
//
// Checkpoints go to OUT/checkpoint-<step> (PEFT adapter folders; see trainer.hpp for what they
// hold); --resume OUT/checkpoint-<step> (or --resume latest: the newest complete one in OUT, so a
// killed run is restarted with the same command) continues one bit for bit. The last line of
// output is JSON.
#include <iostream>
#include <string>

#include "../tools/tool_common.hpp"
#include "milora/spectral/cholesky_krylov.hpp"
#include "milora/spectral/randomized.hpp"
#include "calibration.hpp"
#include "device.hpp"
#include "trainer.hpp"

namespace {

using milora::Index;
using milora::detail::concat;
namespace fs = std::filesystem;

struct Options {
  std::string model, data, val_data, method = "milora", solver = "exact", out, resume, device = "cpu";
  std::string targets = "q_proj,k_proj,v_proj,up_proj,down_proj";  // MiLoRA's and PiSSA's experiments
  Index rank = 16;
  Index calibration_batches = 8;  // corda-kpm / corda-ipm / eva / lora-ga: batches of --data they see
  double alpha = 0;  // 0: alpha = 2 * rank
  double val_fraction = 0.1;
  std::uint64_t seed = 0;
  bool quiet = false;
  llama::TrainConfig train;
};

template <class BE, class Init>
void finetune(const Options& o) {
  using Model = llama::Llama<BE, Init>;
  const milora::io::HFModel hf(o.model);
  auto model = llama::from_pretrained<Model>(hf);
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
  const auto targets = milora::tools::split_list(o.targets);
  const Index n_train = Index(tokens.size()), n_val = Index(val.size());
  llama::DataLoader loader(std::move(tokens), o.train.batch, o.train.seq, "'" + o.data + "'");
  std::cerr << "milora-finetune: " << cfg.num_hidden_layers << " layers, hidden " << cfg.hidden_size << ", vocab "
            << cfg.vocab_size << "; " << n_train << " training tokens, " << n_val << " held out; on the " << o.device << "\n";
  auto t0 = std::chrono::steady_clock::now();
  const milora::AdapterConfig adapter_config{.rank = o.rank, .alpha = alpha, .seed = o.seed};
  // CorDA / EVA / LoRA-GA first see --calibration-batches batches of the training data through the base model
  const Index calibration_tokens = llama::add_adapters_calibrated(*model, targets, adapter_config, loader.tokens(), o.train.batch,
                                                                  o.train.seq, o.calibration_batches);
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

template <class BE>
void run_on(const Options& o) {
  const bool fast = o.solver == "fast";
  if (o.method == "lora") finetune<BE, milora::KaimingUniform>(o);
  else if (o.method == "olora") finetune<BE, milora::LeadingQR>(o);
  else if (o.method == "orthogonal") finetune<BE, milora::OrthogonalInit>(o);
  else if (o.method == "mica") fast ? finetune<BE, milora::MinorLeftSingular<milora::CholeskyKrylovSVD>>(o) : finetune<BE, milora::MinorLeftSingular<>>(o);
  else if (o.method == "corda-kpm") {
    using enum milora::CordaMode;
    fast ? finetune<BE, milora::ContextOrientedSVD<BE, knowledge_preserved, milora::CholeskyKrylovSVD>>(o)
         : finetune<BE, milora::ContextOrientedSVD<BE, knowledge_preserved>>(o);
  } else if (o.method == "corda-ipm") {
    using enum milora::CordaMode;
    fast ? finetune<BE, milora::ContextOrientedSVD<BE, instruction_previewed, milora::RandomizedSVD>>(o)
         : finetune<BE, milora::ContextOrientedSVD<BE, instruction_previewed>>(o);
  }
  else if (o.method == "eva") finetune<BE, milora::ActivationPCA<BE>>(o);
  else if (o.method == "lora-ga")
    fast ? finetune<BE, milora::GradientApproximation<BE, milora::RandomizedSVD>>(o) : finetune<BE, milora::GradientApproximation<BE>>(o);
  else if (o.method == "pissa") fast ? finetune<BE, milora::PrincipalSVD<milora::RandomizedSVD>>(o) : finetune<BE, milora::PrincipalSVD<>>(o);
  else fast ? finetune<BE, milora::MinorSVD<milora::CholeskyKrylovSVD>>(o) : finetune<BE, milora::MinorSVD<>>(o);
}

void run(const Options& o) {
  if (o.resume.empty() && fs::exists(o.out) && !fs::is_empty(o.out))
    throw milora::io_error(concat("output '", o.out, "' already exists; choose another --out or --resume a checkpoint in it"));
  llama::on_device(o.device, "milora-finetune", [&]<class BE>() { run_on<BE>(o); });
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  auto& t = o.train;
  CLI::App app{"milora-finetune: fine-tune a Hugging Face LLaMA folder with LoRA / PiSSA / MiLoRA / ... adapters (float32, CPU or CUDA)."};
  app.add_option("--model", o.model, "Hugging Face LLaMA folder (config.json, safetensors, tokenizer.model)")->required()->check(CLI::ExistingDirectory);
  app.add_option("--data", o.data, "training data: text, or little-endian uint32 token ids in a .u32 file")->required()->check(CLI::ExistingFile);
  app.add_option("--val-data", o.val_data, "held-out data (default: the last --val-fraction of --data)")->check(CLI::ExistingFile);
  app.add_option("--val-fraction", o.val_fraction, "share of --data held out when no --val-data is given")->capture_default_str()->check(CLI::Range(0.0, 0.5));
  app.add_option("--method", o.method, "lora | pissa | milora | olora | orthogonal | mica (B frozen: only A trains) | "
                                      "corda-kpm | corda-ipm | eva (calibrated on the first --calibration-batches of --data) | "
                                      "lora-ga (from the mean weight gradient over those batches)")
      ->capture_default_str()
      ->check(CLI::IsMember({"lora", "pissa", "milora", "olora", "orthogonal", "mica", "corda-kpm", "corda-ipm", "eva", "lora-ga"}));
  app.add_option("--calibration-batches", o.calibration_batches, "batches of --data that CorDA / EVA collect input statistics from, LoRA-GA gradients")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--device", o.device, std::string(llama::kDeviceHelp) + ": a run may move between them with --resume")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--solver", o.solver, "exact (LAPACK) | fast (randomized SVD / Cholesky-Krylov)")->capture_default_str()->check(CLI::IsMember({"exact", "fast"}));
  app.add_option("--rank", o.rank, "adapter rank r")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--alpha", o.alpha, "lora_alpha (default 2 * rank)")->check(CLI::PositiveNumber);
  app.add_option("--targets", o.targets, "comma-separated projections to adapt")->capture_default_str();
  app.add_option("--steps", t.steps, "optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--lr", t.lr, "peak learning rate")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--warmup", t.warmup, "linear warm-up steps (then cosine decay to 0)")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--batch", t.batch, "sequences per micro-batch")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq", t.seq, "tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--accum", t.accumulation, "micro-batches per optimizer step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", t.weight_decay, "AdamW weight decay")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--grad-clip", t.grad_clip, "max global gradient norm (0: off)")->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--eval-every", t.eval_every, "steps between held-out evaluations (0: at the end only)")->capture_default_str();
  app.add_option("--save-every", t.save_every, "steps between checkpoints (0: at the end only)")->capture_default_str();
  app.add_option("--seed", o.seed, "seed of LoRA's random A")->capture_default_str();
  app.add_option("--out", o.out, "folder for checkpoints")->required();
  app.add_option("--resume", o.resume, "checkpoint folder of this run to continue from, or `latest`: the newest complete "
                                       "checkpoint in --out (none yet: start from step 0)")
      ->check(CLI::ExistingDirectory | CLI::IsMember({"latest"}));
  app.add_flag("--quiet", o.quiet, "no progress line");
  return milora::tools::run_tool("milora-finetune", app, argc, argv, [&] { run(o); });
}
