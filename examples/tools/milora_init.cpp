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
//
// Under mpirun / srun with several ranks (methods without calibration data), the weights are shared
// out by cost, largest first, each to the rank with the least work so far; every rank solves its
// share (with its own BLAS threads and --jobs), the results go to rank 0, which writes the output
// in file order exactly as one process writes it: the same bytes, given the same BLAS threads per
// matrix (docs/distributed.md).
#include <algorithm>
#include <cctype>
#include <optional>
#include <cstdint>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/cli.hpp"
#include "common/concurrent_jobs.hpp"
#include "common/job.hpp"
#include "common/options.hpp"
#include "common/progress.hpp"
#include "common/staged_output.hpp"
#include "llama/calibration.hpp"
#include "llama/data.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "milora/init/registry.hpp"
#include "milora/io.hpp"
#include "milora/milora.hpp"

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
  milora::tools::Job job;  // this process in its job (mpirun / srun)
};

// Module path -> its factors and, where the base changes, its W' (computed before the write).
using Precomputed = std::map<std::string, std::pair<io::LoraFactors<float>, io::HostMatrix<float>>>;

// The method's entry in milora's registry: whether it changes the base (a residual model is
// written), needs calibration data (CorDA, EVA, LoRA-GA read what it does to the model: inputs,
// gradients) and has a fast solver (--solver applies).
const milora::InitMethodInfo& method_of(const Options& o) { return milora::init_method<Backend>(o.method); }
bool data_driven(const Options& o) { return method_of(o).calibration != milora::Calibration::none; }

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

// One weight's adapter, from W alone (the methods that need no calibration data).
io::LoraFactors<float> init_module(const Options& o, io::HostMatrix<float>& w, const milora::AdapterConfig& cfg) {
  return milora::with_init_method<Backend>(o.method, o.solver == "fast", [&]<class Init>() -> io::LoraFactors<float> {
    if constexpr (milora::CalibratedInit<Init, Backend>)
      throw milora::state_error(concat("init_module: ", o.method, " needs calibration data"));  // run() never asks
    else
      return init_one<milora::Adapter<Backend, Init>>(w, cfg);
  });
}

// The data-driven methods: the folder as the reference LLaMA, calibrated on the first
// --calibration-batches batches of --calibration-data (as milora-finetune does), then every
// adapter's factors and, where the base changes, its W' (module path -> host matrix).
Precomputed calibrated(
    const Options& o, const io::HFModel& hf, const std::vector<std::string>& targets, const milora::AdapterConfig& cfg) {
  auto model = llama::from_pretrained<llama::Llama<Backend>>(hf);
  const auto tokenizer = llama::Tokenizer::for_model(o.model, model->config().vocab_size);
  const auto tokens = llama::load_tokens(o.calibration_data, tokenizer, model->config().vocab_size);
  llama::add_adapters_for_method(*model, o.method, o.solver == "fast", targets, cfg, tokens, o.batch, o.seq,
                                 o.calibration_batches);
  Precomputed out;
  for (auto* p : model->adapted())
    out.emplace(p->module, std::pair{io::factors_of(*p->adapter), io::to_host_matrix<Backend>(p->linear.weight())});
  return out;
}

