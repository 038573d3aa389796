// milora's GGUF files checked by llama.cpp itself (@fugood/llama.node, its prebuilt CPU build) and
// by an independent GGUF reader (@huggingface/gguf), both fetched from npm at build time
// (tests/gguf/prepare_llama_cpp.sh). For random models with real tokenizers (LLaMA-3.1's with rope
// scaling, grouped-query attention and a tied head; LLaMA-2's sentencepiece-style tokenizer.json
// with attention and MLP biases; Qwen3's on a Qwen2 with q / k / v biases) and one with a
// sentencepiece tokenizer.model trained here, each with a MiLoRA adapter "trained" from
// milora-init's start:
//   * base.gguf (milora-merge --format gguf, no adapter), adapter.gguf (milora-convert --format gguf:
//     the rank-2r plain LoRA on the ORIGINAL weights) and merged.gguf (the residual with the trained
//     adapter merged in);
//   * llama.cpp tokenizes the prompts as milora does; its greedy continuation (48 tokens) of base,
//     base + adapter and merged equals milora-generate's text on the original model and on the
//     residual + adapter; its first-token probabilities (temperature 1, every filter off, float32
//     key/value cache) equal milora's softmax within 1e-5 (float32 both, summed in different
//     orders; docs/files.md has the differences measured);
//   * the adapter as F16 and the merged model as Q8_0 load and generate in llama.cpp, and
//     @huggingface/gguf reads every key (type and value) and tensor header (name, shape, type,
//     offset) of every file as milora's own reader does.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "../io/io_test_util.hpp"
#include "../llama/llama_test_util.hpp"
#include "llama/data.hpp"
#include "llama/gguf_export.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/io/gguf.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/peft.hpp"

