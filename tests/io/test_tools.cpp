// The command-line tools end to end on a tiny LLaMA-shaped model folder generated here: init
// (MiLoRA, PiSSA, LoRA), convert, merge, and the error paths (one line, non-zero exit, nothing
// written). The tools' paths come from CMake (MILORA_TOOL_DIR).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "milora/io.hpp"
#include "milora/milora.hpp"

using namespace milora;
using namespace milora::io;
using milora_test::ScratchDir;
using BE = EigenBackend<float>;

namespace {

const std::vector<std::string> kProjections = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

struct Shape {
  Index out, in;
};
Shape shape_of(const std::string& proj) {  // hidden 16, 2 kv heads of 4 (GQA), intermediate 24
  if (proj == "k_proj" || proj == "v_proj") return {8, 16};
  if (proj == "gate_proj" || proj == "up_proj") return {24, 16};
  if (proj == "down_proj") return {16, 24};
  return {16, 16};
}
std::string weight_name(int layer, const std::string& proj) {
  const bool mlp = proj == "gate_proj" || proj == "up_proj" || proj == "down_proj";
  return "model.layers." + std::to_string(layer) + (mlp ? ".mlp." : ".self_attn.") + proj + ".weight";
}

HostMatrix<float> random_matrix(Index r, Index c, std::uint64_t seed) {
  auto m = BE::zeros(r, c);
  BE::fill_normal(m, 0, 0.5, seed);
  return to_host_matrix<BE>(m);
}

// A 2-layer LLaMA-shaped folder in two shards; q_proj of layer 0 can be made an I32 tensor.
void make_model(const std::filesystem::path& dir, DType dtype, bool int_q_proj = false) {
  std::filesystem::create_directories(dir);
  write_json_file(dir / "config.json", {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                                        {"hidden_size", 16}, {"intermediate_size", 24}, {"num_hidden_layers", 2},
                                        {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 32}});
  milora_test::write_file(dir / "tokenizer.json", R"({"version": "1.0"})");
  SafetensorsWriter shard[2];
  nlohmann::json map = nlohmann::json::object();
  std::uint64_t seed = 100;
  auto put = [&](int s, const std::string& name, const HostMatrix<float>& m, std::optional<std::vector<std::int64_t>> shape = {}) {
    shard[s].add(name, m, dtype, shape);
    map[name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  };
  put(0, "model.embed_tokens.weight", random_matrix(32, 16, seed++));
  for (int l = 0; l < 2; ++l) {
    for (const auto& p : kProjections) {
      const auto [o, i] = shape_of(p);
      if (int_q_proj && l == 0 && p == "q_proj") {
        shard[l].add_raw(weight_name(l, p), DType::I32, {o, i}, std::vector<std::byte>(std::size_t(o * i * 4)));
        map[weight_name(l, p)] = "model-00001-of-00002.safetensors";
        continue;
      }
      put(l, weight_name(l, p), random_matrix(o, i, seed++));
    }
    put(l, "model.layers." + std::to_string(l) + ".input_layernorm.weight", HostMatrix<float>(1, 16, std::vector<float>(16, 1.0f)),
        std::vector<std::int64_t>{16});
  }
  put(1, "lm_head.weight", random_matrix(32, 16, seed++));
  for (int s = 0; s < 2; ++s) shard[s].write(dir / ("model-0000" + std::to_string(s + 1) + "-of-00002.safetensors"));
  write_json_file(dir / kModelIndexFile, {{"metadata", {{"total_size", 0}}}, {"weight_map", map}});
}

struct Result {
  int status;
  std::string err;
};
Result run_tool(const std::string& tool, const std::string& args, const std::filesystem::path& scratch) {
  const auto err_file = scratch / "stderr.txt";
  const std::string cmd = std::string(MILORA_TOOL_DIR) + "/" + tool + " " + args + " 2> " + err_file.string() + " > /dev/null";
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, milora_test::read_file(err_file)};
}

double rel_diff(const HostMatrix<float>& a, const HostMatrix<float>& b) {
  REQUIRE(a.rows == b.rows);
  REQUIRE(a.cols == b.cols);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    num += (double(a.data[i]) - b.data[i]) * (double(a.data[i]) - b.data[i]);
    den += double(b.data[i]) * b.data[i];
  }
  return std::sqrt(num / den);
}

