// LlamaConfig: the fields of a Hugging Face config.json that fix the weights' names and shapes and
// the math, with transformers' defaults (LlamaConfig, MistralConfig, Qwen2Config), and the list of
// weights such a model must hold, so that a folder can be checked before anything is loaded. These
// are the reference model's rules: what it can compute is what from_json accepts.
//
// The family: LLaMA-1/2/3.x ("llama": rope_scaling "llama3", tied embeddings, an explicit head_dim,
// attention_bias / mlp_bias), Mistral ("mistral": a sliding window) and Qwen2 / Qwen2.5 ("qwen2":
// biases on q, k and v). Everything else that would change the math is refused by name.
#pragma once

#include <array>
#include <cmath>
#include <numbers>
#include <optional>
#include <set>
#include <string>
#include <string_view>
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
  std::string model_type = "llama";  // "llama", "mistral" or "qwen2": written back by config_json

  /// LLaMA-3.1's RoPE scaling (rope_type "llama3", transformers' _compute_llama3_parameters): the
  /// frequencies whose wavelength exceeds original / low_freq_factor are divided by `factor`, those
  /// below original / high_freq_factor kept, the band between interpolated.
  struct Llama3RopeScaling {
    double factor = 8, low_freq_factor = 1, high_freq_factor = 4;
    Index original_max_position_embeddings = 8192;
    bool operator==(const Llama3RopeScaling&) const = default;
  };
  std::optional<Llama3RopeScaling> rope_scaling;

  /// Which of the seven projections (kProjectionNames' order: q, k, v, o, gate, up, down) add a
  /// bias: Qwen2's q, k, v; LLaMA's attention_bias (q, k, v, o) and mlp_bias (gate, up, down).
  std::array<bool, 7> bias{};
  static constexpr std::array<std::string_view, 7> kProjections = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                                   "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                                   "mlp.down_proj"};
  bool has_bias() const {
    for (bool b : bias)
      if (b) return true;
    return false;
  }

  /// The attention window of Mistral's sliding_window (and Qwen2's with use_sliding_window). The
  /// model computes full causal attention, which is the windowed one for sequences no longer than
  /// the window; longer ones are refused (Llama::forward).
  std::optional<Index> sliding_window;

  /// Reads config.json; `where` names it in messages. Refuses what the reference model would not
  /// compute the same way (another activation or architecture, another RoPE scaling, soft-capping,
  /// partial rotary embeddings).
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
    auto flag = [&](const char* key) {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return false;
      if (!it->is_boolean()) fail(concat("\"", key, "\" must be true or false, got ", it->dump()));
      return it->get<bool>();
    };
    if (!j.is_object()) fail("not a JSON object");
    if (j.contains("model_type")) {
      if (!j["model_type"].is_string() || (j["model_type"] != "llama" && j["model_type"] != "mistral" && j["model_type"] != "qwen2"))
        fail(concat("model_type is ", j["model_type"].dump(), "; expected \"llama\", \"mistral\" or \"qwen2\""));
      c.model_type = j["model_type"].get<std::string>();
    }
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
    c.tie_word_embeddings = flag("tie_word_embeddings");
    if (j.contains("hidden_act") && j["hidden_act"] != "silu") fail(concat("hidden_act is ", j["hidden_act"].dump(), "; LLaMA uses \"silu\""));
    if (c.model_type == "qwen2") {  // Qwen2Attention: q, k, v with a bias, o without (no config field)
      c.bias = {true, true, true, false, false, false, false};
    } else {
      const bool attention = flag("attention_bias"), mlp = flag("mlp_bias");
      c.bias = {attention, attention, attention, attention, mlp, mlp, mlp};
    }
    c.rope_scaling = read_rope_scaling(j, where);
    // Mistral applies its window to every layer; Qwen2 only with use_sliding_window (to the layers
    // from max_window_layers on: refusing longer sequences covers them all).
    const bool windowed = c.model_type == "mistral" || (c.model_type == "qwen2" && flag("use_sliding_window"));
    if (windowed && j.contains("sliding_window") && !j["sliding_window"].is_null()) {
      Index w = 0;
      integer("sliding_window", w, true);
      c.sliding_window = w;
    }
    // Fields of neighbouring architectures that change the math, if a config carries them.
    if (j.contains("partial_rotary_factor") && !j["partial_rotary_factor"].is_null() && j["partial_rotary_factor"] != 1 &&
        j["partial_rotary_factor"] != 1.0)
      fail(concat("\"partial_rotary_factor\" is ", j["partial_rotary_factor"].dump(), "; the reference LLaMA rotates whole heads"));
    for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping"})
      if (j.contains(key) && !j[key].is_null()) fail(concat("\"", key, "\" is set; the reference LLaMA does not soft-cap logits"));
    for (const char* key : {"use_qk_norm", "qk_layernorm"})
      if (flag(key)) fail(concat("\"", key, "\" is true; the reference LLaMA has no norms on q and k"));
    return c;
  }

  /// rope_scaling: null, {"rope_type": "default"} or LLaMA-3.1's {"rope_type": "llama3", ...}
  /// (older files say "type"); any other kind is refused, naming it.
  static std::optional<Llama3RopeScaling> read_rope_scaling(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    const auto it = j.find("rope_scaling");
    if (it == j.end() || it->is_null()) return std::nullopt;
    const auto& r = *it;
    auto fail = [&](const std::string& what) { throw milora::format_error(concat(where, ": rope_scaling ", what)); };
    if (!r.is_object()) fail(concat("must be an object or null, got ", r.dump()));
    const auto type_it = r.contains("rope_type") ? r.find("rope_type") : r.find("type");
    if (type_it == r.end() || !type_it->is_string()) fail("has no \"rope_type\"");
    const std::string type = type_it->get<std::string>();
    if (type == "default") return std::nullopt;
    if (type != "llama3")
      fail(concat("has rope_type \"", type, "\"; only \"llama3\" (LLaMA-3.1) and \"default\" are supported"));
    Llama3RopeScaling s;
    auto number = [&](const char* key, double& field) {
      if (!r.contains(key) || !r[key].is_number() || !(r[key].get<double>() > 0))
        fail(concat("\"", key, "\" must be a positive number, got ", r.contains(key) ? r[key].dump() : std::string("nothing")));
      field = r[key].get<double>();
    };
    number("factor", s.factor);
    number("low_freq_factor", s.low_freq_factor);
    number("high_freq_factor", s.high_freq_factor);
    if (!(s.high_freq_factor > s.low_freq_factor))
      fail(concat("high_freq_factor ", s.high_freq_factor, " must exceed low_freq_factor ", s.low_freq_factor));
    const auto& o = r.value("original_max_position_embeddings", nlohmann::json());
    if (!o.is_number_integer() || o.get<long long>() <= 0)
      fail(concat("\"original_max_position_embeddings\" must be a positive integer, got ", o.dump()));
    s.original_max_position_embeddings = o.get<Index>();
    return s;
  }

  /// RoPE's inverse frequency of pair i of a head, theta^(-2i/d), with rope_scaling applied.
  double rope_inv_freq(Index i) const {
    const double inv_freq = 1.0 / std::pow(rope_theta, double(2 * i) / double(head_dim));
    if (!rope_scaling) return inv_freq;
    const auto& s = *rope_scaling;
    const double old_len = double(s.original_max_position_embeddings);
    const double wavelen = 2 * std::numbers::pi / inv_freq;
    if (wavelen < old_len / s.high_freq_factor) return inv_freq;             // high frequencies: kept
    if (wavelen > old_len / s.low_freq_factor) return inv_freq / s.factor;  // low ones: interpolated
    const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return (1 - smooth) * inv_freq / s.factor + smooth * inv_freq;
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
      // each projection's weight, then its bias (1 x out) when it has one
      const std::array<std::pair<Index, Index>, 7> shapes = {
          {{q, h}, {kv, h}, {kv, h}, {h, q}, {intermediate_size, h}, {intermediate_size, h}, {h, intermediate_size}}};
      w.push_back({p + "input_layernorm.weight", 1, h});
      for (std::size_t k = 0; k < 7; ++k) {
        if (k == 4) w.push_back({p + "post_attention_layernorm.weight", 1, h});
        const std::string module = p + std::string(kProjections[k]);
        w.push_back({module + ".weight", shapes[k].first, shapes[k].second});
        if (bias[k]) w.push_back({module + ".bias", 1, shapes[k].first});
      }
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

/// config.json for `c`, with transformers' names and its architecture (what from_json reads back).
inline nlohmann::json config_json(const LlamaConfig& c) {
  const char* architecture = c.model_type == "qwen2" ? "Qwen2ForCausalLM" : c.model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM";
  nlohmann::json j = {{"architectures", {architecture}}, {"model_type", c.model_type}, {"hidden_act", "silu"},
                      {"vocab_size", c.vocab_size}, {"hidden_size", c.hidden_size}, {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
                      {"max_position_embeddings", c.max_position_embeddings}, {"rms_norm_eps", c.rms_norm_eps},
                      {"rope_theta", c.rope_theta}, {"tie_word_embeddings", c.tie_word_embeddings}, {"torch_dtype", "float32"}};
  if (c.rope_scaling)
    j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", c.rope_scaling->factor}, {"low_freq_factor", c.rope_scaling->low_freq_factor},
                         {"high_freq_factor", c.rope_scaling->high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling->original_max_position_embeddings}};
  if (c.model_type == "llama") {
    j["attention_bias"] = c.bias[0];
    j["mlp_bias"] = c.bias[4];
  }
  if (c.model_type == "mistral") j["sliding_window"] = c.sliding_window ? nlohmann::json(*c.sliding_window) : nlohmann::json();
  if (c.model_type == "qwen2") {
    j["use_sliding_window"] = c.sliding_window.has_value();
    if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  }
  return j;
}

}  // namespace llama