namespace {

namespace fs = std::filesystem;

int run(const std::string& command, std::string* out = nullptr, std::string* err = nullptr) {
  milora_test::ScratchDir logs;
  const std::string cmd = command + " > " + (logs / "out").string() + " 2> " + (logs / "err").string();
  const int rc = std::system(cmd.c_str());
  if (out) *out = milora_test::read_file(logs / "out");
  if (err) *err = milora_test::read_file(logs / "err");
  const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  if (status != 0 && !err) MESSAGE(milora_test::read_file(logs / "err"));
  return status;
}

std::string tool(const std::string& name) { return std::string(MILORA_TOOL_DIR) + "/" + name; }

nlohmann::json last_json_line(const std::string& out) {
  const auto end = out.find_last_not_of('\n');
  const auto start = out.rfind('\n', end);
  const auto from = start == std::string::npos ? 0 : start + 1;
  return nlohmann::json::parse(out.substr(from, end - from + 1));
}

// The random models: weights of std 0.3 give peaked next-token distributions, so greedy decoding
// stays far from ties that float32 rounding could flip. Rope scaling with all three bands in
// head_dim 16 (wavelengths 6.3 kept, 20 and 63 interpolated, the rest divided).
llama::LlamaConfig small_config(llama::Index vocab) {
  auto c = llama_test::tiny_config();  // 2 layers, 4 heads over 2 key/value heads
  c.vocab_size = vocab;
  c.hidden_size = 64;
  c.intermediate_size = 128;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  return c;
}

// llama.cpp's text of a continuation against milora's (transformers'): a sentencepiece decoder drops
// the space that starts the first piece of a decoded sequence ("\u2581lovers" alone is "lovers"),
// llama.cpp detokenizes a continuation piece by piece and keeps it (" lovers").
bool same_text(const std::string& llama_cpp, const std::string& milora) {
  return llama_cpp == milora || (!llama_cpp.empty() && llama_cpp[0] == ' ' && llama_cpp.substr(1) == milora);
}

void compare_with_own_reader(const fs::path& path, const nlohmann::json& theirs) {
  CAPTURE(path);
  const milora::io::GgufFile mine(path);
  const auto& md = theirs["metadata"];
  // @huggingface/gguf adds the header's fields (version, tensor_count, kv_count) to the metadata
  std::size_t keys = 0;
  for (const auto& [key, v] : mine.header().metadata) {
    CAPTURE(key);
    REQUIRE(md.contains(key));
    const auto& t = md[key];
    CHECK(t["type"].get<int>() == (v.is_array ? 9 : int(v.type)));
    if (v.is_array) CHECK(t["subType"].get<int>() == int(v.type));
    const auto item = [&](const milora::io::GgufValue::Item& x) -> nlohmann::json {
      return std::visit([](const auto& y) { return nlohmann::json(y); }, x);
    };
    if (v.is_array) {
      REQUIRE(t["value"].size() == v.items.size());
      for (std::size_t i = 0; i < v.items.size(); ++i)
        if (v.type == milora::io::GgufType::F32)
          CHECK(t["value"][i].get<double>() == doctest::Approx(std::get<double>(v.items[i])));
        else if (v.type == milora::io::GgufType::STRING && std::get<std::string>(v.items[i]).starts_with("\xEF\xBB\xBF"))
          // a token "\uFEFF" (LLaMA-2 has one): @huggingface/gguf decodes with TextDecoder, which drops a leading BOM
          CHECK(t["value"][i] == std::get<std::string>(v.items[i]).substr(3));
        else
          CHECK(t["value"][i] == item(v.items[i]));
    } else if (v.type == milora::io::GgufType::F32) {
      CHECK(t["value"].get<double>() == doctest::Approx(std::get<double>(v.items[0])));
    } else {
      CHECK(t["value"] == item(v.items[0]));
    }
    ++keys;
  }
  CHECK(md["kv_count"]["value"].get<std::size_t>() == keys);
  REQUIRE(theirs["tensors"].size() == mine.tensors().size());
  for (std::size_t i = 0; i < mine.tensors().size(); ++i) {
    const auto& t = mine.tensors()[i];
    const auto& o = theirs["tensors"][i];
    CHECK(o["name"] == t.name);
    CHECK(o["shape"].get<std::vector<std::uint64_t>>() == t.ne);
    CHECK(o["dtype"].get<std::uint32_t>() == t.type);
    CHECK(o["offset"].get<std::uint64_t>() == t.offset);
  }
  CHECK(theirs["tensorDataOffset"].get<std::uint64_t>() == mine.header().data_start);
}


// The whole check for one model, with the tokenizer files of `tokenizer_dir`. The head's rows of
// `silenced` ids are zero (an untied head), so that the model, whose other logits spread around
// zero by several units, never picks them.
void check_with_llama_cpp(const llama::LlamaConfig& config, const fs::path& tokenizer_dir, const std::vector<std::string>& prompts,
                          const std::vector<llama::Token>& silenced = {}) {
  using Model = llama::Llama<milora::EigenBackend<float>>;
  milora_test::ScratchDir dir;
  const fs::path model = dir / "model", init = dir / "init", trained = dir / "trained";
  {
    auto m = llama::random_model<Model>(config, 7, 0.3);
    llama_test::randomise_biases(*m, 11);  // random_model leaves them zero, which no permutation would change
    llama::save_pretrained(*m, dir / "random");
  }
  REQUIRE((silenced.empty() || !config.tie_word_embeddings));
  milora::io::write_hf_model<float>(milora::io::HFModel(dir / "random"), model, [&](const std::string& name) { return name == "lm_head.weight"; },
                                    [&](const std::string&, milora::io::HostMatrix<float>& head) {
                                      for (const auto id : silenced) std::fill_n(head.data.begin() + std::ptrdiff_t(id) * head.cols, head.cols, 0.0f);
                                    });
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"})
    if (fs::exists(tokenizer_dir / f)) fs::copy_file(tokenizer_dir / f, model / f);

  // MiLoRA's start, then a "trained" adapter: the start moved by noise of the size training gives
  REQUIRE(run(tool("milora-init") + " --model " + model.string() + " --method milora --rank 4 --alpha 8 --out " + init.string()) == 0);
  {
    auto a = milora::io::load_peft_adapter<float>(init);
    std::mt19937 gen(3);
    std::normal_distribution<float> noise(0.0f, 0.2f);
    for (auto& [module, f] : a.modules) {
      for (auto& x : f.A.data) x += noise(gen);
      for (auto& x : f.B.data) x += noise(gen);
    }
    milora::io::save_peft_adapter(a, trained);
  }
  const fs::path base_gguf = dir / "base.gguf", adapter_gguf = dir / "adapter.gguf", merged_gguf = dir / "merged.gguf";
  REQUIRE(run(tool("milora-merge") + " --model " + model.string() + " --format gguf --outtype f32 --out " + base_gguf.string()) == 0);
  REQUIRE(run(tool("milora-convert") + " --initial " + init.string() + " --trained " + trained.string() + " --format gguf --base " +
              model.string() + " --out " + adapter_gguf.string()) == 0);
  REQUIRE(run(tool("milora-merge") + " --model " + (init / "residual").string() + " --adapter " + trained.string() +
              " --format gguf --outtype f32 --out " + merged_gguf.string()) == 0);
  // the other types, for the header comparison and a load in llama.cpp
  const fs::path adapter_f16 = dir / "adapter-f16.gguf", merged_q8 = dir / "merged-q8_0.gguf";
  REQUIRE(run(tool("milora-convert") + " --initial " + init.string() + " --trained " + trained.string() + " --format gguf --outtype f16 --base " +
              model.string() + " --out " + adapter_f16.string()) == 0);
  REQUIRE(run(tool("milora-merge") + " --model " + (init / "residual").string() + " --adapter " + trained.string() +
              " --format gguf --outtype q8_0 --out " + merged_q8.string()) == 0);

  constexpr int kNewTokens = 48;
  constexpr double kProbTolerance = 1e-5;
  // milora's side: the original model, and the residual with the trained adapter (as MiLoRA trains)
  std::vector<nlohmann::json> mine_base, mine_adapted;
  for (const auto& p : prompts) {
    std::string out;
    REQUIRE(run(tool("milora-generate") + " --model " + model.string() + " --prompt '" + p + "' --max-new-tokens " + std::to_string(kNewTokens) +
                    " --top-probs 5", &out) == 0);
    mine_base.push_back(last_json_line(out));
    REQUIRE(run(tool("milora-generate") + " --model " + (init / "residual").string() + " --adapter " + trained.string() + " --prompt '" + p +
                    "' --max-new-tokens " + std::to_string(kNewTokens) + " --top-probs 5", &out) == 0);
    mine_adapted.push_back(last_json_line(out));
  }

  nlohmann::json job;
  const auto runs = nlohmann::json::array({
      {{"name", "base"}, {"model", base_gguf}, {"loras", nlohmann::json::array()}},
      {{"name", "adapter"}, {"model", base_gguf}, {"loras", {adapter_gguf}}},
      {{"name", "adapter_f16"}, {"model", base_gguf}, {"loras", {adapter_f16}}},
      {{"name", "merged"}, {"model", merged_gguf}, {"loras", nlohmann::json::array()}},
      {{"name", "merged_q8_0"}, {"model", merged_q8}, {"loras", nlohmann::json::array()}},
  });
  for (auto r : runs) {
    r["prompts"] = prompts;
    r["n_predict"] = kNewTokens;
    r["n_probs"] = 5;
    job["runs"].push_back(r);
  }
  job["files"] = {base_gguf, adapter_gguf, merged_gguf, adapter_f16, merged_q8};
  milora_test::write_file(dir / "job.json", job.dump());
  std::string out, err;
  // llama.node 1.7.15's race between a completion's worker and its bookkeeping (see the script)
  // now and then ends a run with "Another completion is in progress" or a crash in release()
  // (docs/files.md): such a run is repeated, up to three times in all; any other failure fails the
  // test at once
  int rc = 0;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    rc = run("node " + std::string(MILORA_GGUF_SCRIPT) + " " + (fs::path(MILORA_GGUF_REFERENCES) / "node" / "node_modules").string() + " " +
                 (dir / "job.json").string() + " " + (dir / "result.json").string(),
             &out, &err);
    const bool race = err.find("Another completion is in progress") != std::string::npos || rc == 139 || rc == -1;
    if (rc == 0 || !race) break;
    MESSAGE("llama.node's completion race (attempt " << attempt << "), running the script again");
  }
  REQUIRE_MESSAGE(rc == 0, err.substr(err.size() > 4000 ? err.size() - 4000 : 0));
  const auto theirs = nlohmann::json::parse(milora_test::read_file(dir / "result.json"));

