// One LoRA fine-tuning step of the reference LLaMA on the CPU (forward + backward + AdamW), in
// tokens per second, and the machine's sgemm rate in the same run, so the step can be reported as a
// fraction of the measured peak. benchmarks/llama_vs_pytorch.sh runs this and the PyTorch reference
// (tests/reference/llama_reference.py bench) on the same config, threads and batch, and prints the
// ratio.
//
//   llama_step_bench --config CONFIG.json [--batch 4 --seq 256 --rank 16] [--device cuda] [google-benchmark flags]
//   llama_step_bench --smoke      (a tiny config, one iteration: CI checks that the program works)
//
// Counters: tokens/s (items_per_second), GFLOP/s of the step (matrix products only, counted from
// the shapes: see flops_per_token), peak resident memory of the process in MiB (a high-water mark:
// it includes the benchmarks before), the frozen weights' size as stored (frozen_MiB); lora_step_bf16
// is the step with the projections and the saved activations in bf16 (--dtype bf16),
// lora_step_bf16_weights with the projections alone in bf16, saved_act_MiB the activations kept
// from forward to backward; with --device cuda
// (CudaBackend<float>, scripts/gpu.sh), the step and sgemm_peak run on the GPU, each iteration
// ends with the device idle, and gpu_used_MiB is the device memory in use after the steps
// (cudaMemGetInfo: the model, its activations and the CUDA context); lora_step_tf32 and
// sgemm_peak_tf32 repeat the two with TF32 tensor-core products. Without a usable GPU,
// --device cuda exits with 77 (CTest's skip code) and says why.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <type_traits>

#include "llama/device.hpp"
#include "llama/trainer.hpp"
#include "milora/io/json.hpp"

namespace {

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
template <class Model>
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

// Waits for the GPU's queue (on the CPU there is none), so that a timed iteration includes its work.
template <class BE>
void finish([[maybe_unused]] const char* what) {
#if defined(MILORA_LLAMA_CUDA)
  if constexpr (std::is_same_v<BE, milora::CudaBackend<float>>) milora::cuda::context().synchronize(what);
#endif
}

template <class BE>
void record_device_memory(benchmark::State& state) {
#if defined(MILORA_LLAMA_CUDA)
  if constexpr (std::is_same_v<BE, milora::CudaBackend<float>>) {
    std::size_t free = 0, total = 0;
    milora::cuda::check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    state.counters["gpu_used_MiB"] = double(total - free) / (1024.0 * 1024.0);
  }
#else
  (void)state;
#endif
}

// Bytes of the frozen weights as the model stores them: the projections in Weights' format, the
// embedding, norms and head in the scalar.
template <class Model>
double frozen_mib(const Model& m) {
  double bytes = 0;
  for (const auto& w : m.config().weights()) {
    const bool projection = w.name.find("_proj.") != std::string::npos;
    const double per = projection && !Model::kNativeWeights ? 2.0 : double(sizeof(typename Model::scalar));
    bytes += per * double(w.rows) * double(w.cols);
  }
  return bytes / (1024.0 * 1024.0);
}

template <class BE, class Weights = milora::NativeWeights, bool kBf16Activations = false>
void lora_step(benchmark::State& state) {
  using Model = llama::Llama<BE, Weights>;
  auto model = llama::random_model<Model>(g.config, 1);
  model->keep_activations_in_bf16(kBf16Activations);
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
  trainer.train_step();  // warm-up: allocations, page faults, OpenBLAS threads, cuBLAS handles
  finish<BE>("warm-up step");
  for (auto _ : state) {
    benchmark::DoNotOptimize(trainer.train_step());
    finish<BE>("lora_step");
  }
  const double tokens_per_step = double(g.batch * g.seq);
  state.SetItemsProcessed(state.iterations() * Index(tokens_per_step));
  state.counters["GFLOP/s"] = benchmark::Counter(flops_per_token(*model) * tokens_per_step * 1e-9 * double(state.iterations()),
                                                 benchmark::Counter::kIsRate);
  state.counters["peak_MiB"] = peak_rss_mib();
  state.counters["frozen_MiB"] = frozen_mib(*model);
  state.counters["saved_act_MiB"] = model->saved_activation_bytes() / (1024.0 * 1024.0);
  record_device_memory<BE>(state);
}

template <class BE>
void sgemm_peak(benchmark::State& state) {
  const Index n = state.range(0);
  auto a = BE::zeros(n, n), b = BE::zeros(n, n), c = BE::zeros(n, n);
  BE::fill_normal(a, 0, 1, 1);
  BE::fill_normal(b, 0, 1, 2);
  BE::gemm(1, a, milora::Trans::no, b, milora::Trans::no, 0, c);  // warm-up
  finish<BE>("sgemm warm-up");
  for (auto _ : state) {
    BE::gemm(1, a, milora::Trans::no, b, milora::Trans::no, 0, c);
    finish<BE>("sgemm_peak");
  }
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
  std::string config, v, device = "cpu";
  const bool smoke = take(argc, argv, "--smoke", nullptr);
  take(argc, argv, "--device", &device);
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
  try {
    llama::on_device(device, "llama_step_bench", [&]<class BE>() {
      benchmark::RegisterBenchmark("lora_step", lora_step<BE>)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
      // the frozen projections and the kept activations in bf16 (milora-finetune --dtype bf16): on a
      // GPU, tensor-core products; and the projections alone, for what rounding the activations costs
      benchmark::RegisterBenchmark("lora_step_bf16", lora_step<BE, milora::Bf16Weights, true>)
          ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
      benchmark::RegisterBenchmark("lora_step_bf16_weights", lora_step<BE, milora::Bf16Weights, false>)
          ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
      // 2048^2 keeps a CPU busy for a while; a GPU needs 8192^2 to reach its rate.
      const Index n = smoke ? 64 : device == "cuda" ? 8192 : 2048;
      benchmark::RegisterBenchmark("sgemm_peak", sgemm_peak<BE>)->Arg(n)->Unit(benchmark::kMillisecond)->UseRealTime();
      if (device == "cuda") {  // the same two with TF32 tensor-core products (milora-finetune --tf32)
        const auto tf32 = [](auto body) {
          return [body](benchmark::State& state) {
            llama::use_tf32<BE>(true);
            body(state);
            llama::use_tf32<BE>(false);
          };
        };
        benchmark::RegisterBenchmark("lora_step_tf32", tf32(lora_step<BE>))
            ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
        // bf16 projections and activations, the products that stay float (LM head, adapters) on TF32
        benchmark::RegisterBenchmark("lora_step_bf16_tf32", tf32(lora_step<BE, milora::Bf16Weights, true>))
            ->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(smoke ? 1 : 3);
        benchmark::RegisterBenchmark("sgemm_peak_tf32", tf32(sgemm_peak<BE>))->Arg(n)->Unit(benchmark::kMillisecond)->UseRealTime();
      }
      benchmark::Initialize(&argc, argv);
      benchmark::RunSpecifiedBenchmarks();
      benchmark::Shutdown();
    });
  } catch (const milora::device_error& e) {  // --device cuda without a GPU
    std::fprintf(stderr, "llama_step_bench: skipped: %s\n", e.what());
    return 77;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llama_step_bench: %s\n", e.what());
    return 1;
  }
}
