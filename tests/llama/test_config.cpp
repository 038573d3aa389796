// LlamaConfig (examples/llama/config.hpp): transformers' field names and defaults, refusals, and the
// weight list checked against a model folder.
#include <doctest/doctest.h>

#include <string>

#include "../io/io_test_util.hpp"
#include "llama/config.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace {

using llama::LlamaConfig;

nlohmann::json tiny_config_json() {
  return {{"model_type", "llama"}, {"vocab_size", 10}, {"hidden_size", 8}, {"intermediate_size", 12},
          {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"rms_norm_eps", 1e-5}, {"hidden_act", "silu"}, {"rope_scaling", nullptr}};
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
  auto refused = [](nlohmann::json bad, const char* message) {
    CAPTURE(std::string(message));
    CHECK_THROWS_WITH_AS(LlamaConfig::from_json(bad, "cfg"), doctest::Contains(message), milora::format_error);
  };
  j = tiny_config_json();
  j.erase("hidden_size");
  refused(j, "\"hidden_size\" is missing");
  j = tiny_config_json();
  j["num_key_value_heads"] = 3;
  refused(j, "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
  j = tiny_config_json();
  j["hidden_size"] = 10;
  refused(j, "hidden_size 10 is not a multiple of num_attention_heads 4");
  j = tiny_config_json();
  j["hidden_act"] = "gelu";
  refused(j, "hidden_act is \"gelu\"");
  j = tiny_config_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  refused(j, "rope_scaling");
  j = tiny_config_json();
  j["num_hidden_layers"] = -1;
  refused(j, "\"num_hidden_layers\" must be a positive integer, got -1");
  j = tiny_config_json();
  j["model_type"] = "gpt2";
  refused(j, "model_type is \"gpt2\"");
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