  const auto tokenizer = llama::Tokenizer::for_model(model, config.vocab_size);
  double worst = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(prompts[i]);
    // llama.cpp's tokenizer from the GGUF's keys: the same ids (its tokenize() adds no BOS; its
    // completions do, by tokenizer.ggml.add_bos_token, or their tokens would differ below)
    CHECK(theirs["runs"]["base"][i]["prompt_tokens"].get<std::vector<llama::Token>>() == tokenizer.encode(prompts[i], false));
    for (const auto& [name, mine] : {std::pair{"base", &mine_base}, {"adapter", &mine_adapted}, {"merged", &mine_adapted}}) {
      CAPTURE(name);
      const auto& m = (*mine)[i];
      const auto& t = theirs["runs"][name][i];
      REQUIRE(m["stopped_by"] == "length");
      CHECK(m["new_tokens"].get<int>() == kNewTokens);
      CHECK(t["greedy_steps"].size() == std::size_t(kNewTokens));
      CHECK(same_text(t["greedy_text"].get<std::string>(), m["text"].get<std::string>()));
      // first-token probabilities: the five most likely, in order
      const auto& probs = t["first_probs"];
      REQUIRE(probs.size() == 5);
      for (std::size_t k = 0; k < 5; ++k) {
        CAPTURE(k);
        const double p = m["top_probs"][0][k][1].get<double>();
        worst = std::max(worst, std::abs(probs[k][1].get<double>() - p));
        CHECK(std::abs(probs[k][1].get<double>() - p) < kProbTolerance);
        const std::string piece = tokenizer.decode(std::vector<llama::Token>{m["top_probs"][0][k][0].get<llama::Token>()});
        if (piece.find("\xEF\xBF\xBD") == std::string::npos)  // a piece of a UTF-8 sequence: llama.cpp shows its bytes
          CHECK(same_text(probs[k][0].get<std::string>(), piece));
      }
    }
    // the adapter changes what the model says (so the runs above compare something), and its
    // f16 file and the q8_0 merged model load and run
    CHECK(mine_adapted[i]["text"] != mine_base[i]["text"]);
    CHECK(theirs["runs"]["adapter_f16"][i]["greedy_steps"].size() == std::size_t(kNewTokens));
    CHECK(theirs["runs"]["merged_q8_0"][i]["greedy_steps"].size() == std::size_t(kNewTokens));
  }
  MESSAGE("largest difference of a first-token probability, llama.cpp vs milora: " << worst);
  for (const auto& f : {base_gguf, adapter_gguf, merged_gguf, adapter_f16, merged_q8}) compare_with_own_reader(f, theirs["files"][f.string()]);
  CHECK(milora::io::GgufFile(base_gguf).header().find("tokenizer.ggml.add_bos_token") != nullptr);
}

