// LlamaConfig: the fields of a Hugging Face LLaMA config.json that fix the weights' names and
// shapes, with transformers' defaults (LlamaConfig in transformers/models/llama), and the list of
// weights such a model must hold, so that a folder can be checked before anything is loaded. These
// are the reference model's rules: what it can compute is what from_json accepts.
#pragma once

#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/core/errors.hpp"
#include "milora/io/hf_model.hpp"

namespace llama {

using milora::Index;

struct LlamaConfig {
  Index vocab_size = 32000;
  Index hidden_size = 4096;
  Index intermediate_size = 11008;
  Index num_hidden_layers = 32;
  Index num_attention_heads = 32;
  Index num_key_value_heads = 32;  // transformers: defaults to num_attention_heads
  Index head_dim = 128;            // transformers: defaults to hidden_size / num_attention_heads
  Index max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;

  /// Reads config.json; `where` names it in messages. Refuses what the reference model would not
  /// compute the same way (another activation, attention / MLP biases, RoPE scaling).
  static LlamaConfig from_json(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    auto fail = [&](const std::string& what) { throw milora::format_error(concat(where, ": ", what)); };
    LlamaConfig c;
    auto integer = [&](const char* key, Index& field, bool required) {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) {
        if (required) fail(concat("\"", key, "\" is missing"));
        return;
      }
      if (!it->is_number_integer() || it->get<long long>() <= 0) fail(concat("\"", key, "\" must be a positive integer, got ", it->dump()));
      field = it->get<Index>();
    };
    auto number = [&](const char* key, double& field) {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return;
      if (!it->is_number() || !(it->get<double>() > 0)) fail(concat("\"", key, "\" must be a positive number, got ", it->dump()));
      field = it->get<double>();
    };
    if (!j.is_object()) fail("not a JSON object");
    if (j.contains("model_type") && j["model_type"] != "llama" && j["model_type"] != "mistral")
      fail(concat("model_type is ", j["model_type"].dump(), "; expected \"llama\""));
    integer("vocab_size", c.vocab_size, true);
    integer("hidden_size", c.hidden_size, true);
    integer("intermediate_size", c.intermediate_size, true);
    integer("num_hidden_layers", c.num_hidden_layers, true);
    integer("num_attention_heads", c.num_attention_heads, true);
    c.num_key_value_heads = c.num_attention_heads;
    integer("num_key_value_heads", c.num_key_value_heads, false);
    if (c.hidden_size % c.num_attention_heads != 0 && !j.contains("head_dim"))
      fail(concat("hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ", c.num_attention_heads));
    c.head_dim = c.hidden_size / c.num_attention_heads;
    integer("head_dim", c.head_dim, false);
    if (c.num_attention_heads % c.num_key_value_heads != 0)
      fail(concat("num_attention_heads ", c.num_attention_heads, " is not a multiple of num_key_value_heads ", c.num_key_value_heads));
    integer("max_position_embeddings", c.max_position_embeddings, false);
    number("rms_norm_eps", c.rms_norm_eps);
    number("rope_theta", c.rope_theta);
    if (j.contains("tie_word_embeddings")) {
      if (!j["tie_word_embeddings"].is_boolean()) fail("\"tie_word_embeddings\" must be true or false");
      c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
    }
    if (j.contains("hidden_act") && j["hidden_act"] != "silu") fail(concat("hidden_act is ", j["hidden_act"].dump(), "; LLaMA uses \"silu\""));
    for (const char* key : {"attention_bias", "mlp_bias"})
      if (j.contains(key) && j[key] == true) fail(concat("\"", key, "\" is true; the reference LLaMA has no biases"));
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) fail("\"rope_scaling\" is set; only plain RoPE is supported");
    return c;
  }

  static LlamaConfig from_model(const milora::io::HFModel& model) {
    return from_json(model.config(), milora::detail::concat("'", (model.dir() / "config.json").string(), "'"));
  }

  struct Weight {
    std::string name;
    Index rows, cols;  // a vector (norm weight) is 1 x n
  };

  /// Every weight a LLaMA with this config holds, with transformers' names and shapes.
  std::vector<Weight> weights() const {
    const Index h = hidden_size, q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
    std::vector<Weight> w = {{"model.embed_tokens.weight", vocab_size, h}};
    for (Index l = 0; l < num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      w.push_back({p + "input_layernorm.weight", 1, h});
      w.push_back({p + "self_attn.q_proj.weight", q, h});
      w.push_back({p + "self_attn.k_proj.weight", kv, h});
      w.push_back({p + "self_attn.v_proj.weight", kv, h});
      w.push_back({p + "self_attn.o_proj.weight", h, q});
      w.push_back({p + "post_attention_layernorm.weight", 1, h});
      w.push_back({p + "mlp.gate_proj.weight", intermediate_size, h});
      w.push_back({p + "mlp.up_proj.weight", intermediate_size, h});
      w.push_back({p + "mlp.down_proj.weight", h, intermediate_size});
    }
    w.push_back({"model.norm.weight", 1, h});
    if (!tie_word_embeddings) w.push_back({"lm_head.weight", vocab_size, h});
    return w;
  }

  /// Throws format_error naming the first weight of weights() that `model` lacks or holds with
  /// another shape, or a tensor of `model` that is not among them (a config.json with fewer layers
  /// than the weights would otherwise train and save a smaller model without a word). Tolerated:
  /// the rotary inverse frequencies older checkpoints store (recomputed from rope_theta) and the
  /// lm_head a tied model may carry anyway (transformers ignores it too).
  void check(const milora::io::HFModel& model) const {
    using milora::detail::concat;
    const auto expected = weights();
    std::set<std::string> names;
    for (const auto& w : expected) names.insert(w.name);
    for (const auto& name : model.tensor_names()) {
      const bool inv_freq = name.size() > 20 && name.compare(name.size() - 20, 20, ".rotary_emb.inv_freq") == 0;
      if (names.count(name) || inv_freq || (tie_word_embeddings && name == "lm_head.weight")) continue;
      throw milora::format_error(concat("model '", model.dir().string(), "': '", name, "' is not a weight of the LLaMA its config.json describes (",
                                        num_hidden_layers, " layers",
                                        name.rfind("model.layers.", 0) == 0 ? "; is num_hidden_layers right?)" : ")"));
    }
    for (const auto& w : expected) {
      if (!model.contains(w.name)) throw milora::format_error(concat("model '", model.dir().string(), "' has no '", w.name, "'"));
      const auto [r, c] = milora::io::matrix_shape(model.info(w.name), model.file_of(w.name).path().string());
      if (r != w.rows || c != w.cols)
        throw milora::format_error(concat("model '", model.dir().string(), "': '", w.name, "' is ", r, "x", c, " but config.json implies ",
                                  w.rows, "x", w.cols));
    }
  }
};

/// config.json for `c`, with transformers' names (what from_json reads back).
inline nlohmann::json config_json(const LlamaConfig& c) {
  return {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_act", "silu"},
          {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
          {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
          {"num_key_value_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
          {"max_position_embeddings", c.max_position_embeddings}, {"rms_norm_eps", c.rms_norm_eps},
          {"rope_theta", c.rope_theta}, {"tie_word_embeddings", c.tie_word_embeddings}, {"torch_dtype", "float32"}};
}

}  // namespace llama
