// Generation over a key/value cache (llama/kv_cache.hpp, Llama::forward_cached, generate_batch):
// the cached logits equal a full recomputation (Llama::forward on the whole prefix) at every step,
// for a prefill of any length, for left-padded batches and for every model family of tests/data;
// the generated tokens equal those of recomputation, alone or in a batch, past the model's context
// too; bad use is refused with the cache unchanged.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "llama/generation.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "llama_test_util.hpp"

using llama::Index;
using llama::Token;

namespace {

// A fixed pseudo-random token sequence.
std::vector<Token> cache_test_tokens(Index n, Index vocab, unsigned seed) {
  std::vector<Token> t(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) t[std::size_t(i)] = Token((i * 5 + seed * 7 + i * i * 3) % vocab);
  return t;
}

// The logits after tokens[0, n) by full recomputation: the last row of forward().
template <class Model>
std::vector<double> recomputed_last(Model& model, const std::vector<Token>& tokens, Index n) {
  using BE = typename Model::backend;
  model.forward(std::span<const Token>(tokens.data(), std::size_t(n)), 1, n);
  const auto row = BE::to_host(BE::cblock(model.logits(), n - 1, 0, 1, model.config().vocab_size));
  return {row.begin(), row.end()};
}

// Largest |cached - full| over the largest |full|.
double relative_gap(const std::vector<double>& cached, const std::vector<double>& full) {
  double gap = 0, scale = 0;
  for (std::size_t i = 0; i < full.size(); ++i) {
    gap = std::max(gap, std::abs(cached[i] - full[i]));
    scale = std::max(scale, std::abs(full[i]));
  }
  return gap / std::max(scale, 1e-30);
}

// Row b of forward_cached's logits.
template <class BE>
std::vector<double> cached_row(const milora::matrix_t<BE>& logits, Index b) {
  const auto row = BE::to_host(BE::cblock(logits, b, 0, 1, BE::cols(logits)));
  return {row.begin(), row.end()};
}

// Sequences of the given lengths as one left-padded batch: a prefill of the first `prefill` slots,
// then one slot at a time; at every step each sequence's logits against its recomputation.
// Returns the largest relative gap.
template <class Model>
double cached_against_recomputed(Model& model, const std::vector<Index>& lengths, Index prefill) {
  using BE = typename Model::backend;
  const Index batch = Index(lengths.size()), slots = *std::max_element(lengths.begin(), lengths.end());
  const Index vocab = model.config().vocab_size;
  std::vector<std::vector<Token>> seqs;
  std::vector<std::int32_t> starts;
  for (Index b = 0; b < batch; ++b) {
    seqs.push_back(cache_test_tokens(lengths[std::size_t(b)], vocab, unsigned(b + 1)));
    starts.push_back(std::int32_t(slots - lengths[std::size_t(b)]));
  }
  auto cache = model.make_cache(batch, slots);
  cache.reset(starts);
  double worst = 0;
  for (Index past = 0; past < slots;) {
    const Index n = past == 0 ? prefill : 1;
    std::vector<Token> step;
    for (Index b = 0; b < batch; ++b)
      for (Index t = past; t < past + n; ++t)  // padding slots read token 0
        step.push_back(t < starts[std::size_t(b)] ? 0 : seqs[std::size_t(b)][std::size_t(t - starts[std::size_t(b)])]);
    const auto& logits = model.forward_cached(step, cache);
    past += n;
    CHECK(cache.length() == past);
    for (Index b = 0; b < batch; ++b) {
      const Index seen = past - starts[std::size_t(b)];  // tokens of sequence b read so far
      if (seen <= 0) continue;
      const auto full = recomputed_last(model, seqs[std::size_t(b)], seen);
      worst = std::max(worst, relative_gap(cached_row<BE>(logits, b), full));
    }
  }
  return worst;
}

using CacheFloat = llama::Llama<milora::EigenBackend<float>>;
using CacheDouble = llama::Llama<milora::EigenBackend<double>>;

// A random model of tiny_config_variant(variant) with random biases and, unless `plain`, unmerged
// adapters on every projection with random A and B.
template <class Model>
std::unique_ptr<Model> cache_test_model(int variant, bool plain, Index vocab = 11) {
  using BE = typename Model::backend;
  auto config = llama_test::tiny_config_variant(variant);
  config.vocab_size = vocab;
  auto model = llama::random_model<Model>(config, 5, 0.3);
  llama_test::randomise_biases(*model, 40);
  if (!plain) {
    model->add_adapters({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, {.rank = 2, .alpha = 4});
    unsigned seed = 90;
    for (auto* p : model->adapted()) {
      p->adapter->A() = llama_test::randn<BE>(BE::rows(p->adapter->A()), BE::cols(p->adapter->A()), seed++, 0.3);
      p->adapter->B() = llama_test::randn<BE>(BE::rows(p->adapter->B()), BE::cols(p->adapter->B()), seed++, 0.3);
    }
  }
  return model;
}

}  // namespace

TEST_CASE("forward_cached: prefill then one token at a time gives the logits of full recomputation at every step (float "
          "1e-5), in a left-padded batch too, with unmerged adapters, biases, tied heads and llama3 rope scaling") {
  for (int variant : {0, 1, 2}) {
    CAPTURE(variant);
    auto model = cache_test_model<CacheFloat>(variant, variant != 1);
    for (Index prefill : {1, 7}) {
      CAPTURE(prefill);
      CHECK(cached_against_recomputed(*model, {20}, prefill) < 1e-5);
      CHECK(cached_against_recomputed(*model, {20, 13, 17}, prefill) < 1e-5);  // prefill 7 < padding 7 of the second
    }
  }
  // double: the same numbers to rounding
  auto exact = cache_test_model<CacheDouble>(2, false);
  CHECK(cached_against_recomputed(*exact, {12, 5}, 3) < 1e-12);
}

TEST_CASE("forward_cached on every family of tests/data (LLaMA, LLaMA-3.2, Qwen2, Mistral, biased LLaMA): the cached "
          "logits of 24 tokens equal recomputation (float 1e-5)") {
  for (const char* name : {"llama_tiny", "llama32_tiny", "qwen2_tiny", "mistral_tiny", "llama_bias_tiny"}) {
    CAPTURE(std::string(name));
    auto model = llama::from_pretrained<CacheFloat>(
        milora::io::HFModel(std::filesystem::path(MILORA_TEST_DATA) / name / "model"));
    CHECK(cached_against_recomputed(*model, {24, 19}, 5) < 1e-5);
  }
}

TEST_CASE("generate with the key/value cache: the tokens of recomputation (greedy and sampled), each prompt of a batch as "
          "alone, past the model's context too") {
  auto model = cache_test_model<CacheDouble>(2, false, 256);  // max_position_embeddings 32
  const auto tokenizer = llama::Tokenizer::for_model(std::filesystem::temp_directory_path(), 256);
  const std::vector<std::vector<Token>> prompts = {cache_test_tokens(9, 256, 1), cache_test_tokens(3, 256, 2),
                                                   cache_test_tokens(6, 256, 3)};
  for (const double temperature : {0.0, 1.0}) {
    CAPTURE(temperature);
    llama::GenerationOptions o;
    o.max_new_tokens = 30;
    o.temperature = temperature;
    o.top_p = 0.9;
    o.seed = 11;
    const auto batch = llama::generate_batch(*model, tokenizer, prompts, o);
    REQUIRE(batch.size() == 3);
    for (std::size_t b = 0; b < prompts.size(); ++b) {
      CAPTURE(b);
      const auto alone = llama::generate(*model, tokenizer, prompts[b], o);
      o.kv_cache = false;
      const auto recomputed = llama::generate(*model, tokenizer, prompts[b], o);
      o.kv_cache = true;
      CHECK(alone.tokens.size() == 30);
      CHECK(alone.tokens == recomputed.tokens);
      CHECK(batch[b].tokens == alone.tokens);
      CHECK(batch[b].text == alone.text);
    }
    // 9 + 40 tokens > 32: past the context every step reads the last 32 tokens, as recomputation does
    o.max_new_tokens = 40;
    const auto long_cached = llama::generate(*model, tokenizer, prompts[0], o);
    o.kv_cache = false;
    CHECK(llama::generate(*model, tokenizer, prompts[0], o).tokens == long_cached.tokens);
  }
}

TEST_CASE("forward_cached: bad use is refused with the cache unchanged") {
  auto model = cache_test_model<CacheFloat>(0, true);
  CHECK_THROWS_WITH_AS(model->make_cache(1, 33), "Llama::make_cache: 33 slots exceed the model's context of 32 tokens (max_position_embeddings)",
                       milora::value_error);
  auto cache = model->make_cache(2, 4);
  const std::vector<Token> three = {1, 2, 3}, four = {1, 2, 3, 4}, bad = {1, 2, 99, 4};
  CHECK_THROWS_WITH_AS(model->forward_cached(three, cache), "Llama::forward_cached: 3 tokens for a batch of 2 sequences",
                       milora::shape_error);
  CHECK_THROWS_WITH_AS(model->forward_cached(bad, cache), "token 99 at position 2 is outside the vocabulary of 11",
                       milora::value_error);
  CHECK(cache.length() == 0);
  model->forward_cached(four, cache);
  model->forward_cached(four, cache);
  CHECK(cache.length() == 4);
  CHECK_THROWS_WITH_AS(model->forward_cached(std::vector<Token>{1, 2}, cache),
                       "Llama::forward_cached: 4 cached + 1 new tokens per sequence exceed the cache's 4 slots", milora::value_error);
  const std::vector<std::int32_t> starts = {0, 4};
  CHECK_THROWS_WITH_AS(cache.reset(starts), "KvCache::reset: start 4 of sequence 1 is outside [0, 4)", milora::value_error);
  CHECK(cache.length() == 4);
  cache.reset();
  CHECK(cache.length() == 0);
  // a cache of another model
  auto other_config = llama_test::tiny_config();
  other_config.num_hidden_layers = 3;
  auto other = llama::random_model<CacheFloat>(other_config, 1);
  auto foreign = other->make_cache(1, 4);
  CHECK_THROWS_WITH_AS(model->forward_cached(std::vector<Token>{1}, foreign), "Llama::forward_cached: the cache was made for another model",
                       milora::shape_error);
  // Mistral: the cache holds at most the sliding window
  auto windowed = llama_test::tiny_config();
  windowed.sliding_window = 8;
  auto mistral = llama::random_model<CacheFloat>(windowed, 1);
  CHECK(mistral->context_limit() == 8);
  CHECK_THROWS_WITH_AS(mistral->make_cache(1, 9),
                       "Llama::make_cache: 9 slots exceed the model's context of 8 tokens (max_position_embeddings or sliding_window)",
                       milora::value_error);
}
