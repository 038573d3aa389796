// LlamaConfig (examples/llama/config.hpp): transformers' field names and defaults, refusals, and the
// weight list checked against a model folder.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "../io/io_test_util.hpp"
#include "llama/config.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace {

using llama::Index;
using llama::LlamaConfig;

nlohmann::json tiny_config_json() {
  return {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 8}, {"intermediate_size", 12},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5}, {"hidden_act", "silu"}, {"rope_scaling", nullptr}};
}

// from_json refuses `bad` with a format_error whose message contains `message`.
void config_refused(const nlohmann::json& bad, const char* message) {
  CAPTURE(std::string(message));
  CHECK_THROWS_WITH_AS(LlamaConfig::from_json(bad, "cfg"), doctest::Contains(message), milora::format_error);
}

}  // namespace

TEST_CASE("LlamaConfig reads transformers' fields, applies its defaults, and refuses what it cannot compute") {
  const auto c = LlamaConfig::from_json(tiny_config_json(), "cfg");
  CHECK(c.head_dim == 2);
  CHECK(c.num_key_value_heads == 2);
  CHECK(c.rms_norm_eps == doctest::Approx(1e-5));
  CHECK(c.rope_theta == doctest::Approx(10000.0));  // default
  auto j = tiny_config_json();
  j.erase("num_key_value_heads");
  CHECK(LlamaConfig::from_json(j, "cfg").num_key_value_heads == 4);  // defaults to the head count
  j = tiny_config_json();
  j.erase("hidden_size");
  config_refused(j, "\"hidden_size\" is missing");
  j = tiny_config_json();
  j["num_key_value_heads"] = 3;
  config_refused(j, "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  j = tiny_config_json();
  j["hidden_size"] = 10;
  config_refused(j, "hidden_size 10 is not a multiple of num_attention_heads 4");
  j = tiny_config_json();
  j["hidden_act"] = "gelu";
  config_refused(j, "hidden_act is \"gelu\"");
  j = tiny_config_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  config_refused(j, "rope_scaling");
  j = tiny_config_json();
  j["num_hidden_layers"] = -1;
  config_refused(j, "\"num_hidden_layers\" must be a positive integer, got -1");
  j = tiny_config_json();
  j["model_type"] = "gpt2";
  config_refused(j, "model_type is \"gpt2\"");
}

TEST_CASE("LlamaConfig::check finds a missing or misshapen weight in a model folder") {
  const auto c = LlamaConfig::from_json(tiny_config_json(), "cfg");
  const auto weights = c.weights();
  CHECK(weights.size() == 1 + 2 * 9 + 2);
  auto make = [&](const std::filesystem::path& dir, const std::string& skip, const std::string& misshape) {
    std::filesystem::create_directories(dir);
    milora::io::write_json_file(dir / "config.json", tiny_config_json());
    milora::io::SafetensorsWriter w;
    for (const auto& x : weights) {
      if (x.name == skip) continue;
      const milora::Index rows = x.name == misshape ? x.rows + 1 : x.rows;
      if (rows == 1) w.add(x.name, milora::io::HostMatrix<float>(1, x.cols), milora::io::DType::BF16, std::vector<std::int64_t>{x.cols});
      else w.add(x.name, milora::io::HostMatrix<float>(rows, x.cols), milora::io::DType::BF16);
    }
    w.write(dir / milora::io::kModelFile);
  };
  milora_test::ScratchDir dir;
  make(dir / "ok", "", "");
  const milora::io::HFModel ok(dir / "ok");
  CHECK_NOTHROW(LlamaConfig::from_model(ok).check(ok));
  make(dir / "missing", "model.layers.1.mlp.down_proj.weight", "");
  const milora::io::HFModel missing(dir / "missing");
  CHECK_THROWS_WITH_AS(c.check(missing), doctest::Contains("has no 'model.layers.1.mlp.down_proj.weight'"), milora::format_error);
  make(dir / "bad", "", "model.layers.0.self_attn.k_proj.weight");
  const milora::io::HFModel bad(dir / "bad");
  CHECK_THROWS_WITH_AS(c.check(bad), doctest::Contains("'model.layers.0.self_attn.k_proj.weight' is 5x8 but config.json implies 4x8"),
                       milora::format_error);
}

TEST_CASE("LlamaConfig reads the configs of current checkpoints: LLaMA-3.1 rope_scaling, Qwen2's biases, Mistral's window") {
  // LLaMA-3.1-8B's rope_scaling, as its config.json writes it
  auto j = tiny_config_json();
  j["head_dim"] = 128;
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
  const auto c = LlamaConfig::from_json(j, "cfg");
  REQUIRE(c.rope_scaling.has_value());
  CHECK(c.rope_scaling->original_max_position_embeddings == 8192);
  // the three bands, by wavelength 2 pi / theta^(-2i/d): below 8192 / 4 kept, above 8192 / 1
  // divided by 8, between them interpolated (strictly between the two)
  Index kept = 0, scaled = 0, between = 0;
  for (Index i = 0; i < 64; ++i) {
    const double plain = 1.0 / std::pow(500000.0, double(2 * i) / 128.0), wavelen = 2 * std::numbers::pi / plain;
    const double got = c.rope_inv_freq(i);
    if (wavelen < 2048) {
      CHECK(got == plain);
      ++kept;
    } else if (wavelen > 8192) {
      CHECK(got == doctest::Approx(plain / 8).epsilon(1e-15));
      ++scaled;
    } else {
      CHECK((got < plain && got > plain / 8));
      ++between;
    }
  }
  CHECK(kept > 0);
  CHECK(scaled > 0);
  CHECK(between > 0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  CHECK_FALSE(LlamaConfig::from_json(j, "cfg").rope_scaling.has_value());
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  config_refused(j, "rope_scaling has rope_type \"yarn\"; only \"llama3\" (LLaMA-3.1) and \"default\" are supported");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 1.0},
                       {"original_max_position_embeddings", 8192}};
  config_refused(j, "high_freq_factor 1 must exceed low_freq_factor 4");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  config_refused(j, "\"original_max_position_embeddings\" must be a positive integer");

  // biases: Qwen2 (no field: q, k, v), LLaMA's attention_bias (q, k, v, o) and mlp_bias
  j = tiny_config_json();
  j["model_type"] = "qwen2";
  auto q = LlamaConfig::from_json(j, "cfg");
  CHECK((q.bias == std::array<bool, 7>{true, true, true, false, false, false, false}));
  const auto weights = q.weights();
  CHECK(weights.size() == 1 + 2 * (9 + 3) + 2);
  CHECK(weights[3].name == "model.layers.0.self_attn.q_proj.bias");
  CHECK((weights[3].rows == 1 && weights[3].cols == 8));
  CHECK(weights[5].name == "model.layers.0.self_attn.k_proj.bias");
  CHECK(weights[5].cols == 4);  // 2 kv heads x head_dim 2
  j = tiny_config_json();
  j["attention_bias"] = true;
  CHECK((LlamaConfig::from_json(j, "cfg").bias == std::array<bool, 7>{true, true, true, true, false, false, false}));
  j["mlp_bias"] = true;
  CHECK((LlamaConfig::from_json(j, "cfg").bias == std::array<bool, 7>{true, true, true, true, true, true, true}));
  j["mlp_bias"] = "yes";
  config_refused(j, "\"mlp_bias\" must be true or false, got \"yes\"");

  // the window: Mistral's always, Qwen2's with use_sliding_window only
  j = tiny_config_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  CHECK(LlamaConfig::from_json(j, "cfg").sliding_window == 4096);
  j["sliding_window"] = nullptr;  // Mistral-7B-v0.2 and later
  CHECK_FALSE(LlamaConfig::from_json(j, "cfg").sliding_window.has_value());
  j = tiny_config_json();
  j["model_type"] = "qwen2";
  j["sliding_window"] = 32768;
  j["use_sliding_window"] = false;
  CHECK_FALSE(LlamaConfig::from_json(j, "cfg").sliding_window.has_value());
  j["use_sliding_window"] = true;
  CHECK(LlamaConfig::from_json(j, "cfg").sliding_window == 32768);

  // neighbours' math is refused by name
  j = tiny_config_json();
  j["partial_rotary_factor"] = 0.5;
  config_refused(j, "\"partial_rotary_factor\" is 0.5");
  j = tiny_config_json();
  j["final_logit_softcapping"] = 30.0;
  config_refused(j, "\"final_logit_softcapping\" is set");
  j = tiny_config_json();
  j["model_type"] = "qwen3";
  config_refused(j, "model_type is \"qwen3\"; expected \"llama\", \"mistral\" or \"qwen2\"");
}

