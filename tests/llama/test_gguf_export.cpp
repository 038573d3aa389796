// llama/gguf_export.hpp without llama.cpp (tests/gguf runs the files in llama.cpp itself): the
// permutation of q / k rows against the two RoPE conventions computed here, the names both ways,
// every config family of tests/data written and read back (F32 exactly, F16 / BF16 / Q8_0 to their
// rounding, the merged weights W + s B A), LLaMA-3.1's rope divisors against transformers' formula,
// adapters round-tripped (rsLoRA's scale kept), tokenizer keys of hand-made tokenizer.json files,
// and the refusals.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "../io/io_test_util.hpp"
#include "llama/gguf_export.hpp"
#include "milora/io/gguf.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/peft.hpp"

namespace {

namespace fs = std::filesystem;
const fs::path kGgufData = fs::path(MILORA_TEST_DATA);

// transformers' RoPE (rotate_half: dimension i pairs with i + d/2) and ggml's "normal" RoPE (2i
// pairs with 2i + 1), each rotating pair i by p * theta^(-2i/d).
std::vector<double> rope_rotate_half(const std::vector<double>& x, double p) {
  const std::size_t d = x.size(), h = d / 2;
  std::vector<double> y(d);
  for (std::size_t i = 0; i < h; ++i) {
    const double a = p * std::pow(10000.0, -double(2 * i) / double(d));
    y[i] = x[i] * std::cos(a) - x[i + h] * std::sin(a);
    y[i + h] = x[i + h] * std::cos(a) + x[i] * std::sin(a);
  }
  return y;
}
std::vector<double> rope_interleaved(const std::vector<double>& x, double p) {
  const std::size_t d = x.size();
  std::vector<double> y(d);
  for (std::size_t i = 0; i < d / 2; ++i) {
    const double a = p * std::pow(10000.0, -double(2 * i) / double(d));
    y[2 * i] = x[2 * i] * std::cos(a) - x[2 * i + 1] * std::sin(a);
    y[2 * i + 1] = x[2 * i + 1] * std::cos(a) + x[2 * i] * std::sin(a);
  }
  return y;
}

milora::io::PeftAdapter<float> random_adapter(const llama::LlamaConfig& c, milora::Index r, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> n(0.0f, 0.5f);
  milora::io::PeftAdapter<float> a;
  a.config.r = r;
  a.config.lora_alpha = 2.0 * double(r);
  for (const auto& w : c.weights()) {
    if (w.rows == 1 || w.name.find(".layers.") == std::string::npos || w.name.ends_with(".bias")) continue;
    milora::io::LoraFactors<float> f{milora::io::HostMatrix<float>(r, w.cols), milora::io::HostMatrix<float>(w.rows, r)};
    for (auto& x : f.A.data) x = n(gen);
    for (auto& x : f.B.data) x = n(gen);
    a.modules.emplace(milora::io::module_of_weight(w.name), std::move(f));
  }
  return a;
}

}  // namespace

TEST_CASE("GGUF export: q / k rows permuted so that ggml's interleaved RoPE computes transformers' rotate-half RoPE") {
  std::mt19937 gen(1);
  std::normal_distribution<double> n;
  const milora::Index heads = 3, hd = 8, in = 5;
  milora::io::HostMatrix<double> w(heads * hd, in);
  for (auto& x : w.data) x = n(gen);
  const auto g = llama::permute_rope_rows(w, heads, true);
  CHECK(llama::permute_rope_rows(g, heads, false).data == w.data);
  std::vector<double> x(static_cast<std::size_t>(in));
  for (auto& v : x) v = n(gen);
  double worst = 0;
  for (milora::Index h = 0; h < heads; ++h) {
    std::vector<double> q(static_cast<std::size_t>(hd)), qg(static_cast<std::size_t>(hd));  // one head of W x, both orders
    for (milora::Index r = 0; r < hd; ++r)
      for (milora::Index c = 0; c < in; ++c) {
        q[std::size_t(r)] += w(h * hd + r, c) * x[std::size_t(c)];
        qg[std::size_t(r)] += g(h * hd + r, c) * x[std::size_t(c)];
      }
    for (double p : {0.0, 1.0, 7.0, 123.0}) {
      const auto a = rope_rotate_half(q, p), b = rope_interleaved(qg, p);
      // b is a in GGUF's order: row 2i + j of the head is row j * hd / 2 + i
      for (milora::Index i = 0; i < hd / 2; ++i)
        for (milora::Index j = 0; j < 2; ++j) worst = std::max(worst, std::abs(b[std::size_t(2 * i + j)] - a[std::size_t(j * hd / 2 + i)]));
    }
  }
  CHECK(worst < 1e-12);
  // a bias vector permutes as the rows do
  milora::io::HostMatrix<double> bias(1, heads * hd);
  for (milora::Index i = 0; i < heads * hd; ++i) bias.data[std::size_t(i)] = w(i, 0);
  const auto gb = llama::permute_rope_rows(bias, heads, true);
  for (milora::Index i = 0; i < heads * hd; ++i) CHECK(gb.data[std::size_t(i)] == g(i, 0));
  CHECK_THROWS_WITH_AS(llama::permute_rope_rows(milora::io::HostMatrix<double>(12, 2), 8, true), doctest::Contains("do not split into 8 heads"),
                       milora::shape_error);
}

