// Decoding with the key/value cache against recomputing the whole context per token, as a ratio in
// the same run: the next-token logits of generate (llama/generation.hpp, NextTokenLogits) for a
// prompt and greedy new tokens, on a random model of a given config.
//
//   generate_bench [--config CONFIG.json] [--prompt 32 --new 256 --batch 1] [--device cuda] [google-benchmark flags]
//   generate_bench --smoke      (a tiny config, a few tokens: CI checks that the program works)
//   generate_bench [--config CONFIG.json] --save-model DIR   (writes the float model it times, and exits:
//                                                             benchmarks/llama_cpp_decode.sh runs it in llama.cpp)
//
// decode/kv_cache is the baseline; decode/recompute's ratio is how many times slower generation is
// without the cache. Both count every token a step produces (items_per_second: new tokens per
// second, all sequences of the batch). Without --config: a LLaMA-shaped model small enough for a
// 2-core CPU (4 layers, hidden 256, 4 heads of 64 over 2 key/value heads, a 32000-token vocabulary).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "llama/device.hpp"
#include "llama/generation.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "milora/io/json.hpp"
#include "ratio_reporter.hpp"

namespace {

using llama::Index;

struct Setup {
  llama::LlamaConfig config = llama::LlamaConfig::from_json(
      {{"vocab_size", 32000}, {"hidden_size", 256}, {"intermediate_size", 688}, {"num_hidden_layers", 4},
       {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"max_position_embeddings", 1024}}, "generate_bench default");
  Index prompt = 32, new_tokens = 256, batch = 1;
} g;

// `new_tokens` greedy tokens after the prompt(s), every step's logits from NextTokenLogits.
template <class Model>
void decode(Model& model, bool kv_cache) {
  llama::GenerationOptions o;
  o.max_new_tokens = g.new_tokens;
  o.kv_cache = kv_cache;
  const Index vocab = model.config().vocab_size;
  std::vector<std::vector<llama::Token>> contexts(std::size_t(g.batch));
  for (Index b = 0; b < g.batch; ++b)
    for (Index t = 0; t < g.prompt; ++t) contexts[std::size_t(b)].push_back(llama::Token((t * 7919 + b * 104729 + 17) % vocab));
  const std::vector<bool> done(std::size_t(g.batch), false);
  llama::NextTokenLogits<Model> next(model, g.batch, g.prompt, o);
  for (Index i = 0; i < g.new_tokens; ++i) {
    const auto& logits = next(contexts, done);
    for (Index b = 0; b < g.batch; ++b) {
      const float* row = logits.data() + b * vocab;
      contexts[std::size_t(b)].push_back(llama::Token(std::max_element(row, row + vocab) - row));
    }
  }
  benchmark::DoNotOptimize(contexts.back().back());
}

template <class BE>
auto decoding(bool kv_cache) {
  return [kv_cache](benchmark::State& state) {
    using Model = llama::Llama<BE>;
    auto model = llama::random_model<Model>(g.config, 1);
    for (auto _ : state) decode(*model, kv_cache);
    state.SetItemsProcessed(state.iterations() * g.new_tokens * g.batch);
  };
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string device = "cpu";
    const bool smoke = milora::bench::take_flag(argc, argv, "--smoke");
    auto value = [&](const char* flag) -> std::string {
      for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == flag) {
          std::string v = argv[i + 1];
          for (int j = i; j + 2 < argc; ++j) argv[j] = argv[j + 2];
          argc -= 2;
          return v;
        }
      return {};
    };
    if (const auto d = value("--device"); !d.empty()) device = d;
    if (const auto c = value("--config"); !c.empty()) g.config = llama::LlamaConfig::from_json(milora::io::read_json_file(c), c);
    if (const auto v = value("--prompt"); !v.empty()) g.prompt = std::stol(v);
    if (const auto v = value("--new"); !v.empty()) g.new_tokens = std::stol(v);
    if (const auto v = value("--batch"); !v.empty()) g.batch = std::stol(v);
    const auto save_to = value("--save-model");
    if (smoke) {
      g.config = llama::LlamaConfig::from_json({{"vocab_size", 256}, {"hidden_size", 32}, {"intermediate_size", 64},
                                                {"num_hidden_layers", 2}, {"num_attention_heads", 4}}, "smoke");
      g.prompt = 4;
      g.new_tokens = 8;
    }
    if (!save_to.empty()) {
      auto model = llama::random_model<llama::Llama<milora::EigenBackend<float>>>(g.config, 1);  // decoding<BE>'s model
      llama::save_pretrained(*model, save_to);
      return 0;
    }
    if (g.prompt <= 0 || g.new_tokens <= 0 || g.batch <= 0 || g.prompt + g.new_tokens > g.config.max_position_embeddings) {
      std::fprintf(stderr, "generate_bench: --prompt %ld + --new %ld must be positive and fit max_position_embeddings %ld\n",
                   long(g.prompt), long(g.new_tokens), long(g.config.max_position_embeddings));
      return 2;
    }
    int status = 0;
    llama::on_device(device, "generate_bench", [&]<class BE>() {
      milora::bench::register_with_baseline("decode/kv_cache", "decode/kv_cache", decoding<BE>(true));
      milora::bench::register_with_baseline("decode/recompute", "decode/kv_cache", decoding<BE>(false));
      status = milora::bench::run_with_ratios(argc, argv, smoke ? "generate_bench --smoke"
                                                                : "generate_bench (ratio: times slower than decoding with the cache)");
    });
    return status;
  } catch (const milora::device_error& e) {  // --device cuda without a GPU
    std::fprintf(stderr, "generate_bench: skipped: %s\n", e.what());
    return 77;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate_bench: %s\n", e.what());
    return 1;
  }
}
