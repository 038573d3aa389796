// The reference LLaMA against PyTorch: tests/data/llama_tiny holds a Hugging Face folder with random
// weights (2 layers, grouped-query attention, vocab 256), a PEFT adapter on all seven projections,
// and what tests/reference/llama_reference.py computed from them in float32: logits, loss and every
// adapter gradient. Tolerances (float32 on both sides, different summation orders): logits and loss
// 1e-5 relative to the largest |value|, gradients 1e-4 relative to the largest |gradient| of each
// tensor.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/peft_bridge.hpp"
#include "llama/pretrained.hpp"

using BE = milora::EigenBackend<float>;
using Model = llama::Llama<BE>;
using llama::Index;
using llama::Token;

namespace {

const std::filesystem::path kDir = std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny";

std::vector<Token> int32_tensor(const milora::io::SafetensorsFile& f, const std::string& name) {
  REQUIRE(f.info(name).dtype == milora::io::DType::I32);
  const auto raw = f.raw(name);
  std::vector<Token> out(raw.size() / sizeof(Token));
  std::memcpy(out.data(), raw.data(), raw.size());  // little-endian on every machine we build for
  return out;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::abs(x)));
  return m;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}

// The golden batch: tokens and targets, batch x seq.
struct GoldenBatch {
  std::vector<Token> tokens, targets;
  Index batch, seq;
};
GoldenBatch golden_batch(const milora::io::SafetensorsFile& golden) {
  const auto shape = golden.info("tokens").shape;
  REQUIRE(shape.size() == 2);
  return {int32_tensor(golden, "tokens"), int32_tensor(golden, "targets"), shape[0], shape[1]};
}

// The golden adapter on `model`, one forward_backward of the golden batch, every adapter gradient
// checked to `grad_tol` relative to its largest entry; returns the logits' error (relative to the
// largest logit) and the loss's relative error.
template <class M>
std::pair<double, double> run_golden(M& model, double grad_tol, const std::filesystem::path& dir = kDir) {
  const auto adapter = milora::io::load_peft_adapter<float>(dir / "adapter");
  model.add_adapters(adapter.config.target_modules, adapter.config.adapter_config());
  llama::import_adapters(model, adapter, (dir / "adapter").string());
  REQUIRE(model.num_adapters() == 14);
  const milora::io::SafetensorsFile golden(dir / "golden.safetensors");
  const GoldenBatch g = golden_batch(golden);
  model.zero_grad();
  const double loss = model.forward_backward(g.tokens, g.targets, g.batch, g.seq);
  const auto want_logits = golden.load<float>("logits").data;
  const double logit_err = max_abs_diff(BE::to_host(model.logits()), want_logits) / max_abs(want_logits);
  const double want_loss = golden.load<double>("loss").data.at(0);
  int checked = 0;
  for (auto* p : model.adapted()) {
    for (char f : {'A', 'B'}) {
      const std::string key = milora::io::peft_key(p->module, f) + ".grad";
      CAPTURE(key);
      const auto want = golden.load<float>(key).data;
      const auto got = BE::to_host(f == 'A' ? p->adapter->grad_A() : p->adapter->grad_B());
      const double err = max_abs_diff(got, want) / max_abs(want);
      CAPTURE(err);
      CHECK(max_abs(want) > 0);
      CHECK(err < grad_tol);
      ++checked;
    }
  }
  CHECK(checked == 28);
  return {logit_err, std::abs(loss - want_loss) / want_loss};
}

// The golden folder's model with its adapter merged into the weights (merge_peft_adapter): the
// largest logit error against PyTorch's adapted logits, relative to the largest logit.
template <class M>
double merged_logit_error(const std::filesystem::path& dir) {
  auto merged = llama::from_pretrained<M>(milora::io::HFModel(dir / "model"));
  llama::merge_peft_adapter(*merged, milora::io::load_peft_adapter<float>(dir / "adapter"), "adapter");
  const milora::io::SafetensorsFile golden(dir / "golden.safetensors");
  const GoldenBatch g = golden_batch(golden);
  merged->forward(g.tokens, g.batch, g.seq);
  const auto want = golden.load<float>("logits").data;
  return max_abs_diff(BE::to_host(merged->logits()), want) / max_abs(want);
}

}  // namespace