// W' + s*B*A for module factors f.
HostMatrix<float> add_product(const HostMatrix<float>& w, const LoraFactors<float>& f, double s) {
  auto W = to_backend<BE>(w);
  BE::gemm(float(s), to_backend<BE>(f.B), Trans::no, to_backend<BE>(f.A), Trans::no, 1, W);
  return to_host_matrix<BE>(W);
}

bool no_partial_left(const std::filesystem::path& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".partial") != std::string::npos) return false;
  return true;
}

}  // namespace

TEST_CASE("milora-init (MiLoRA) -> train -> milora-convert -> milora-merge, end to end on a sharded F32 model") {
  ScratchDir dir;
  const auto base = dir / "base";
  make_model(base, DType::F32);
  const auto init = dir / "init";
  auto r = run_tool("milora-init", "--model " + base.string() + " --method milora --rank 4 --alpha 8 --out " + init.string(), dir.path);
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK(r.err.find("14/14") != std::string::npos);  // a progress line per matrix
  CHECK(no_partial_left(dir.path));

  const HFModel original(base), residual(init / "residual");
  CHECK(residual.sharded());
  CHECK(std::filesystem::exists(init / "residual" / "tokenizer.json"));
  const auto adapter = load_peft_adapter<float>(init);
  CHECK(adapter.config.r == 4);
  CHECK(adapter.config.scale() == doctest::Approx(2.0));
  CHECK(adapter.modules.size() == 14);
  for (int l = 0; l < 2; ++l)
    for (const auto& p : kProjections) {
      const auto name = weight_name(l, p);
      CAPTURE(name);
      const auto& f = adapter.modules.at(module_of_weight(name));
      // The contract, through the files: W' + s*B*A = W.
      CHECK(rel_diff(add_product(residual.load<float>(name), f, 2.0), original.load<float>(name)) <= 1e-5);
    }
  // Untouched tensors are byte-identical.
  CHECK(std::ranges::equal(residual.file_of("lm_head.weight").raw("lm_head.weight"),
                           original.file_of("lm_head.weight").raw("lm_head.weight")));
  // The tool ran MiLoRA itself: the same factors as the library's MiLoRA<B> on that weight.
  {
    const auto name = weight_name(1, "down_proj");
    Linear<BE> layer(to_backend<BE>(original.load<float>(name)));
    MiLoRA<BE> lib(layer, {.rank = 4, .alpha = 8});
    const auto& f = adapter.modules.at(module_of_weight(name));
    CHECK(rel_diff(f.A, to_host_matrix<BE>(lib.A())) <= 1e-5);
    CHECK(rel_diff(f.B, to_host_matrix<BE>(lib.B())) <= 1e-5);
  }

  // "Training": perturb every factor, as a fine-tuning run on the residual model would.
  auto trained = adapter;
  std::uint64_t seed = 7;
  for (auto& [module, f] : trained.modules) {
    const auto dA = random_matrix(f.A.rows, f.A.cols, seed++), dB = random_matrix(f.B.rows, f.B.cols, seed++);
    for (std::size_t i = 0; i < f.A.data.size(); ++i) f.A.data[i] += 0.1f * dA.data[i];
    for (std::size_t i = 0; i < f.B.data.size(); ++i) f.B.data[i] += 0.1f * dB.data[i];
  }
  save_peft_adapter(trained, dir / "trained");

  const auto plain = dir / "plain";
  r = run_tool("milora-convert", "--initial " + init.string() + " --trained " + (dir / "trained").string() + " --out " + plain.string() + "/",
               dir.path);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const auto converted = load_peft_adapter<float>(plain);
  CHECK(converted.config.r == 8);
  CHECK(converted.config.lora_alpha == doctest::Approx(16));
  // The plain LoRA on the ORIGINAL weights = the trained adapter on the residual weights.
  for (const auto& [module, f] : converted.modules) {
    CAPTURE(module);
    const auto name = module + ".weight";
    CHECK(rel_diff(add_product(original.load<float>(name), f, converted.config.scale()),
                   add_product(residual.load<float>(name), trained.modules.at(module), 2.0)) <= 1e-5);
  }

  // Merging either way gives the same model.
  r = run_tool("milora-merge", "--model " + (init / "residual").string() + " --adapter " + (dir / "trained").string() + " --out " +
                                   (dir / "merged_residual").string(), dir.path);
  REQUIRE(r.status == 0);
  r = run_tool("milora-merge", "--model " + base.string() + " --adapter " + plain.string() + " --out " + (dir / "merged_plain").string(),
               dir.path);
  REQUIRE(r.status == 0);
  const HFModel m1(dir / "merged_residual"), m2(dir / "merged_plain");
  for (const auto& name : m1.tensor_names()) {
    CAPTURE(name);
    CHECK(rel_diff(m1.load<float>(name), m2.load<float>(name)) <= 1e-5);
  }
  CHECK(rel_diff(m1.load<float>(weight_name(0, "q_proj")), original.load<float>(weight_name(0, "q_proj"))) > 1e-3);
  CHECK(no_partial_left(dir.path));
}

