// PEFT adapter folders and Hugging Face model folders: PEFT's key names and config fields, round
// trips, an adapter written by hand the way PEFT writes one, refusals, sharded model folders, the
// streaming rewrite, and the conversion of a trained MiLoRA / PiSSA adapter to a plain LoRA that
// reproduces the trained layer on the original weights.
#include <doctest/doctest.h>

#include <limits>

#include <cmath>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "milora/milora.hpp"
#include "milora/io.hpp"

using namespace milora;
using namespace milora::io;
using milora_test::ScratchDir;

namespace {

template <class T>
HostMatrix<T> pattern(Index r, Index c, double phase) {
  HostMatrix<T> m(r, c);
  for (Index i = 0; i < r; ++i)
    for (Index j = 0; j < c; ++j) m(i, j) = T(std::cos(phase + 0.71 * double(i) + 0.29 * double(j * j % 13)));
  return m;
}

PeftAdapter<float> small_adapter() {
  PeftAdapter<float> a;
  a.config.r = 2;
  a.config.lora_alpha = 4;
  a.config.target_modules = {"q_proj", "v_proj"};
  a.config.base_model_name_or_path = "tiny-llama";
  a.modules["model.layers.0.self_attn.q_proj"] = {pattern<float>(2, 6, 0.1), pattern<float>(8, 2, 0.2)};
  a.modules["model.layers.0.self_attn.v_proj"] = {pattern<float>(2, 6, 0.3), pattern<float>(4, 2, 0.4)};
  a.metadata["milora.method"] = "milora";
  return a;
}

template <class T>
double max_rel_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / den;
}

}  // namespace

TEST_CASE("PEFT adapter folder: PEFT's key names, shapes, config fields and types, round trip") {
  ScratchDir dir;
  const auto a = small_adapter();
  save_peft_adapter(a, dir.path);

  const SafetensorsFile f(dir / kAdapterWeightsFile);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("milora.method") == "milora");
  const auto& qa = f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  CHECK(qa.dtype == DType::F32);
  CHECK(qa.shape == std::vector<std::int64_t>{2, 6});  // r x in
  CHECK(f.info("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").shape ==
        std::vector<std::int64_t>{8, 2});                // out x r
  CHECK(f.tensors().size() == 4);

  const auto j = read_json_file(dir / kAdapterConfigFile);
  CHECK(j.at("peft_type") == "LORA");
  CHECK(j.at("r").is_number_integer());
  CHECK(j.at("r") == 2);
  CHECK(j.at("lora_alpha") == 4.0);
  CHECK(j.at("target_modules") == nlohmann::json::array({"q_proj", "v_proj"}));
  CHECK(j.at("use_rslora") == false);
  CHECK(j.at("init_lora_weights") == true);  // never "pissa": PEFT would re-initialise on load
  CHECK(j.at("task_type") == "CAUSAL_LM");
  CHECK(j.at("bias") == "none");
  CHECK(j.at("fan_in_fan_out") == false);
  CHECK(j.at("base_model_name_or_path") == "tiny-llama");
  CHECK(j.at("inference_mode") == true);

  const auto b = load_peft_adapter<float>(dir.path);
  CHECK(b.config.r == 2);
  CHECK(b.config.scale() == doctest::Approx(2.0));
  REQUIRE(b.modules.size() == 2);
  for (const auto& [module, fa] : a.modules) {
    CHECK(b.modules.at(module).A.data == fa.A.data);
    CHECK(b.modules.at(module).B.data == fa.B.data);
  }
}