TEST_CASE("GGUF export: every config family written and read back, each type, with and without a merged adapter") {
  for (const std::string family : {"llama_tiny", "llama32_tiny", "mistral_tiny", "qwen2_tiny", "llama_bias_tiny"}) {
    CAPTURE(family);
    const milora::io::HFModel model(kGgufData / family / "model");
    const auto c = llama::LlamaConfig::from_model(model);
    milora_test::ScratchDir dir;
    CHECK_THROWS_WITH_AS(llama::write_model_gguf(model, c, nullptr, dir / "x.gguf", llama::GgufFileType::F32),
                         doctest::Contains("has no tokenizer.json or tokenizer.model"), milora::format_error);
    CHECK(!fs::exists(dir / "x.gguf"));
    for (const auto type : {llama::GgufFileType::F32, llama::GgufFileType::F16, llama::GgufFileType::BF16, llama::GgufFileType::Q8_0}) {
      CAPTURE(int(type));
      const fs::path path = dir / ("m" + std::to_string(int(type)) + ".gguf");
      llama::write_model_gguf(model, c, nullptr, path, type, false);
      const milora::io::GgufFile f(path);
      const std::string arch = c.model_type == "qwen2" ? "qwen2" : "llama";
      CHECK(f.string("general.architecture") == arch);
      CHECK(f.uint("general.file_type") == std::uint64_t(type));
      CHECK(f.uint(arch + ".block_count") == std::uint64_t(c.num_hidden_layers));
      CHECK(f.uint(arch + ".attention.head_count_kv") == std::uint64_t(c.num_key_value_heads));
      CHECK(f.uint(arch + ".rope.dimension_count") == std::uint64_t(c.head_dim));
      CHECK(f.real(arch + ".attention.layer_norm_rms_epsilon") == doctest::Approx(c.rms_norm_eps).epsilon(1e-6));
      CHECK(f.uint(arch + ".context_length") == std::uint64_t(c.sliding_window ? std::min(*c.sliding_window, c.max_position_embeddings)
                                                                                : c.max_position_embeddings));
      CHECK(f.contains("output.weight") == !c.tie_word_embeddings);
      const auto weights = c.weights();
      CHECK(f.tensors().size() == weights.size() + (c.rope_scaling ? 1 : 0));
      for (const auto& w : weights) {
        CAPTURE(w.name);
        const auto& info = f.info(llama::gguf_tensor_name(w.name));
        const auto want = model.load<double>(w.name);
        const auto got = llama::load_gguf_weight(f, c, w.name);
        REQUIRE(got.data.size() == want.data.size());
        if (w.rows == 1) CHECK(info.type == milora::io::kGgmlF32);  // norms and biases stay float
        double worst = 0, amax = 0;
        for (std::size_t i = 0; i < want.data.size(); ++i) {
          worst = std::max(worst, std::abs(got.data[i] - want.data[i]));
          amax = std::max(amax, std::abs(want.data[i]));
        }
        const double tolerance = info.type == milora::io::kGgmlF32 ? 0.0 : info.type == milora::io::kGgmlF16 ? amax * 0x1p-11
                                 : info.type == milora::io::kGgmlBF16 ? amax * 0x1p-8 : amax / 127 * 0.51 + amax * 0x1p-10;
        CHECK(worst <= tolerance);
        if (type == llama::GgufFileType::Q8_0 && w.rows > 1) CHECK(info.type == (w.cols % 32 == 0 ? milora::io::kGgmlQ8_0 : milora::io::kGgmlF16));
      }
      if (c.rope_scaling) {  // transformers' _compute_llama3_parameters, as the ratio of old to new frequency
        const auto divisors = f.load<double>("rope_freqs.weight");
        const auto& s = *c.rope_scaling;
        REQUIRE(divisors.data.size() == std::size_t(c.head_dim / 2));
        for (milora::Index i = 0; i < c.head_dim / 2; ++i) {
          const double freq = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim)), wavelen = 2 * M_PI / freq;
          const double smooth = (double(s.original_max_position_embeddings) / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          const double scaled = wavelen < double(s.original_max_position_embeddings) / s.high_freq_factor ? freq
                                : wavelen > double(s.original_max_position_embeddings) / s.low_freq_factor
                                    ? freq / s.factor
                                    : (1 - smooth) * freq / s.factor + smooth * freq;
          CHECK(divisors.data[std::size_t(i)] == doctest::Approx(freq / scaled).epsilon(1e-6));
        }
      }
    }
    // merged: W + s B A in the file, in transformers' order once read back
    const auto adapter = random_adapter(c, 2, 5);
    llama::write_model_gguf(model, c, &adapter, dir / "merged.gguf", llama::GgufFileType::F32, false);
    const milora::io::GgufFile merged(dir / "merged.gguf");
    const double s = adapter.config.scale();
    for (const auto& [module, f] : adapter.modules) {
      const auto w = model.load<double>(module + ".weight");
      const auto got = llama::load_gguf_weight(merged, c, module + ".weight");
      double worst = 0;
      for (milora::Index i = 0; i < w.rows; ++i)
        for (milora::Index j = 0; j < w.cols; ++j) {
          double ba = 0;
          for (milora::Index k = 0; k < f.A.rows; ++k) ba += double(f.B(i, k)) * double(f.A(k, j));
          worst = std::max(worst, std::abs(got(i, j) - (w(i, j) + s * ba)));
        }
      CHECK(worst < 1e-5);
    }
  }
}

