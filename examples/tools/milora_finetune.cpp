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
//
// Under mpirun -np N (or srun) the run is data-parallel (docs/distributed.md): each rank reads its
// share of every global batch, so N ranks with --batch b see the data one rank sees with --batch b
// and --accum N; the adapters' gradients are summed over the ranks (--comm mpi: on the host; nccl:
// on the GPUs, with --device cuda), the ranks' parameters are compared every --check-every steps,
// and rank 0 logs and writes the checkpoints. A rank that fails ends the whole job, naming itself.
#include "common/options.hpp"
#include "common/job.hpp"
#include "finetune_run.hpp"

#include <optional>

namespace {

using namespace llama::finetune;

void run(const Options& o) {
  if (o.job.rank == 0 && o.resume.empty() && fs::exists(o.out) && !fs::is_empty(o.out))
    throw milora::io_error(concat("output '", o.out, "' already exists; choose another --out or --resume a checkpoint in it"));
  llama::check_tf32_device(o.device, o.tf32);
  if (o.pack && o.device != "cpu")
    throw milora::value_error("--pack is implemented on the CPU only (the CUDA attention has no per-example mask yet); leave it out to pad");
  llama::on_device(o.device, "milora-finetune", [&]<class BE>() { run_on<BE>(o); });
}

// One rank of the job (common/job.hpp): --comm nccl joins the GPUs over NCCL as well.
void run_in_job(Options& o, const std::string& comm) {
  milora::tools::run_as_rank("milora-finetune", [&](milora::tools::Job job) {
    o.job = job;
#if defined(MILORA_FINETUNE_NCCL)
    std::optional<milora::distributed::NcclCommunicator> nccl;
#endif
    if (comm == "nccl") {
      if (o.device != "cuda") throw milora::value_error("--comm nccl reduces on the GPUs: it needs --device cuda");
#if defined(MILORA_FINETUNE_NCCL)
      if (job.mpi != nullptr) o.nccl = &nccl.emplace(*job.mpi);
#else
      throw milora::value_error("--comm nccl: this build has no NCCL (it needs the CUDA toolkit's NCCL and MPI)");
#endif
    }
    run(o);
  });
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  auto& t = o.train;
  CLI::App app{"milora-finetune: fine-tune a Hugging Face LLaMA folder with LoRA / PiSSA / MiLoRA / ... adapters (float32 or bf16 frozen weights, CPU or CUDA)."};
  app.add_option("--model", o.model, "Hugging Face LLaMA folder (config.json, safetensors, tokenizer.model)")->required()->check(CLI::ExistingDirectory);
  app.add_option("--data", o.data, "training data: text, little-endian uint32 token ids in a .u32 file, or examples in a .jsonl file "
                                   "(text / Alpaca / prompt-completion / chat messages; docs/data.md)")->required()->check(CLI::ExistingFile);
  app.add_option("--val-data", o.val_data, "held-out data (default: the last --val-fraction of --data)")->check(CLI::ExistingFile);
  app.add_option("--val-fraction", o.val_fraction, "share of --data held out when no --val-data is given")->capture_default_str()->check(milora::tools::finite_in(0.0, 0.5));
  milora::tools::add_method_option<milora::EigenBackend<float>>(
      app, o.method, "Those calibrated see the first --calibration-batches of --data; mica trains A alone (B frozen)");
  app.add_option("--calibration-batches", o.calibration_batches, "batches of --data that CorDA / EVA collect input statistics from, LoRA-GA gradients")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  milora::tools::add_device_option(app, o.device, ": a run may move between them with --resume");
  milora::tools::add_dtype_option(app, o.dtype);
  app.add_flag("--tf32", o.tf32, "with --device cuda: float products on tensor cores in TF32 after the init (faster, ~1e-3 per product)");
  milora::tools::add_solver_option(app, o.solver);
  app.add_option("--rank", o.rank, "adapter rank r")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--alpha", o.alpha, "lora_alpha (default 2 * rank)")->check(milora::tools::finite_positive);
  app.add_option("--targets", o.targets, "comma-separated projections to adapt")->capture_default_str();
  app.add_option("--steps", t.steps, "optimizer steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--epochs", o.epochs, ".jsonl data: passes over the training examples (sets --steps)")->check(milora::tools::finite_positive);
  app.add_flag("--train-on-prompt", o.instruction.train_on_prompt, ".jsonl data: learn the prompts too, not only the answers");
  app.add_option("--prompt-format", o.instruction.prompt_format, ".jsonl data: auto (Alpaca records in Alpaca's prompt, chats by the "
                                                                  "model's chat template), model, or alpaca")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "model", "alpaca"}));
  app.add_flag("--pack", o.pack, ".jsonl data: as many whole examples per row as fit, each attending to itself only (CPU; "
                                 "default: one example per row, padded)");
  app.add_flag("--skip-long", o.instruction.skip_long, ".jsonl data: skip examples longer than --seq + 1 tokens (default: truncate them)");
  app.add_option("--lr", t.lr, "peak learning rate")->capture_default_str()->check(milora::tools::finite_non_negative);
  app.add_option("--warmup", t.warmup, "linear warm-up steps (then cosine decay to 0)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--batch", t.batch, "sequences per micro-batch")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq", t.seq, "tokens per sequence")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--accum", t.accumulation, "micro-batches per optimizer step")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", t.weight_decay, "AdamW weight decay")->capture_default_str()->check(milora::tools::finite_non_negative);
  app.add_option("--grad-clip", t.grad_clip, "max global gradient norm (0: off)")->capture_default_str()->check(milora::tools::finite_non_negative);
  app.add_option("--eval-every", t.eval_every, "steps between held-out evaluations (0: at the end only)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--save-every", t.save_every, "steps between checkpoints (0: at the end only)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--seed", o.seed, "seed of LoRA's random A")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--out", o.out, "folder for checkpoints")->required();
  app.add_option("--resume", o.resume, "checkpoint folder of this run to continue from, or `latest`: the newest complete "
                                       "checkpoint in --out (none yet: start from step 0)")
      ->check(CLI::ExistingDirectory | CLI::IsMember({"latest"}));
  app.add_flag("--quiet", o.quiet, "no progress line");
  std::string comm = "mpi";
  app.add_option("--comm", comm, "under mpirun / srun with several ranks: where the gradients are summed, mpi (on the host) or "
                                 "nccl (on the GPUs, --device cuda)")
      ->capture_default_str()
      ->check(CLI::IsMember({"mpi", "nccl"}));
  app.add_option("--check-every", o.check_every, "with several ranks: steps between bit-for-bit comparisons of their parameters (0: "
                                                 "after the last step only)")
      ->capture_default_str()
      ->check(milora::tools::whole_number);
  return milora::tools::run_tool("milora-finetune", app, argc, argv, [&] { run_in_job(o, comm); });
}
