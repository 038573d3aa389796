// milora-init: initialise a LoRA, PiSSA, MiLoRA, OLoRA, orthogonal or MiCA adapter for a Hugging Face model folder,
// or (a LLaMA folder, built with the reference LLaMA) a CorDA, EVA or LoRA-GA one from calibration data.
//
//   milora-init --model DIR --method milora --rank 16 --alpha 16 --out OUT [--solver fast --jobs 2]
//   milora-init --model DIR --method corda-kpm --calibration-data train.txt --rank 16 --out OUT
//
// writes OUT/adapter_config.json + OUT/adapter_model.safetensors (a PEFT adapter) and, for PiSSA,
// MiLoRA, OLoRA, CorDA and LoRA-GA, OUT/residual/: the model folder with W' = W - s*B*A in place of every adapted weight
// (same shards, dtypes and other files), which is the base model the adapter belongs to. Train
// with PEFT or milora on OUT/residual; milora-convert turns the result into a plain LoRA for the
// original model.
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../concurrent_jobs.hpp"
#include "milora/io.hpp"
#include "milora/milora.hpp"
#include "tool_common.hpp"
#if defined(MILORA_INIT_WITH_LLAMA)  // the data-driven methods run the reference LLaMA (examples/llama)
#include "calibration.hpp"
#include "data.hpp"
#include "kernels_cpu.hpp"
#include "model.hpp"
#endif