TEST_CASE("GGUF export: LoRA adapters round trip, rsLoRA's scale kept, and what llama.cpp cannot apply is refused") {
  const milora::io::HFModel model(kGgufData / "llama_bias_tiny" / "model");
  const auto c = llama::LlamaConfig::from_model(model);
  milora_test::ScratchDir dir;
  auto a = random_adapter(c, 3, 9);
  a.config.use_rslora = true;
  llama::write_adapter_gguf(a, c, dir / "a.gguf", llama::GgufFileType::F32, "t");
  const milora::io::GgufFile f(dir / "a.gguf");
  CHECK(f.string("general.type") == "adapter");
  CHECK(f.string("adapter.type") == "lora");
  CHECK(f.real("adapter.lora.alpha").value() == doctest::Approx(a.config.scale() * 3).epsilon(1e-6));  // llama.cpp: alpha / r
  CHECK(f.info("blk.1.attn_k.weight.lora_a").ne == std::vector<std::uint64_t>{std::uint64_t(c.hidden_size), 3});
  CHECK(f.info("blk.1.attn_k.weight.lora_b").ne == std::vector<std::uint64_t>{3, std::uint64_t(c.num_key_value_heads * c.head_dim)});
  const auto back = llama::read_adapter_gguf(dir / "a.gguf", c);
  CHECK(back.config.r == 3);
  CHECK(back.config.scale() == doctest::Approx(a.config.scale()).epsilon(1e-6));
  REQUIRE(back.modules.size() == a.modules.size());
  for (const auto& [module, fa] : a.modules) {
    CAPTURE(module);
    CHECK(back.modules.at(module).A.data == fa.A.data);
    CHECK(back.modules.at(module).B.data == fa.B.data);
  }
  llama::write_adapter_gguf(a, c, dir / "b.gguf", llama::GgufFileType::BF16, "t");
  const auto bf = llama::read_adapter_gguf(dir / "b.gguf", c);
  for (const auto& [module, fa] : a.modules)
    for (std::size_t i = 0; i < fa.B.data.size(); ++i) CHECK(std::abs(bf.modules.at(module).B.data[i] - fa.B.data[i]) <= std::abs(fa.B.data[i]) * 0x1p-8);

  CHECK_THROWS_WITH_AS(llama::write_adapter_gguf(a, c, dir / "q.gguf", llama::GgufFileType::Q8_0, "t"), doctest::Contains("f32, f16 or bf16"),
                       milora::value_error);
  auto head = a;
  head.modules["lm_head"] = {milora::io::HostMatrix<float>(3, c.hidden_size), milora::io::HostMatrix<float>(c.vocab_size, 3)};
  CHECK_THROWS_WITH_AS(llama::write_adapter_gguf(head, c, dir / "h.gguf", llama::GgufFileType::F32, "t"),
                       doctest::Contains("'lm_head': llama.cpp's LoRA loader applies adapters to the layers' projections"), milora::format_error);
  auto wrong = a;
  wrong.modules.begin()->second.B = milora::io::HostMatrix<float>(7, 3);
  CHECK_THROWS_WITH_AS(llama::write_adapter_gguf(wrong, c, dir / "w.gguf", llama::GgufFileType::F32, "t"), doctest::Contains("but the model's weight is"),
                       milora::shape_error);
  CHECK(!fs::exists(dir / "q.gguf"));
  CHECK(!fs::exists(dir / "h.gguf"));
  const milora::io::HFModel qwen(kGgufData / "qwen2_tiny" / "model");
  CHECK_THROWS_WITH_AS(llama::read_adapter_gguf(dir / "a.gguf", llama::LlamaConfig::from_model(qwen)),
                       doctest::Contains("is for architecture 'llama', the model is 'qwen2'"), milora::format_error);
  llama::write_model_gguf(model, c, nullptr, dir / "m.gguf", llama::GgufFileType::F32, false);
  CHECK_THROWS_WITH_AS(llama::read_adapter_gguf(dir / "m.gguf", c), doctest::Contains("is not a LoRA adapter"), milora::format_error);
  // names: both ways for every weight, none twice; others refused
  std::set<std::string> seen;
  for (const auto& w : c.weights()) {
    const auto g = llama::gguf_tensor_name(w.name);
    CHECK(seen.insert(g).second);
    CHECK(llama::hf_tensor_name(g) == w.name);
  }
  CHECK(llama::gguf_tensor_name("model.layers.11.mlp.down_proj.weight") == "blk.11.ffn_down.weight");
  CHECK_THROWS_WITH_AS(llama::gguf_tensor_name("model.layers.0.mlp.experts.weight"), doctest::Contains("has no llama.cpp name"), milora::value_error);
  CHECK_THROWS_WITH_AS(llama::hf_tensor_name("blk.0.ssm_a.weight"), doctest::Contains("is not one of the LLaMA / Qwen2 weights"), milora::value_error);
}

