// The whole reference LLaMA on the CPU: adapter gradients against finite differences in double,
// residual initialisations leave the function unchanged, bad input refused before any work.
#include <doctest/doctest.h>

#include <vector>

#include "kernels_cpu.hpp"
#include "llama_test_util.hpp"
#include "model.hpp"

using llama::Index;
using llama::Token;

namespace {

template <class Model>
void randomise_adapters(Model& m, unsigned seed) {
  using BE = typename Model::backend;
  for (auto* p : m.adapted()) {  // B = 0 at a LoRA start would make every dA zero: test the general case
    p->adapter->A() = llama_test::randn<BE>(BE::rows(p->adapter->A()), BE::cols(p->adapter->A()), seed++, 0.3);
    p->adapter->B() = llama_test::randn<BE>(BE::rows(p->adapter->B()), BE::cols(p->adapter->B()), seed++, 0.3);
  }
}

std::vector<Token> tokens_of(Index n, Index vocab, unsigned seed) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) t[std::size_t(i)] = Token((i * 7 + seed * 3 + i * i) % vocab);
  return t;
}

// Central differences (h = 1e-6) of grad_scale * loss over every entry of `value`, against `grad`:
// {largest |difference|, largest |numeric gradient|}.
template <class Model, class View>
std::pair<double, double> check_entries(Model& model, View value, const View& grad, const std::vector<Token>& tokens,
                                        const std::vector<Token>& targets, Index batch, Index seq, double grad_scale = 1.0) {
  const double h = 1e-6;
  double worst = 0, largest = 0;
  for (Index i = 0; i < value.size(); ++i) {
    const double keep = value.data()[i];
    value.data()[i] = keep + h;
    model.forward(tokens, batch, seq);
    const double lp = model.loss(targets);
    value.data()[i] = keep - h;
    model.forward(tokens, batch, seq);
    const double lm = model.loss(targets);
    value.data()[i] = keep;
    const double numeric = grad_scale * (lp - lm) / (2 * h);
    worst = std::max(worst, std::abs(numeric - grad.data()[i]));
    largest = std::max(largest, std::abs(numeric));
  }
  return {worst, largest};
}

}  // namespace

TEST_CASE("Llama<double>: every adapter gradient (all 7 targets, GQA, tied and untied head) matches finite differences") {
  using BE = milora::EigenBackend<double>;
  using Model = llama::Llama<BE>;
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    auto cfg = llama_test::tiny_config();
    cfg.tie_word_embeddings = tied;
    auto model = llama::random_model<Model>(cfg, 42, 0.3);
    model->add_adapters({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
                        {.rank = 2, .alpha = 4, .seed = 7});
    REQUIRE(model->num_adapters() == 14);
    randomise_adapters(*model, 100);
    const Index batch = 2, seq = 5;
    const auto tokens = tokens_of(batch * seq, cfg.vocab_size, 1);
    auto targets = tokens_of(batch * seq, cfg.vocab_size, 2);
    targets[3] = llama::kIgnoreIndex;
    model->zero_grad();
    const double loss = model->forward_backward(tokens, targets, batch, seq, 0.5);
    CHECK(std::isfinite(loss));
    double worst = 0, largest = 0;
    for (const auto& param : model->parameters()) {
      const auto [w, l] = check_entries(*model, param.value, param.grad, tokens, targets, batch, seq, 0.5);
      worst = std::max(worst, w);
      largest = std::max(largest, l);
    }
    CAPTURE(worst);
    CAPTURE(largest);
    CHECK(largest > 1e-3);               // the check is not vacuous
    CHECK(worst < 1e-7 * largest);       // central differences in double: ~1e-10 expected
  }
}