fs::path fetched(const std::string& name) { return fs::path(MILORA_TEXT_REFERENCES) / "models" / name; }

const std::vector<std::string> kPrompts = {"The low-rank adapters of a language model", "Once upon a time, in 1987,",
                                           "def minor_singular_subspace(W):"};

}  // namespace

TEST_CASE("llama.cpp runs milora's GGUF files as milora does: LLaMA-3.1's tokenizer, rope scaling, GQA, tied head") {
  auto c = small_config(128256);
  c.tie_word_embeddings = true;
  c.rope_scaling = llama::LlamaConfig::Llama3RopeScaling{.factor = 8, .low_freq_factor = 1, .high_freq_factor = 4,
                                                          .original_max_position_embeddings = 64};
  check_with_llama_cpp(c, fetched("llama3_1"), kPrompts);
}

TEST_CASE("llama.cpp runs milora's GGUF files as milora does: LLaMA-2's sentencepiece-style tokenizer, attention and MLP biases") {
  auto c = small_config(32000);
  c.num_key_value_heads = 4;
  c.bias.fill(true);
  check_with_llama_cpp(c, fetched("llama2"), kPrompts);
}

TEST_CASE("llama.cpp runs milora's GGUF files as milora does: Qwen2 with Qwen3's tokenizer, q / k / v biases") {
  auto c = small_config(151669);  // the tokenizer's ids exactly: a random model would also emit Qwen's padding ids, which decode to nothing
  c.model_type = "qwen2";
  c.tie_word_embeddings = true;
  c.bias[0] = c.bias[1] = c.bias[2] = true;
  check_with_llama_cpp(c, fetched("qwen3"), kPrompts);
}

#if defined(MILORA_HAS_SENTENCEPIECE)
#include <sentencepiece_trainer.h>

TEST_CASE("llama.cpp runs milora's GGUF files as milora does: a sentencepiece tokenizer.model (BPE with byte fallback)") {
  milora_test::ScratchDir dir;
  std::string corpus;
  for (int i = 0; i < 100; ++i)
    corpus += "The minor singular components of a weight adapt while the principal ones stay frozen. Once upon a time, "
              "low-rank adapters learned " + std::to_string(1987 + i) + " new facts (and forgot few of the old ones).\n";
  milora_test::write_file(dir / "corpus.txt", corpus);
  const auto status = sentencepiece::SentencePieceTrainer::Train("--input=" + (dir / "corpus.txt").string() + " --model_prefix=" +
                                                                 (dir / "tokenizer").string() +
                                                                 " --vocab_size=400 --model_type=bpe --byte_fallback=true --minloglevel=2");
  REQUIRE_MESSAGE(status.ok(), status.ToString());
  // byte pieces silenced as well as the special ones: a random model would otherwise string bytes
  // into invalid UTF-8, whose text the two decoders spell differently
  std::vector<llama::Token> silenced(259);
  std::iota(silenced.begin(), silenced.end(), llama::Token(0));  // <unk>, <s>, </s>, <0x00>..<0xFF>
  check_with_llama_cpp(small_config(400), dir.path, {"The low-rank adapters of a language model", "Once upon a time, in 1987,", "{minor}: 42%"},
                       silenced);
}
#endif