TEST_CASE("GGUF export: tokenizer.json as llama.cpp's keys, byte-level and sentencepiece-style, and unknown pre-tokenizers refused") {
  namespace io = milora::io;
  milora_test::ScratchDir dir;
  // sentencepiece-style BPE with byte fallback (LLaMA-2's kind): scores from the merge ranks
  const nlohmann::json spm = {
      {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"},
                 {"vocab", {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"<0x0A>", 3}, {"\xe2\x96\x81", 4}, {"a", 5}, {"b", 6}, {"ab", 7}, {"\xe2\x96\x81" "ab", 8}}},
                 {"merges", {"a b", "\xe2\x96\x81 ab"}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", nlohmann::json::array({{{"type", "Prepend"}, {"prepend", "\xe2\x96\x81"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"added_tokens", {{{"id", 0}, {"content", "<unk>"}, {"special", true}}, {{"id", 1}, {"content", "<s>"}, {"special", true}}, {{"id", 2}, {"content", "</s>"}, {"special", true}}}}};
  fs::create_directories(dir / "spm");
  io::write_json_file(dir / "spm" / "tokenizer.json", spm);
  io::write_json_file(dir / "spm" / "tokenizer_config.json", {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"chat_template", "{{ x }}"}});
  {
    io::GgufWriter w;
    llama::add_gguf_tokenizer(w, dir / "spm", 11);
    w.write(dir / "spm.gguf");
  }
  const io::GgufFile s(dir / "spm.gguf");
  CHECK(s.string("tokenizer.ggml.model") == "llama");
  const auto& tokens = s.value("tokenizer.ggml.tokens")->items;
  REQUIRE(tokens.size() == 11);
  CHECK(std::get<std::string>(tokens[8]) == "\xe2\x96\x81" "ab");
  CHECK(std::get<std::string>(tokens[10]) == "[PAD10]");
  const auto& scores = s.value("tokenizer.ggml.scores")->items;
  CHECK(std::get<double>(scores[7]) == 0.0);   // merge 0
  CHECK(std::get<double>(scores[8]) == -1.0);  // merge 1
  CHECK(std::get<double>(scores[5]) < -1e8);   // made by no merge
  const auto& types = s.value("tokenizer.ggml.token_type")->items;
  CHECK(std::get<std::int64_t>(types[0]) == 2);  // unknown
  CHECK(std::get<std::int64_t>(types[1]) == 3);  // control
  CHECK(std::get<std::int64_t>(types[3]) == 6);  // byte
  CHECK(std::get<std::int64_t>(types[5]) == 1);
  CHECK(std::get<std::int64_t>(types[9]) == 4);  // padding ids: user defined
  CHECK(s.uint("tokenizer.ggml.bos_token_id") == 1u);
  CHECK(s.uint("tokenizer.ggml.eos_token_id") == 2u);
  CHECK(s.uint("tokenizer.ggml.unknown_token_id") == 0u);
  CHECK(std::get<bool>(s.value("tokenizer.ggml.add_bos_token")->items[0]));
  CHECK(s.string("tokenizer.chat_template") == "{{ x }}");

  // byte-level with a split pattern llama.cpp has no name for
  nlohmann::json bl = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}}}, {"merges", nlohmann::json::array({nlohmann::json::array({"a", "b"})})}}},
                       {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}}}, {{"type", "ByteLevel"}}}}}},
                       {"added_tokens", {{{"id", 3}, {"content", "<|end|>"}, {"special", true}}}}};
  fs::create_directories(dir / "bl");
  io::write_json_file(dir / "bl" / "tokenizer.json", bl);
  io::GgufWriter refused;
  CHECK_THROWS_WITH_AS(llama::add_gguf_tokenizer(refused, dir / "bl", 4), doctest::Contains("which llama.cpp has no name for"), milora::format_error);
  // GPT-2's (ByteLevel's own regex): merges as "left right", special added tokens as control
  bl["pre_tokenizer"] = {{"type", "ByteLevel"}, {"use_regex", true}};
  io::write_json_file(dir / "bl" / "tokenizer.json", bl);
  {
    io::GgufWriter w;
    llama::add_gguf_tokenizer(w, dir / "bl", 4);
    w.write(dir / "bl.gguf");
  }
  const io::GgufFile b(dir / "bl.gguf");
  CHECK(b.string("tokenizer.ggml.model") == "gpt2");
  CHECK(b.string("tokenizer.ggml.pre") == "gpt-2");
  CHECK(std::get<std::string>(b.value("tokenizer.ggml.merges")->items[0]) == "a b");
  CHECK(std::get<std::int64_t>(b.value("tokenizer.ggml.token_type")->items[3]) == 3);
  CHECK(!std::get<bool>(b.value("tokenizer.ggml.add_bos_token")->items[0]));
  // an id past the model's vocabulary
  io::GgufWriter small;
  CHECK_THROWS_WITH_AS(llama::add_gguf_tokenizer(small, dir / "bl", 3), doctest::Contains("token '<|end|>' has id 3 outside the model's vocab_size 3"),
                       milora::format_error);
}