TEST_CASE("milora-init PiSSA (fast solver) on a BF16 model keeps dtypes, LoRA writes no residual") {
  ScratchDir dir;
  make_model(dir / "base", DType::BF16);
  auto r = run_tool("milora-init", "--model " + (dir / "base").string() +
                                       " --method pissa --solver fast --rank 2 --targets q_proj,down_proj --out " + (dir / "pissa").string(),
                    dir.path);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const HFModel original(dir / "base"), residual(dir / "pissa" / "residual");
  const auto adapter = load_peft_adapter<float>(dir / "pissa");
  CHECK(adapter.modules.size() == 4);
  CHECK(adapter.metadata.at("milora.method") == "pissa");
  CHECK(adapter.metadata.at("milora.solver") == "fast");
  const auto name = weight_name(0, "q_proj");
  CHECK(residual.info(name).dtype == DType::BF16);
  // BF16 storage of W' rounds it (as PEFT's residual models do): the contract holds to bf16 precision.
  CHECK(rel_diff(add_product(residual.load<float>(name), adapter.modules.at(module_of_weight(name)), 1.0),
                 original.load<float>(name)) <= 4e-3);

  r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method lora --rank 2 --out " + (dir / "lora").string(), dir.path);
  REQUIRE(r.status == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "lora" / "residual"));
  const auto lora = load_peft_adapter<float>(dir / "lora");
  const auto& q0 = lora.modules.at(module_of_weight(weight_name(0, "q_proj")));
  const auto& q1 = lora.modules.at(module_of_weight(weight_name(1, "q_proj")));
  CHECK(std::all_of(q0.B.data.begin(), q0.B.data.end(), [](float v) { return v == 0.0f; }));
  CHECK(q0.A.data != q1.A.data);  // each module its own stream
}

TEST_CASE("milora-init --jobs 2 writes the same files as --jobs 1 (MiLoRA with its residual model, MiCA without)") {
  ScratchDir dir;
  make_model(dir / "base", DType::F32);
  // Every file of an output folder, by path relative to it -> its bytes.
  const auto files_of = [](const std::filesystem::path& root) {
    std::map<std::string, std::string> out;
    for (const auto& e : std::filesystem::recursive_directory_iterator(root))
      if (e.is_regular_file()) out[std::filesystem::relative(e.path(), root).string()] = milora_test::read_file(e.path());
    return out;
  };
  for (const std::string method : {"milora", "mica"}) {
    CAPTURE(method);
    std::map<std::string, std::string> outputs[2];
    for (int jobs : {1, 2}) {
      const auto out = dir / (method + "-j" + std::to_string(jobs));
      const auto r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method " + method +
                                                 " --solver fast --rank 3 --jobs " + std::to_string(jobs) + " --out " + out.string(),
                              dir.path);
      INFO(r.err);
      REQUIRE(r.status == 0);
      CHECK(r.err.find("14/14") != std::string::npos);  // every weight reported once
      outputs[jobs - 1] = files_of(out);
    }
    CHECK(outputs[0].count("adapter_model.safetensors") == 1);
    CHECK(outputs[0].count("residual/model-00002-of-00002.safetensors") == (method == "milora" ? 1 : 0));
    CHECK(outputs[0] == outputs[1]);
  }
  const auto r = run_tool("milora-init", "--model " + (dir / "base").string() + " --jobs 0 --out " + (dir / "zero").string(), dir.path);
  CHECK(r.status != 0);
  CHECK(r.err.find("--jobs") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "zero"));
}