TEST_CASE("an adapter folder written the way PEFT writes one loads, extra config keys survive a resave") {
  ScratchDir dir;
  // adapter_config.json as PEFT 0.13 writes it (fields milora does not model included).
  milora_test::write_file(dir / kAdapterConfigFile, R"({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "meta-llama/Llama-2-7b-hf",
    "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
    "layer_replication": null, "layers_pattern": null, "layers_to_transform": null, "loftq_config": {},
    "lora_alpha": 16, "lora_dropout": 0.05, "megatron_config": null, "megatron_core": "megatron.core",
    "modules_to_save": null, "peft_type": "LORA", "r": 1, "rank_pattern": {}, "revision": null,
    "target_modules": ["q_proj"], "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": true})");
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},)"
      R"("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight":{"dtype":"F32","shape":[3,1],"data_offsets":[8,20]}})";
  milora_test::write_file(dir / kAdapterWeightsFile,
                          milora_test::st_bytes(header, milora_test::f32_bytes({1, 2, 3, 4, 5})));
  const auto a = load_peft_adapter<double>(dir.path);
  CHECK(a.config.use_rslora);
  CHECK(a.config.scale() == doctest::Approx(16.0));  // 16 / sqrt(1)
  CHECK(a.config.lora_dropout == doctest::Approx(0.05));
  const auto& m = a.modules.at("model.layers.0.self_attn.q_proj");
  CHECK(m.A.data == std::vector<double>{1, 2});
  CHECK(m.B.data == std::vector<double>{3, 4, 5});
  ScratchDir again;
  save_peft_adapter(a, again.path);
  const auto j = read_json_file(again / kAdapterConfigFile);
  CHECK(j.at("megatron_core") == "megatron.core");
  CHECK(j.at("loftq_config") == nlohmann::json::object());
}

TEST_CASE("PEFT folders milora cannot apply are refused with the reason") {
  ScratchDir dir;
  save_peft_adapter(small_adapter(), dir.path);
  auto cfg = read_json_file(dir / kAdapterConfigFile);
  auto refused = [&](nlohmann::json j, const char* message) {
    write_json_file(dir / kAdapterConfigFile, j);
    CAPTURE(std::string(message));
    CHECK_THROWS_WITH_AS(load_peft_adapter<float>(dir.path), doctest::Contains(message), format_error);
  };
  auto j = cfg;
  j["use_dora"] = true;
  refused(j, "use_dora is true");
  j = cfg;
  j["peft_type"] = "IA3";
  refused(j, "peft_type is \"IA3\"");
  j = cfg;
  j["r"] = 0;
  refused(j, "\"r\" must be a positive integer");
  j = cfg;
  j["alpha_pattern"] = {{"q_proj", 8}};
  refused(j, "alpha_pattern is not empty");
  j = cfg;
  j["rank_pattern"] = {{"q_proj", 2}};  // the same rank as r: refused all the same (PEFT would scale by alpha / 2)
  refused(j, "rank_pattern is not empty");
  j = cfg;
  j["use_rslora"] = "yes";
  refused(j, "\"use_rslora\" must be true or false");
  j = cfg;
  j["r"] = 4;  // the tensors have rank 2
  refused(j, "has rank 2 but adapter_config.json says r = 4");
  write_json_file(dir / kAdapterConfigFile, cfg);
  j = cfg;  // an empty rank_pattern, as PEFT writes it, is fine
  j["rank_pattern"] = nlohmann::json::object();
  write_json_file(dir / kAdapterConfigFile, j);
  CHECK_NOTHROW(load_peft_adapter<float>(dir.path));
  // A factor holding NaN or Inf is refused with its key and position.
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto a = small_adapter();
    a.modules.begin()->second.B(1, 0) = bad;
    save_peft_adapter(a, dir.path);
    const std::string message = "'" + peft_key(a.modules.begin()->first, 'B') + "' holds " + (bad != bad ? "nan" : "inf") + " at (1, 0)";
    CHECK_THROWS_WITH_AS(load_peft_adapter<float>(dir.path), doctest::Contains(message.c_str()), milora::value_error);
  }
  save_peft_adapter(small_adapter(), dir.path);
  // A lora_A without its lora_B.
  SafetensorsWriter w;
  w.add(peft_key("m", 'A'), pattern<float>(2, 3, 0));
  w.write(dir / kAdapterWeightsFile);
  CHECK_THROWS_WITH_AS(load_peft_adapter<float>(dir.path), doctest::Contains("module 'm' has lora_A but no lora_B"), format_error);
  SafetensorsWriter w2;
  w2.add("model.layers.0.q_proj.weight", pattern<float>(2, 3, 0));
  w2.write(dir / kAdapterWeightsFile);
  CHECK_THROWS_WITH_AS(load_peft_adapter<float>(dir.path), doctest::Contains("is not base_model.model.<module>.lora_{A,B}.weight"),
                       format_error);
}