TEST_CASE("Llama<double>: PiSSA and MiLoRA starts leave the logits unchanged, LoRA (B = 0) too") {
  using BE = milora::EigenBackend<double>;
  const auto cfg = llama_test::tiny_config();
  const Index batch = 1, seq = 6;
  const auto tokens = tokens_of(batch * seq, cfg.vocab_size, 3);
  auto base = llama::random_model<llama::Llama<BE>>(cfg, 5, 0.3);
  base->forward(tokens, batch, seq);
  const BE::matrix reference = base->logits();
  auto check_start = [&](auto model, const char* name) {
    CAPTURE(std::string(name));
    model->add_adapters({"q_proj", "v_proj", "down_proj"}, {.rank = 3, .alpha = 6});
    model->forward(tokens, batch, seq);
    CHECK((model->logits() - reference).cwiseAbs().maxCoeff() < 1e-12);
  };
  check_start(llama::random_model<llama::Llama<BE, milora::MinorSVD<>>>(cfg, 5, 0.3), "MiLoRA");
  check_start(llama::random_model<llama::Llama<BE, milora::PrincipalSVD<>>>(cfg, 5, 0.3), "PiSSA");
  check_start(llama::random_model<llama::Llama<BE>>(cfg, 5, 0.3), "LoRA");
}

TEST_CASE("Llama: bad input is refused with its value, before any work") {
  using BE = milora::EigenBackend<float>;
  const auto cfg = llama_test::tiny_config();
  auto model = llama::random_model<llama::Llama<BE>>(cfg, 1);
  CHECK_THROWS_WITH_AS(model->add_adapters({"q_proj", "qkv_proj"}, {.rank = 2}),
                       doctest::Contains("'qkv_proj' is not a LLaMA projection"), milora::value_error);
  CHECK_THROWS_AS(model->add_adapters({"q_proj"}, {.rank = 17}), milora::shape_error);
  CHECK(model->num_adapters() == 0);
  const std::vector<Token> tokens(40, 1);
  CHECK_THROWS_WITH_AS(model->forward(tokens, 1, 40), "Llama: sequence length 40 exceeds max_position_embeddings 32",
                       milora::value_error);
  CHECK_THROWS_WITH_AS(model->forward(std::span(tokens).first(10), 2, 4), "Llama: 10 tokens for batch 2 x seq 4",
                       milora::shape_error);
  CHECK_THROWS_WITH_AS(model->forward_backward(std::span(tokens).first(8), std::span(tokens).first(8), 2, 4),
                       "Llama::forward_backward: the model has no adapters to train", milora::state_error);
  model->add_adapters({"q_proj"}, {.rank = 2});
  CHECK_THROWS_AS(model->add_adapters({"v_proj"}, {.rank = 2}), milora::state_error);
  const std::vector<Token> bad = {1, 2, 11, 3};
  CHECK_THROWS_WITH_AS(model->forward(bad, 1, 4), "token 11 at position 2 is outside the vocabulary of 11",
                       milora::value_error);
}

TEST_CASE("Llama<double> full training: the gradient of every weight (embedding, norms, projections, head) matches finite differences") {
  using BE = milora::EigenBackend<double>;
  using Model = llama::Llama<BE>;
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    auto cfg = llama_test::tiny_config();
    cfg.tie_word_embeddings = tied;
    auto model = Model(cfg, [&](const std::string& name, Index r, Index c) {  // norms away from 1 too
      return llama_test::randn<BE>(r, c, unsigned(std::hash<std::string>{}(name) % 1000), name.find("norm") != std::string::npos ? 1.0 : 0.3);
    });
    model.enable_full_training();
    CHECK_THROWS_AS(model.add_adapters({"q_proj"}, {.rank = 2}), milora::state_error);
    auto params = model.parameters();
    CHECK(params.size() == cfg.weights().size());
    const Index batch = 2, seq = 4;
    auto tokens = tokens_of(batch * seq, cfg.vocab_size, 4);
    tokens[5] = tokens[1];  // a repeated token: the embedding's gradient must add both rows
    const auto targets = tokens_of(batch * seq, cfg.vocab_size, 5);
    model.zero_grad();
    model.forward_backward(tokens, targets, batch, seq);
    for (auto& p : params) {
      CAPTURE(std::string(p.name));
      const auto [worst, largest] = check_entries(model, p.value, p.grad, tokens, targets, batch, seq);
      CAPTURE(worst);
      CAPTURE(largest);
      CHECK(largest > 1e-4);
      CHECK(worst < 1e-7 * std::max(largest, 1e-2));
    }
  }
}