TEST_CASE("milora-init OLoRA writes a residual model with W' + s*B*A = W and orthonormal B, orthogonal none, with B*A = 0, MiCA none, with A = 0") {
  ScratchDir dir;
  make_model(dir / "base", DType::F32);
  auto r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method olora --rank 3 --alpha 6 --out " +
                                       (dir / "olora").string(), dir.path);
  INFO(r.err);
  REQUIRE(r.status == 0);
  const HFModel original(dir / "base"), residual(dir / "olora" / "residual");
  const auto olora = load_peft_adapter<float>(dir / "olora");
  CHECK(olora.metadata.at("milora.method") == "olora");
  CHECK(olora.metadata.at("milora.solver") == "none");
  for (const auto& [module, f] : olora.modules) {
    CAPTURE(module);
    const std::string name = module + ".weight";
    CHECK(rel_diff(add_product(residual.load<float>(name), f, 2.0), original.load<float>(name)) <= 1e-5);
    const auto b = to_backend<BE>(f.B);
    auto gram = BE::zeros(3, 3);
    BE::gemm(1, b, Trans::yes, b, Trans::no, 0, gram);
    BE::add_diagonal(gram, -1);
    CHECK(BE::squared_norm(gram) <= 1e-10);  // B^T B = I
  }

  r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method orthogonal --rank 2 --out " +
                                  (dir / "orthogonal").string(), dir.path);
  REQUIRE(r.status == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "orthogonal" / "residual"));
  const auto orth = load_peft_adapter<float>(dir / "orthogonal");
  for (const auto& [module, f] : orth.modules) {
    CAPTURE(module);
    const HostMatrix<float> w = original.load<float>(module + ".weight");
    CHECK(rel_diff(add_product(w, f, 1.0), w) <= 1e-6);  // B*A = 0 to float rounding
    CHECK(BE::squared_norm(to_backend<BE>(f.B)) > 0);     // though neither factor is zero
    CHECK(BE::squared_norm(to_backend<BE>(f.A)) > 0);
  }
  r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method orthogonal --rank 3 --out " +
                                  (dir / "odd").string(), dir.path);
  CHECK(r.status != 0);
  CHECK(r.err.find("even rank") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "odd"));

  // MiCA: no residual model, A = 0, B orthonormal (the minor left singular vectors, frozen later).
  r = run_tool("milora-init", "--model " + (dir / "base").string() + " --method mica --rank 3 --out " + (dir / "mica").string(),
               dir.path);
  INFO(r.err);
  REQUIRE(r.status == 0);
  CHECK_FALSE(std::filesystem::exists(dir / "mica" / "residual"));
  const auto mica = load_peft_adapter<float>(dir / "mica");
  CHECK(mica.metadata.at("milora.method") == "mica");
  for (const auto& [module, f] : mica.modules) {
    CAPTURE(module);
    CHECK(BE::squared_norm(to_backend<BE>(f.A)) == 0.0);
    const auto b = to_backend<BE>(f.B);
    auto gram = BE::zeros(3, 3);
    BE::gemm(1, b, Trans::yes, b, Trans::no, 0, gram);
    BE::add_diagonal(gram, -1);
    CHECK(BE::squared_norm(gram) <= 1e-10);  // B^T B = I
  }
}

TEST_CASE("the tools fail with one clear line, a non-zero exit and nothing written") {
  ScratchDir dir;
  make_model(dir / "base", DType::F32);
  make_model(dir / "intq", DType::F32, /*int_q_proj=*/true);
  const auto base = (dir / "base").string(), out = (dir / "out").string();
  struct Case {
    std::string tool, args, message;
  };
  const std::vector<Case> cases = {
      {"milora-init", "--model " + (dir / "missing").string() + " --out " + out, "Directory does not exist"},
      {"milora-init", "--model " + base + " --targets q_proj,foo_proj --out " + out, "unknown target 'foo_proj'"},
      {"milora-init", "--model " + base + " --rank 20 --out " + out, "--rank 20 is too large for"},
      {"milora-init", "--model " + base + " --method dora --out " + out, "--method"},
      {"milora-init", "--model " + (dir / "intq").string() + " --rank 4 --out " + out, "dtype unsupported: 'model.layers.0.self_attn.q_proj.weight' is I32"},
      {"milora-init", "--model " + base + " --rank 4 --out " + base, "already exists"},
      {"milora-merge", "--model " + base + " --adapter " + base + " --out " + out, "adapter_config.json"},
      {"milora-convert", "--initial " + base + " --trained " + base + " --out " + out, "adapter_config.json"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.args);
    const auto r = run_tool(c.tool, c.args, dir.path);
    CAPTURE(r.err);
    CHECK(r.status != 0);
    CHECK(r.err.find(c.message) != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK(no_partial_left(dir.path));
  }
  const auto help = run_tool("milora-init", "--help", dir.path);
  CHECK(help.status == 0);
}