namespace {

using Backend = milora::EigenBackend<float>;
using milora::Index;
using milora::detail::concat;
namespace io = milora::io;

struct Options {
  std::string model, method = "milora", solver = "exact", out;
  std::string targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  Index rank = 16;
  int jobs = 1;      // weights adapted at once, each on its own thread
  double alpha = 0;  // 0: alpha = rank, MiLoRA's and PiSSA's choice
  bool rslora = false;
  std::uint64_t seed = 0;
  // the data-driven methods: batches of --calibration-data through the model
  std::string calibration_data;
  Index calibration_batches = 8, batch = 4, seq = 128;
};

// CorDA, EVA and LoRA-GA read what calibration data does to the model (inputs, gradients).
bool data_driven(const std::string& method) {
  return method == "corda-kpm" || method == "corda-ipm" || method == "eva" || method == "lora-ga";
}

// One stream per module, from its name, so adding a target does not reseed the others.
std::uint64_t module_seed(std::uint64_t seed, const std::string& module) {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  for (unsigned char c : module) h = (h ^ c) * 0x100000001b3ULL;
  return milora::random::mix64(seed ^ h);
}

// Initialises one adapter on `w` (replaced by the residual for PiSSA / MiLoRA); returns A and B.
template <class AdapterT>
io::LoraFactors<float> init_one(io::HostMatrix<float>& w, const milora::AdapterConfig& cfg) {
  milora::Linear<Backend> layer(io::to_backend<Backend>(w));
  AdapterT adapter(layer, cfg);
  w.data = Backend::to_host(layer.weight());
  return io::factors_of(adapter);
}

// PiSSA, MiLoRA and OLoRA replace W by W - s*B*A (a residual model is written); LoRA,
// orthogonal and MiCA leave the base alone. Only the SVD methods use --solver.
bool changes_base(const std::string& method) {
  return method == "pissa" || method == "milora" || method == "olora" || method.starts_with("corda") || method == "lora-ga";
}
bool uses_svd(const std::string& method) {
  return method == "pissa" || method == "milora" || method == "mica" || method.starts_with("corda") || method == "lora-ga";
}

io::LoraFactors<float> init_module(const Options& o, io::HostMatrix<float>& w, const milora::AdapterConfig& cfg) {
  const bool fast = o.solver == "fast";
  if (o.method == "lora") return init_one<milora::LoRA<Backend>>(w, cfg);
  if (o.method == "olora") return init_one<milora::OLoRA<Backend>>(w, cfg);
  if (o.method == "orthogonal") return init_one<milora::OrthogonalLoRA<Backend>>(w, cfg);
  if (o.method == "mica")
    return fast ? init_one<milora::MiCA<Backend, milora::CholeskyKrylovSVD>>(w, cfg) : init_one<milora::MiCA<Backend>>(w, cfg);
  if (o.method == "pissa")
    return fast ? init_one<milora::PiSSA<Backend, milora::RandomizedSVD>>(w, cfg) : init_one<milora::PiSSA<Backend>>(w, cfg);
  return fast ? init_one<milora::MiLoRA<Backend, milora::CholeskyKrylovSVD>>(w, cfg) : init_one<milora::MiLoRA<Backend>>(w, cfg);
}

#if defined(MILORA_INIT_WITH_LLAMA)
// The data-driven methods: the folder as the reference LLaMA, calibrated on the first
// --calibration-batches batches of --calibration-data (as milora-finetune does), then every
// adapter's factors and, where the base changes, its W' (module path -> host matrix).
template <class Init>
std::map<std::string, std::pair<io::LoraFactors<float>, io::HostMatrix<float>>> calibrated_factors(
    const Options& o, const io::HFModel& hf, const std::vector<std::string>& targets, const milora::AdapterConfig& cfg) {
  auto model = llama::from_pretrained<llama::Llama<Backend>>(hf);
  const auto tokenizer = llama::Tokenizer::for_model(o.model, model->config().vocab_size);
  const auto tokens = llama::load_tokens(o.calibration_data, tokenizer, model->config().vocab_size);
  llama::add_adapters_calibrated<Init>(*model, targets, cfg, tokens, o.batch, o.seq, o.calibration_batches);
  std::map<std::string, std::pair<io::LoraFactors<float>, io::HostMatrix<float>>> out;
  for (auto* p : model->adapted())
    out.emplace(p->module, std::pair{io::factors_of(*p->adapter), io::to_host_matrix<Backend>(p->linear.weight())});
  return out;
}

std::map<std::string, std::pair<io::LoraFactors<float>, io::HostMatrix<float>>> calibrated(
    const Options& o, const io::HFModel& hf, const std::vector<std::string>& targets, const milora::AdapterConfig& cfg) {
  const bool fast = o.solver == "fast";
  using enum milora::CordaMode;
  if (o.method == "corda-kpm")
    return fast ? calibrated_factors<milora::ContextOrientedSVD<Backend, knowledge_preserved, milora::CholeskyKrylovSVD>>(o, hf, targets, cfg)
                : calibrated_factors<milora::ContextOrientedSVD<Backend, knowledge_preserved>>(o, hf, targets, cfg);
  if (o.method == "corda-ipm")
    return fast ? calibrated_factors<milora::ContextOrientedSVD<Backend, instruction_previewed, milora::RandomizedSVD>>(o, hf, targets, cfg)
                : calibrated_factors<milora::ContextOrientedSVD<Backend, instruction_previewed>>(o, hf, targets, cfg);
  if (o.method == "eva") return calibrated_factors<milora::ActivationPCA<Backend>>(o, hf, targets, cfg);
  return fast ? calibrated_factors<milora::GradientApproximation<Backend, milora::RandomizedSVD>>(o, hf, targets, cfg)
              : calibrated_factors<milora::GradientApproximation<Backend>>(o, hf, targets, cfg);
}
#endif

void run(const Options& o) {
  if (data_driven(o.method) != !o.calibration_data.empty())
    throw milora::value_error(data_driven(o.method)
                                  ? concat("--method ", o.method, " needs --calibration-data (text or .u32 tokens)")
                                  : concat("--calibration-data is for corda-kpm, corda-ipm, eva and lora-ga, not ", o.method));
#if !defined(MILORA_INIT_WITH_LLAMA)
  if (data_driven(o.method))
    throw milora::value_error(concat("--method ", o.method, " needs the reference LLaMA, which this build of milora-init lacks"));
#endif
  const io::HFModel model(o.model);
  const auto targets = milora::tools::split_list(o.targets);
  if (targets.empty()) throw milora::value_error("--targets is empty");
  // Which weights to adapt; every check happens before anything is written.
  std::set<std::string> selected;
  std::map<std::string, int> matches;
  for (const auto& t : targets) matches[t] = 0;
  for (const auto& name : model.tensor_names()) {
    if (name.size() <= 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
    const auto leaf = milora::tools::module_leaf(io::module_of_weight(name));
    if (!matches.count(leaf)) continue;
    const auto& info = model.info(name);
    if (info.shape.size() != 2) continue;
    if (!io::dtype_info(info.dtype).floating_point)
      throw milora::format_error(concat("dtype unsupported: '", name, "' is ", io::dtype_name(info.dtype),
                                        "; milora adapts F16, BF16, F32 and F64 weights"));
    const Index out = info.shape[0], in = info.shape[1];
    if (o.rank > std::min(out, in))
      throw milora::shape_error(concat("--rank ", o.rank, " is too large for '", name, "' (", out, "x", in,
                                       "): at most ", std::min(out, in)));
    ++matches[leaf];
    selected.insert(name);
  }
  for (const auto& [t, n] : matches)
    if (n == 0) throw milora::value_error(concat("unknown target '", t, "': no 2-D weight of '", o.model, "' ends in ", t, ".weight"));

  io::PeftAdapter<float> adapter;
  adapter.config.r = o.rank;
  adapter.config.lora_alpha = o.alpha > 0 ? o.alpha : double(o.rank);
  adapter.config.use_rslora = o.rslora;
  adapter.config.target_modules = targets;
  adapter.config.base_model_name_or_path = model.config().value("_name_or_path", o.model);
  adapter.metadata = {{"milora.method", o.method}, {"milora.solver", uses_svd(o.method) ? o.solver : "none"},
                      {"milora.seed", std::to_string(o.seed)}};
  milora::AdapterConfig base_cfg = adapter.config.adapter_config();

  // Data-driven: every adapter at once, from the model's forward (and backward) passes first.
  std::map<std::string, std::pair<io::LoraFactors<float>, io::HostMatrix<float>>> precomputed;
#if defined(MILORA_INIT_WITH_LLAMA)
  if (data_driven(o.method)) {
    precomputed = calibrated(o, model, targets, base_cfg);
    adapter.metadata["milora.calibration"] =
        concat(o.calibration_batches, " batches of ", o.batch, " x ", o.seq, " tokens of ", o.calibration_data);
  }
#endif

  milora::tools::StagedOutput staged(o.out);
  milora::tools::Progress progress(selected.size());
  std::mutex modules_mutex;  // adapt() runs on up to --jobs threads at once
  auto adapt = [&](const std::string& name, io::HostMatrix<float>& w) {
    const auto started = progress.start();
    const std::string module = io::module_of_weight(name);
    io::LoraFactors<float> factors;
    if (data_driven(o.method)) {
      auto& [computed, residual] = precomputed.at(module);  // each module's entry is taken by one call
      if (residual.rows != w.rows || residual.cols != w.cols)
        throw milora::shape_error(concat("'", name, "' is ", w.rows, "x", w.cols, ", the model's ", residual.rows, "x", residual.cols));
      w = std::move(residual);
      factors = std::move(computed);
    } else {
      milora::AdapterConfig cfg = base_cfg;
      cfg.seed = module_seed(o.seed, module);
      factors = init_module(o, w, cfg);
    }
    {
      std::lock_guard lock(modules_mutex);
      adapter.modules[module] = std::move(factors);
    }
    progress.done(module, w.rows, w.cols, started);
  };
  if (!changes_base(o.method)) {  // the base is unchanged: no residual folder
    const std::vector<std::string> names(selected.begin(), selected.end());
    milora::examples::for_each_concurrently(names.size(), o.jobs, [&](std::size_t i) {
      auto w = model.load<float>(names[i]);
      adapt(names[i], w);
    });
  } else {
    milora::examples::BlasThreadsPerJob blas(o.jobs);
    io::write_hf_model<float>(model, staged.dir() / "residual", [&](const std::string& n) { return selected.count(n) > 0; },
                              adapt, o.jobs);
  }
  io::save_peft_adapter(adapter, staged.dir());
  staged.commit();
  std::cerr << "milora-init: " << o.method << " adapter (r = " << o.rank << ") for " << selected.size() << " weights in "
            << o.out << (changes_base(o.method) ? " (+ residual/)" : "") << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"milora-init: initialise a LoRA / PiSSA / MiLoRA / OLoRA / orthogonal / MiCA adapter (PEFT format) for a Hugging Face\n"
               "model folder, or a CorDA / EVA / LoRA-GA one for a LLaMA folder from --calibration-data. PiSSA, MiLoRA, OLoRA,\n"
               "CorDA and LoRA-GA also write OUT/residual, the model with W - s*B*A in place of each adapted weight."};
  app.add_option("--model", o.model, "Hugging Face model folder (config.json + model.safetensors or a sharded index)")
      ->required()->check(CLI::ExistingDirectory);
  app.add_option("--method", o.method, "lora | pissa | milora | olora | orthogonal (PEFT's init_lora_weights names) | mica | "
                                      "corda-kpm | corda-ipm | eva | lora-ga (LLaMA folders, with --calibration-data)")
      ->check(CLI::IsMember({"lora", "pissa", "milora", "olora", "orthogonal", "mica", "corda-kpm", "corda-ipm", "eva", "lora-ga"}))
      ->capture_default_str();
  app.add_option("--calibration-data", o.calibration_data,
                 "CorDA / EVA / LoRA-GA: text, or little-endian uint32 token ids in a .u32 file, run through the model")
      ->check(CLI::ExistingFile);
  app.add_option("--calibration-batches", o.calibration_batches, "batches of --calibration-data")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", o.batch, "sequences per calibration batch")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq", o.seq, "tokens per calibration sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--rank", o.rank, "adapter rank r")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--alpha", o.alpha, "lora_alpha (default: the rank, so s = 1)")->check(CLI::PositiveNumber);
  app.add_flag("--rslora", o.rslora, "scale alpha / sqrt(r) instead of alpha / r");
  app.add_option("--targets", o.targets, "comma-separated module names to adapt")->capture_default_str();
  app.add_option("--solver", o.solver, "exact (LAPACK gesdd) | fast (randomized SVD for PiSSA, Cholesky-Krylov for MiLoRA)")
      ->check(CLI::IsMember({"exact", "fast"}))->capture_default_str();
  app.add_option("--jobs", o.jobs,
                 "weights adapted at once, each on its own thread with the BLAS's threads shared out: more throughput "
                 "on few cores. The BLAS rounds differently with fewer threads, so the factors agree with --jobs 1 to "
                 "the solver's accuracy, not bit for bit")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", o.seed, "seed of LoRA's random A (one stream per module, derived from its name)")->capture_default_str();
  app.add_option("--out", o.out, "output folder (must not exist)")->required();
  return milora::tools::run_tool("milora-init", app, argc, argv, [&] { run(o); });
}