TEST_CASE("Hugging Face folders: single file and sharded, index checked against the shards, streaming rewrite") {
  ScratchDir dir;
  const auto model = dir / "model";
  std::filesystem::create_directories(model);
  write_json_file(model / "config.json", {{"model_type", "llama"}, {"hidden_size", 6}});
  milora_test::write_file(model / "tokenizer.json", "{}");
  SafetensorsWriter s1, s2;
  s1.add("model.layers.0.self_attn.q_proj.weight", pattern<float>(8, 6, 1.0), DType::BF16);
  s1.add("model.embed_tokens.weight", pattern<float>(10, 6, 2.0), DType::F16);
  s2.add("model.layers.0.self_attn.v_proj.weight", pattern<float>(4, 6, 3.0), DType::F32);
  s1.write(model / "model-00001-of-00002.safetensors");
  s2.write(model / "model-00002-of-00002.safetensors");
  nlohmann::json index = {{"metadata", {{"total_size", 0}}},
                          {"weight_map",
                           {{"model.layers.0.self_attn.q_proj.weight", "model-00001-of-00002.safetensors"},
                            {"model.embed_tokens.weight", "model-00001-of-00002.safetensors"},
                            {"model.layers.0.self_attn.v_proj.weight", "model-00002-of-00002.safetensors"}}}};
  write_json_file(model / kModelIndexFile, index);

  const HFModel hf(model);
  CHECK(hf.sharded());
  CHECK(hf.num_shards() == 2);
  CHECK(hf.config().at("hidden_size") == 6);
  CHECK(hf.tensor_names().size() == 3);
  CHECK(hf.info("model.layers.0.self_attn.q_proj.weight").dtype == DType::BF16);
  const auto v = hf.load<float>("model.layers.0.self_attn.v_proj.weight");
  CHECK(v.data == pattern<float>(4, 6, 3.0).data);

  // Rewrite: v_proj doubled, everything else byte-identical, dtypes and shards kept.
  write_hf_model<float>(
      hf, dir / "out", [](const std::string& n) { return n.find("v_proj") != std::string::npos; },
      [](const std::string&, HostMatrix<float>& m) {
        for (auto& x : m.data) x *= 2;
      });
  const HFModel out(dir / "out");
  CHECK(std::filesystem::exists(dir / "out" / "tokenizer.json"));
  CHECK(out.num_shards() == 2);
  const auto v2 = out.load<float>("model.layers.0.self_attn.v_proj.weight");
  for (std::size_t i = 0; i < v.data.size(); ++i) CHECK(v2.data[i] == 2 * v.data[i]);
  CHECK(out.info("model.embed_tokens.weight").dtype == DType::F16);
  CHECK(std::ranges::equal(out.file_of("model.embed_tokens.weight").raw("model.embed_tokens.weight"),
                           hf.file_of("model.embed_tokens.weight").raw("model.embed_tokens.weight")));
  CHECK_THROWS_AS(write_hf_model<float>(hf, dir / "out", [](const std::string&) { return false; }, {}), io_error);

  // Index inconsistencies.
  auto bad = index;
  bad["weight_map"]["model.layers.0.self_attn.v_proj.weight"] = "model-00001-of-00002.safetensors";
  write_json_file(model / kModelIndexFile, bad);
  CHECK_THROWS_WITH_AS(HFModel{model}, doctest::Contains("which has no such tensor"), format_error);
  bad = index;
  bad["weight_map"].erase("model.embed_tokens.weight");
  write_json_file(model / kModelIndexFile, bad);
  CHECK_THROWS_WITH_AS(HFModel{model}, doctest::Contains("holds 'model.embed_tokens.weight', which weight_map does not list"),
                       format_error);
  bad = index;
  bad["weight_map"]["model.embed_tokens.weight"] = "../elsewhere.safetensors";
  write_json_file(model / kModelIndexFile, bad);
  CHECK_THROWS_WITH_AS(HFModel{model}, doctest::Contains("not a file name in the folder"), format_error);
  CHECK_THROWS_AS(HFModel{dir / "nowhere"}, io_error);
}

