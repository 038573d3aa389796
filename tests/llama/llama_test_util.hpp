// Helpers for the reference-LLaMA tests: deterministic random matrices and tiny configs.
#pragma once

#include <random>

#include "llama/config.hpp"
#include "milora/core/backend.hpp"

namespace llama_test {

/// Normal(0, std) entries from std::mt19937 (independent of milora's own generator).
template <milora::Backend BE>
milora::matrix_t<BE> randn(milora::Index r, milora::Index c, unsigned seed, double std = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, std);
  std::vector<milora::scalar_t<BE>> v(std::size_t(r * c));
  for (auto& x : v) x = milora::scalar_t<BE>(dist(gen));
  return BE::from_host(r, c, v);
}

/// 2 layers, grouped-query attention (4 heads over 2 key/value heads), untied head.
inline llama::LlamaConfig tiny_config() {
  llama::LlamaConfig c;
  c.vocab_size = 11;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000;
  return c;
}

/// tiny_config (0), tied (1), or tied with every projection biased and LLaMA-3.1's rope_scaling (2),
/// its bands placed so that head_dim 4's two frequencies are one kept (wavelength 6.3 < 1000 / 4),
/// one interpolated (628, between 1000 / 4 and 1000 / 1).
inline llama::LlamaConfig tiny_config_variant(int variant) {
  auto c = tiny_config();
  c.tie_word_embeddings = variant >= 1;
  if (variant == 2) {
    c.bias.fill(true);
    c.rope_scaling = llama::LlamaConfig::Llama3RopeScaling{.factor = 4, .low_freq_factor = 1, .high_freq_factor = 4,
                                                            .original_max_position_embeddings = 1000};
  }
  return c;
}

/// Random biases (random_model leaves them zero, as transformers initialises them).
template <class Model>
void randomise_biases(Model& m, unsigned seed) {
  using BE = typename Model::backend;
  for (milora::Index l = 0; l < m.num_layers(); ++l)
    for (auto* p : m.block(l).projections())
      if (p->has_bias()) p->bias = randn<BE>(1, BE::cols(p->bias), seed++, 0.5);
}

}  // namespace llama_test