// For each target found in some layers but not in others: the target and the layers that lack it
// ("model.layers.3, model.layers.7"). A layer is a "<prefix>.layers.<N>." in a weight's name.
std::vector<std::pair<std::string, std::string>> layers_missing_targets(const std::vector<std::string>& names,
                                                                        const std::vector<std::string>& targets) {
  std::map<std::string, std::set<std::string>> found;  // target -> layers holding it
  std::set<std::string> layers;
  for (const auto& name : names) {
    const auto at = name.find(".layers.");
    if (at == std::string::npos || name.size() <= 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
    auto end = at + 8;
    while (end < name.size() && std::isdigit(static_cast<unsigned char>(name[end]))) ++end;
    if (end == at + 8 || end >= name.size() || name[end] != '.') continue;
    const std::string layer = name.substr(0, end);
    layers.insert(layer);
    found[milora::tools::module_leaf(io::module_of_weight(name))].insert(layer);
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& t : targets) {
    const auto it = found.find(t);
    if (it == found.end() || it->second.size() == layers.size()) continue;
    std::string missing;
    for (const auto& l : layers)
      if (!it->second.count(l)) missing += (missing.empty() ? "" : ", ") + l;
    out.emplace_back(t, missing);
  }
  return out;
}

/// Which rank solves each weight (in `names`' order): largest first, by the cost of its solve
/// (out x in x min(out, in), an SVD's), each to the rank with the least cost so far; ties to the
/// lower rank. The same on every rank.
std::vector<int> owners_by_cost(const io::HFModel& model, const std::vector<std::string>& names, int ranks) {
  std::vector<std::size_t> order(names.size());
  std::vector<double> cost(names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    const auto& shape = model.info(names[i]).shape;
    cost[i] = double(shape[0]) * double(shape[1]) * double(std::min(shape[0], shape[1]));
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cost[a] > cost[b]; });
  std::vector<double> load(std::size_t(ranks), 0.0);
  std::vector<int> owner(names.size(), 0);
  for (std::size_t i : order) {
    const auto least = std::size_t(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = int(least);
    load[least] += cost[i];
  }
  return owner;
}

#if defined(MILORA_HAS_MPI)
// This rank's share of the weights solved, then every result broadcast by its owner (every rank
// takes part; rank 0 keeps them all for the write). Shapes first, as doubles, then the numbers.
Precomputed solve_shared(const Options& o, const io::HFModel& model, const std::vector<std::string>& names,
                         const milora::AdapterConfig& base_cfg, bool changes_base) {
  auto& comm = *o.job.mpi;
  const auto owner = owners_by_cost(model, names, comm.size());
  std::vector<std::size_t> mine;
  for (std::size_t i = 0; i < names.size(); ++i)
    if (owner[i] == comm.rank()) mine.push_back(i);
  Precomputed solved;
  std::mutex solved_mutex;
  {
    milora::tools::BlasThreadsPerJob blas(o.jobs);
    milora::tools::for_each_concurrently(mine.size(), o.jobs, [&](std::size_t k) {
      const std::string& name = names[mine[k]];
      const std::string module = io::module_of_weight(name);
      auto w = model.load<float>(name);
      io::require_finite(w, concat("'", name, "'"));
      milora::AdapterConfig cfg = base_cfg;
      cfg.seed = module_seed(o.seed, module);
      auto factors = init_module(o, w, cfg);
      std::lock_guard lock(solved_mutex);
      solved.emplace(module, std::pair{std::move(factors), changes_base ? std::move(w) : io::HostMatrix<float>{}});
    });
  }
  Precomputed all;
  for (std::size_t i = 0; i < names.size(); ++i) {
    const std::string module = io::module_of_weight(names[i]);
    const int root = owner[i];
    std::pair<io::LoraFactors<float>, io::HostMatrix<float>> entry;
    if (root == comm.rank()) entry = std::move(solved.at(module));
    auto& [f, residual] = entry;
    std::vector<double> shapes = {double(f.A.rows), double(f.A.cols), double(f.B.rows), double(f.B.cols), double(residual.rows),
                                  double(residual.cols)};
    comm.broadcast(shapes.data(), shapes.size(), root);
    auto share = [&](io::HostMatrix<float>& m, double rows, double cols) {
      m.rows = Index(rows);
      m.cols = Index(cols);
      m.data.resize(std::size_t(m.rows * m.cols));
      comm.broadcast(m.data.data(), m.data.size(), root);
    };
    share(f.A, shapes[0], shapes[1]);
    share(f.B, shapes[2], shapes[3]);
    share(residual, shapes[4], shapes[5]);
    if (comm.rank() == 0) all.emplace(module, std::move(entry));
  }
  return all;
}
#endif

void run(const Options& o) {
  if (data_driven(o) != !o.calibration_data.empty())
    throw milora::value_error(data_driven(o) ? concat("--method ", o.method, " needs --calibration-data (text or .u32 tokens)")
                                             : concat("--calibration-data is for ", milora::tools::calibrated_method_names<Backend>(),
                                                      ", not ", o.method));
  if (data_driven(o) && o.job.size > 1)
    throw milora::value_error(concat("--method ", o.method, " calibrates one model: run it as one process, not under mpirun"));
  const io::HFModel model(o.model);
  const auto targets = milora::tools::parse_targets(o.targets);
  // Which weights to adapt; every check happens before anything is written.
  std::set<std::string> selected;
  std::map<std::string, int> matches;
  for (const auto& t : targets) matches[t] = 0;
  for (const auto& name : model.tensor_names()) {
    if (name.size() <= 7 || name.compare(name.size() - 7, 7, ".weight") != 0) continue;
    const auto leaf = milora::tools::module_leaf(io::module_of_weight(name));
    if (!matches.count(leaf)) continue;
    const auto& info = model.info(name);
    if (info.shape.size() != 2)
      throw milora::shape_error(concat("target '", leaf, "' matches '", name, "', which has ", info.shape.size(),
                                       " dimensions; milora adapts 2-D weights (out x in)"));
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
  // A target some layers lack is adapted where it exists, as PEFT does, but said: a checkpoint with
  // a layer missing is more often damaged than designed so.
  for (const auto& [t, layers] : layers_missing_targets(model.tensor_names(), targets))
    std::cerr << "milora-init: warning: no '" << t << "' in " << layers << "; adapted where it exists\n";

  io::PeftAdapter<float> adapter;
  adapter.config.r = o.rank;
  adapter.config.lora_alpha = o.alpha > 0 ? o.alpha : double(o.rank);
  adapter.config.use_rslora = o.rslora;
  adapter.config.target_modules = targets;
  adapter.config.base_model_name_or_path = model.config().value("_name_or_path", o.model);
  adapter.metadata = {{"milora.method", o.method}, {"milora.solver", method_of(o).has_fast_solver ? o.solver : "none"},
                      {"milora.seed", std::to_string(o.seed)}};
  milora::AdapterConfig base_cfg = adapter.config.adapter_config();

  // --out checked (and its stale leftovers cleared) before the work; rank 0 writes it
  std::optional<milora::tools::StagedOutput> staged;
  if (o.job.rank == 0) staged.emplace(o.out);
  // Data-driven: every adapter at once, from the model's forward (and backward) passes first;
  // several ranks: every adapter solved by its rank first.
  Precomputed precomputed;
  const bool solved_first = data_driven(o) || o.job.size > 1;
  if (data_driven(o)) {
    precomputed = calibrated(o, model, targets, base_cfg);
    adapter.metadata["milora.calibration"] =
        concat(o.calibration_batches, " batches of ", o.batch, " x ", o.seq, " tokens of ", o.calibration_data);
  }
#if defined(MILORA_HAS_MPI)
  if (o.job.size > 1) {
    precomputed = solve_shared(o, model, std::vector<std::string>(selected.begin(), selected.end()), base_cfg, method_of(o).changes_base);
    if (o.job.rank != 0) return;  // rank 0 writes
  }
#endif

  milora::tools::Progress progress(selected.size());
  std::mutex modules_mutex;  // adapt() runs on up to --jobs threads at once
  auto adapt = [&](const std::string& name, io::HostMatrix<float>& w) {
    const auto started = progress.start();
    const std::string module = io::module_of_weight(name);
    io::require_finite(w, concat("'", name, "'"));
    io::LoraFactors<float> factors;
    if (solved_first) {
      const auto it = precomputed.find(module);  // each module's entry is taken by one call
      if (it == precomputed.end())
        throw milora::state_error(concat("'", name, "' was not adapted by the calibrated model (", o.model, "/config.json)"));
      auto& [computed, residual] = it->second;
      if (method_of(o).changes_base) {
        if (residual.rows != w.rows || residual.cols != w.cols)
          throw milora::shape_error(concat("'", name, "' is ", w.rows, "x", w.cols, ", the model's ", residual.rows, "x", residual.cols));
        w = std::move(residual);
      }
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
  if (!method_of(o).changes_base) {  // the base is unchanged: no residual folder
    const std::vector<std::string> names(selected.begin(), selected.end());
    milora::tools::for_each_concurrently(names.size(), o.jobs, [&](std::size_t i) {
      auto w = model.load<float>(names[i]);
      adapt(names[i], w);
    });
  } else {
    milora::tools::BlasThreadsPerJob blas(o.jobs);
    io::write_hf_model<float>(model, staged->dir() / "residual", [&](const std::string& n) { return selected.count(n) > 0; },
                              adapt, o.jobs);
  }
  io::save_peft_adapter(adapter, staged->dir());
  staged->commit();
  std::cerr << "milora-init: " << o.method << " adapter (r = " << o.rank << ") for " << selected.size() << " weights in "
            << o.out << (method_of(o).changes_base ? " (+ residual/)" : "") << (o.job.size > 1 ? concat(", solved by ", o.job.size, " ranks") : "")
            << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"milora-init: initialise a LoRA / PiSSA / MiLoRA / OLoRA / orthogonal / MiCA adapter (PEFT format) for a Hugging Face\n"
               "model folder, or a CorDA / EVA / LoRA-GA one for a LLaMA folder from --calibration-data. PiSSA, MiLoRA, OLoRA,\n"
               "CorDA and LoRA-GA also write OUT/residual, the model with W - s*B*A in place of each adapted weight."};
  app.add_option("--model", o.model, "Hugging Face model folder (config.json + model.safetensors or a sharded index)")
      ->required()->check(CLI::ExistingDirectory);
  milora::tools::add_method_option<Backend>(app, o.method, "Those calibrated read --calibration-data through a LLaMA folder");
  app.add_option("--calibration-data", o.calibration_data,
                 "CorDA / EVA / LoRA-GA: text, or little-endian uint32 token ids in a .u32 file, run through the model")
      ->check(CLI::ExistingFile);
  app.add_option("--calibration-batches", o.calibration_batches, "batches of --calibration-data")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--batch", o.batch, "sequences per calibration batch")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seq", o.seq, "tokens per calibration sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--rank", o.rank, "adapter rank r")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--alpha", o.alpha, "lora_alpha (default: the rank, so s = 1)")->check(milora::tools::finite_positive);
  app.add_flag("--rslora", o.rslora, "scale alpha / sqrt(r) instead of alpha / r");
  app.add_option("--targets", o.targets, "comma-separated module names to adapt")->capture_default_str();
  milora::tools::add_solver_option(app, o.solver);
  app.add_option("--jobs", o.jobs,
                 "weights adapted at once, each on its own thread with the BLAS's threads shared out: more throughput "
                 "on few cores. The BLAS rounds differently with fewer threads, so the factors agree with --jobs 1 to "
                 "the solver's accuracy, not bit for bit")
      ->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--seed", o.seed, "seed of LoRA's random A (one stream per module, derived from its name)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--out", o.out, "output folder (must not exist)")->required();
  return milora::tools::run_tool("milora-init", app, argc, argv, [&] {
    milora::tools::run_as_rank("milora-init", [&](milora::tools::Job job) {
      o.job = job;
      run(o);
    });
  });
}
