// One LoRA fine-tuning step of the reference LLaMA on the CPU (forward + backward + AdamW), in
// tokens per second, and the machine's sgemm rate in the same run, so the step can be reported as a
// fraction of the measured peak. benchmarks/llama_vs_pytorch.sh runs this and the PyTorch reference
// (tests/reference/llama_reference.py bench) on the same config, threads and batch, and prints the
// ratio.
//
//   llama_step_bench --config CONFIG.json [--batch 4 --seq 256 --rank 16] [google-benchmark flags]
//   llama_step_bench --smoke      (a tiny config, one iteration: CI checks that the program works)
//
// Counters: tokens/s (items_per_second), GFLOP/s of the step (matrix products only, counted from
// the shapes: see flops_per_token), peak resident memory of the process in MiB.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "kernels_cpu.hpp"
#include "milora/io/json.hpp"
#include "trainer.hpp"

namespace {

using BE = milora::EigenBackend<float>;
using Model = llama::Llama<BE>;
using llama::Index;

struct Setup {
  llama::LlamaConfig config;
  Index batch = 4, seq = 256, rank = 16;
  std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
} g;

// Matrix-product FLOPs per token of one step with frozen weights: forward 2 per weight entry,
// backward 2 more (input gradients only); attention 4 T hd per head forward (QK^T, PV; the causal
// half is computed in full), 8 T hd backward; adapters 2 r (in + out) forward, 6 r (in + out)
// backward (dA, dB, dx).
double flops_per_token(const Model& m) {
  const auto& c = m.config();
  double lin = 0;
  for (const auto& w : c.weights())
    if (w.rows > 1 && w.name != "model.embed_tokens.weight") lin += double(w.rows) * double(w.cols);
  if (c.tie_word_embeddings) lin += double(c.vocab_size) * double(c.hidden_size);
  const double att = 12.0 * double(g.seq) * double(c.head_dim) * double(c.num_attention_heads) * double(c.num_hidden_layers);
  double adapters = 0;
  for (const auto& w : c.weights())
    for (const auto& t : g.targets)
      if (w.name.find(t) != std::string::npos) adapters += 8.0 * double(g.rank) * double(w.rows + w.cols);
  return 4 * lin + att + adapters;
}

double peak_rss_mib() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

void lora_step(benchmark::State& state) {
  auto model = llama::random_model<Model>(g.config, 1);
  model->add_adapters(g.targets, {.rank = g.rank, .alpha = 2.0 * double(g.rank)});
  std::vector<llama::Token> tokens(std::size_t(g.batch * g.seq + 1));
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = llama::Token((i * 2654435761u) % std::size_t(g.config.vocab_size));
  llama::TrainConfig tc;
  tc.steps = 1 << 30;
  tc.batch = g.batch;
  tc.seq = g.seq;
  tc.lr = 1e-4;
  tc.progress = false;
  llama::Trainer<Model> trainer(*model, tc, llama::DataLoader(tokens, g.batch, g.seq), {}, {});
  trainer.train_step();  // warm-up: allocations, page faults, OpenBLAS threads
  for (auto _ : state) benchmark::DoNotOptimize(trainer.train_step());
  const double tokens_per_step = double(g.batch * g.seq);
  state.SetItemsProcessed(state.iterations() * Index(tokens_per_step));
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_token(*model) * tokens_per_step * 1e-9 * double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
  state.counters["peak_MiB"] = peak_rss_mib();
}

void sgemm_peak(benchmark::State& state) {
  const Index n = state.range(0);
  auto a = BE::zeros(n, n), b = BE::zeros(n, n), c = BE::zeros(n, n);
  BE::fill_normal(a, 0, 1, 1);
  BE::fill_normal(b, 0, 1, 2);
  for (auto _ : state) BE::gemm(1, a, milora::Trans::no, b, milora::Trans::no, 0, c);
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * double(n) * double(n) * double(n) * 1e-9 * double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

bool take(int& argc, char** argv, const char* flag, std::string* value) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], flag) != 0) continue;
    const int n = value ? 2 : 1;
    if (value) {
      if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
      *value = argv[i + 1];
    }
    for (int j = i; j + n < argc; ++j) argv[j] = argv[j + n];
    argc -= n;
    return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config, v;
  const bool smoke = take(argc, argv, "--smoke", nullptr);
  if (take(argc, argv, "--config", &config)) g.config = llama::LlamaConfig::from_json(milora::io::read_json_file(config), config);
  if (take(argc, argv, "--batch", &v)) g.batch = std::stol(v);
  if (take(argc, argv, "--seq", &v)) g.seq = std::stol(v);
  if (take(argc, argv, "--rank", &v)) g.rank = std::stol(v);
  if (smoke) {
    g.config = llama::LlamaConfig::from_json({{"vocab_size", 256}, {"hidden_size", 64}, {"intermediate_size", 128},
                                              {"num_hidden_layers", 2}, {"num_attention_heads", 4}}, "smoke");
    g.batch = 2;
    g.seq = 32;
    g.rank = 4;
  } else if (config.empty()) {
    std::fprintf(stderr, "llama_step_bench: give --config CONFIG.json (or --smoke)\n");
    return 2;
  }
  benchmark::RegisterBenchmark("lora_step", lora_step)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
  benchmark::RegisterBenchmark("sgemm_peak", sgemm_peak)->Arg(smoke ? 64 : 2048)->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