TEST_CASE("Llama<float> with a PEFT adapter reproduces PyTorch's logits, loss and adapter gradients") {
  auto model = llama::from_pretrained<Model>(milora::io::HFModel(kDir / "model"));
  const auto [logit_err, loss_err] = run_golden(*model, 1e-4);
  CAPTURE(logit_err);
  CHECK(logit_err < 1e-5);
  CHECK(loss_err < 1e-5);
}

// The configs of current checkpoints (tests/reference/llama_reference.py's CONFIGS, scaled down):
// each model's logits, loss and adapter gradients against PyTorch's, to the same tolerances, and
// the same adapter merged into the weights (biases untouched, as PEFT merges) gives its logits.
TEST_CASE("LLaMA-3.2 (rope_scaling llama3, tied, explicit head_dim), Qwen2 (q/k/v biases), Mistral (sliding window) and a "
          "LLaMA with every bias reproduce PyTorch's logits, loss and adapter gradients") {
  for (const std::string name : {"llama32_tiny", "qwen2_tiny", "mistral_tiny", "llama_bias_tiny"}) {
    CAPTURE(name);
    const auto dir = std::filesystem::path(MILORA_TEST_DATA) / name;
    const milora::io::HFModel hf(dir / "model");
    auto model = llama::from_pretrained<Model>(hf);
    const auto& c = model->config();
    if (name == "llama32_tiny") {
      REQUIRE(c.rope_scaling.has_value());
      CHECK(c.tie_word_embeddings);
      CHECK(c.head_dim * c.num_attention_heads != c.hidden_size);
    }
    if (name == "qwen2_tiny") CHECK((c.bias == std::array<bool, 7>{true, true, true, false, false, false, false}));
    if (name == "mistral_tiny") CHECK(c.sliding_window == 32);
    if (name == "llama_bias_tiny") CHECK((c.bias == std::array<bool, 7>{true, true, true, true, true, true, true}));
    const auto [logit_err, loss_err] = run_golden(*model, 1e-4, dir);
    CAPTURE(logit_err);
    CHECK(logit_err < 1e-5);
    CHECK(loss_err < 1e-5);

    CHECK(merged_logit_error<Model>(dir) < 1e-5);
  }
}

// What each config adds is load-bearing: the same weights with the feature switched off (rope_scaling
// dropped, the biases zeroed) give logits far from the model's own, so a kernel ignoring it would
// fail the goldens above.
TEST_CASE("rope_scaling and the biases change the logits (the goldens would catch them ignored)") {
  for (const std::string name : {"llama32_tiny", "qwen2_tiny", "llama_bias_tiny"}) {
    CAPTURE(name);
    const auto dir = std::filesystem::path(MILORA_TEST_DATA) / name;
    const milora::io::HFModel hf(dir / "model");
    const milora::io::SafetensorsFile golden(dir / "golden.safetensors");
    const GoldenBatch g = golden_batch(golden);
    auto intact = llama::from_pretrained<Model>(hf);
    intact->forward(g.tokens, g.batch, g.seq);
    const auto want = BE::to_host(intact->logits());
    llama::LlamaConfig c = llama::LlamaConfig::from_model(hf);
    c.rope_scaling.reset();
    Model off(c, [&](const std::string& n, Index, Index) {
      auto m = milora::io::to_backend<BE>(hf.load<float>(n));
      if (n.ends_with(".bias")) BE::scale(m, 0.0f);
      return m;
    });
    off.forward(g.tokens, g.batch, g.seq);
    CHECK(max_abs_diff(BE::to_host(off.logits()), want) / max_abs(want) > 1e-3);
  }
}