TEST_CASE_TEMPLATE("a trained residual adapter converted to a plain rank-2r LoRA reproduces the trained layer on W",
                   T, float, double) {
  using BE = EigenBackend<T>;
  for (bool rslora : {false, true}) {
    CAPTURE(rslora);
    const Index out = 12, in = 9, r = 3, tokens = 5;
    Linear<BE> layer(BE::zeros(out, in));
    BE::fill_normal(layer.weight(), 0, 1, 11);
    const auto W = BE::clone(layer.weight());
    MiLoRA<BE> adapter(layer, {.rank = r, .alpha = 6, .use_rslora = rslora});
    PeftAdapter<T> initial;
    initial.config.r = r;
    initial.config.lora_alpha = 6;
    initial.config.use_rslora = rslora;
    initial.modules["layer"] = factors_of(adapter);
    // "Training": three AdamW steps on a random target, so A and B move away from A0, B0.
    AdamW<BE> opt({.lr = 0.05});
    opt.add_all(adapter.parameters());
    auto x = BE::zeros(tokens, in), h = BE::zeros(tokens, r), y = BE::zeros(tokens, out);
    BE::fill_normal(x, 0, 1, 12);
    for (int step = 0; step < 3; ++step) {
      adapter.forward(x, y, h);
      adapter.zero_grad();
      adapter.backward(x, h, y);  // dL/dy = y: pulls the output towards 0
      opt.step();
    }
    PeftAdapter<T> trained = initial;
    trained.modules["layer"] = factors_of(adapter);
    REQUIRE(max_rel_diff(trained.modules["layer"].A.data, initial.modules["layer"].A.data) > 1e-3);

    ScratchDir dir;  // through the files, as a user would
    save_peft_adapter(to_plain_lora(initial, trained), dir.path, std::is_same_v<T, double> ? DType::F64 : DType::F32);
    const auto plain = load_peft_adapter<T>(dir.path);
    CHECK(plain.config.r == 2 * r);
    CHECK(plain.config.scale() == doctest::Approx(adapter.scale()).epsilon(1e-12));

    // Plain LoRA on the ORIGINAL weight: y* = x W^T + s* (x A*^T) B*^T.
    const auto& f = plain.modules.at("layer");
    auto ystar = BE::zeros(tokens, out), hstar = BE::zeros(tokens, 2 * r);
    BE::gemm(1, x, Trans::no, W, Trans::yes, 0, ystar);
    BE::gemm(1, x, Trans::no, to_backend<BE>(f.A), Trans::yes, 0, hstar);
    BE::gemm(T(plain.config.scale()), hstar, Trans::no, to_backend<BE>(f.B), Trans::yes, 1, ystar);
    const auto y_trained = adapter.forward(x);  // W' + s B A, the trained layer
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;  // rounding of a few gemms, relative
    CHECK(max_rel_diff(BE::to_host(ystar), BE::to_host(y_trained)) <= tol);
  }
  PeftAdapter<T> a, b;
  a.config.r = 2;
  b.config.r = 3;
  CHECK_THROWS_AS(to_plain_lora(a, b), value_error);
}