TEST_CASE("config_json writes back what from_json read, for every family") {
  auto j = tiny_config_json();
  std::vector<nlohmann::json> configs;
  j["rope_scaling"] = {{"factor", 32.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
  j["tie_word_embeddings"] = true;
  j["head_dim"] = 4;
  configs.push_back(j);
  j = tiny_config_json();
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  configs.push_back(j);
  j = tiny_config_json();
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = true;
  j["sliding_window"] = 64;
  configs.push_back(j);
  j = tiny_config_json();
  j["model_type"] = "mistral";
  j["sliding_window"] = 16;
  configs.push_back(j);
  for (const auto& config : configs) {
    CAPTURE(config.dump());
    const auto c = LlamaConfig::from_json(config, "cfg");
    const auto written = llama::config_json(c);
    const auto back = LlamaConfig::from_json(written, "written");
    CHECK(back.model_type == c.model_type);
    CHECK(back.rope_scaling == c.rope_scaling);
    CHECK(back.bias == c.bias);
    CHECK(back.sliding_window == c.sliding_window);
    CHECK(back.head_dim == c.head_dim);
    CHECK(back.tie_word_embeddings == c.tie_word_embeddings);
    CHECK(written["architectures"][0] == (c.model_type == "qwen2" ? "Qwen2ForCausalLM" : c.model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"));
  }
}