TEST_CASE("merge_peft_adapter: the base model with the adapter merged computes the adapted model's logits") {
  const milora::io::HFModel hf(kDir / "model");
  const auto adapter = milora::io::load_peft_adapter<float>(kDir / "adapter");
  auto merged = llama::from_pretrained<Model>(hf);
  llama::merge_peft_adapter(*merged, adapter, "adapter");
  const milora::io::SafetensorsFile golden(kDir / "golden.safetensors");
  const auto tokens = int32_tensor(golden, "tokens");
  merged->forward(tokens, golden.info("tokens").shape[0], golden.info("tokens").shape[1]);
  const auto want = golden.load<float>("logits").data;
  CHECK(max_abs_diff(BE::to_host(merged->logits()), want) / max_abs(want) < 1e-5);

  auto other = llama::from_pretrained<Model>(hf);
  auto bad = adapter;
  bad.modules.emplace("model.layers.7.mlp.up_proj", bad.modules.begin()->second);
  CHECK_THROWS_WITH_AS(llama::merge_peft_adapter(*other, bad, "adapter"),
                       "adapter: 'model.layers.7.mlp.up_proj' is not a projection of the model", milora::format_error);
  other->forward(tokens, golden.info("tokens").shape[0], golden.info("tokens").shape[1]);
  CHECK(max_abs_diff(BE::to_host(other->logits()), want) > 1e-3);  // nothing was merged
}

// bf16 frozen projections (Llama<B, Bf16Weights>): the same golden files, now with the model
// computing as a bf16 model does (every product with a projection's weight multiplies bf16-rounded
// operands, docs/math.md "bf16 frozen weights"), so against PyTorch's float32 numbers only to bf16
// precision. How far that is, measured on these files: rounding the projections' weights alone (a
// float32 model with round(W)) moves the logits by 1.2e-2 of the largest; rounding x too (the bf16
// model), 1.6e-2; adapter gradients by up to 3.9e-2. The bounds, 3e-2 for logits and loss and 6e-2
// for gradients, leave room for summation order and catch what a wrong composition does (a
// projection left out of bf16 or a wrong backward moves gradients by O(1)). A float32 model matches
// the files to 1.5e-6; the bf16 one must be farther than 1e-5 (else it did not compute in bf16).
TEST_CASE("Llama<float, Bf16Weights>: bf16 projections with a PEFT adapter are PyTorch's float32 logits, loss and adapter "
          "gradients to bf16 precision, and really bf16") {
  using Bf16Model = llama::Llama<BE, milora::Bf16Weights>;
  static_assert(std::is_same_v<decltype(Bf16Model::Projection::linear), milora::Bf16Linear<BE>>);
  const milora::io::HFModel hf(kDir / "model");
  auto model = llama::from_pretrained<Bf16Model>(hf);
  // the projections hold round(W) (widened exactly by weight()); the embedding and norms are float32 as loaded
  const auto q = hf.load<float>("model.layers.1.self_attn.q_proj.weight");
  const auto q_stored = BE::to_host(model->weight("model.layers.1.self_attn.q_proj.weight"));
  std::size_t differ = 0;
  for (std::size_t i = 0; i < q.data.size(); ++i) differ += q_stored[i] != milora::round_to_bf16(q.data[i]);
  CHECK(differ == 0);
  CHECK(BE::to_host(model->weight("model.embed_tokens.weight")) == hf.load<float>("model.embed_tokens.weight").data);
  // full training needs the weights in float: refused, nothing changed
  CHECK_THROWS_WITH_AS(model->enable_full_training(), doctest::Contains("stored in bf16"), milora::state_error);
  CHECK_FALSE(model->full_training());

  const auto [logit_err, loss_err] = run_golden(*model, 6e-2);
  CAPTURE(logit_err);
  CHECK(logit_err < 3e-2);
  CHECK(logit_err > 1e-5);
  CHECK(loss_err < 3e-2);

  // merge_peft_adapter into bf16 weights (one rounding per entry): the adapted logits again
  CHECK(merged_logit_error<Bf16Model>(kDir) < 3e-2);
}
