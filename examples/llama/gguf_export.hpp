// The reference LLaMA's checkpoints as llama.cpp's GGUF files, and back:
//   * write_model_gguf: a model folder (optionally with a LoRA merged in) as a GGUF llama.cpp runs;
//   * write_adapter_gguf: a plain LoRA (PEFT) as a GGUF LoRA adapter llama.cpp applies with --lora;
//   * read_adapter_gguf / load_gguf_weight: the same files read back with transformers' names.
//
// llama.cpp's conventions (convert_hf_to_gguf.py / convert_lora_to_gguf.py and its loader):
//   * names: model.embed_tokens -> token_embd, model.norm -> output_norm, lm_head -> output,
//     model.layers.N.{input_layernorm, post_attention_layernorm} -> blk.N.{attn_norm, ffn_norm},
//     self_attn.{q,k,v,o}_proj -> attn_{q,k,v,output}, mlp.{gate,up,down}_proj -> ffn_{gate,up,down};
//   * dimensions fastest first: a row-major out x in weight is ne = {in, out};
//   * architecture "llama" for LLaMA and Mistral (RoPE on interleaved pairs: the rows of q_proj and
//     k_proj, weight and bias, are permuted from transformers' rotate-half order, per head: GGUF row
//     2i + j of a head = transformers row j * head_dim / 2 + i), "qwen2" for Qwen2 (rotate-half,
//     no permutation);
//   * LLaMA-3.1's rope scaling as the rope_freqs.weight tensor of per-frequency divisors;
//   * Mistral's sliding window: llama.cpp's "llama" attends to the whole context, which is the
//     window's result for contexts up to the window, so the context length written is the window;
//   * a LoRA: blk.N.attn_q.weight.lora_a = A (ne {in, r}), .lora_b = B (ne {r, out}), rows of B
//     permuted as the weight's are; adapter.lora.alpha such that alpha / r is the adapter's scale
//     (llama.cpp's), so rsLoRA adapters keep theirs.
//   * 1-D tensors (norms, biases, rope factors) stay F32 in every file type; Q8_0 quantises the
//     2-D weights whose rows are a multiple of 32 and writes the others F16, as the converter does.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <utility>

#include "config.hpp"
#include "gguf_tokenizer.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/io/gguf.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/peft.hpp"

namespace llama {

/// general.file_type (llama.cpp's llama_ftype) and the ggml type of the 2-D weights.
enum class GgufFileType : std::uint32_t { F32 = 0, F16 = 1, Q8_0 = 7, BF16 = 32 };

inline GgufFileType parse_gguf_file_type(const std::string& s) {
  if (s == "f32") return GgufFileType::F32;
  if (s == "f16") return GgufFileType::F16;
  if (s == "bf16") return GgufFileType::BF16;
  if (s == "q8_0") return GgufFileType::Q8_0;
  throw milora::value_error("GGUF type '" + s + "': milora writes f32, f16, bf16 and q8_0 (other types: llama-quantize)");
}

inline std::uint32_t ggml_type_of(GgufFileType t) {
  switch (t) {
    case GgufFileType::F32: return milora::io::kGgmlF32;
    case GgufFileType::F16: return milora::io::kGgmlF16;
    case GgufFileType::BF16: return milora::io::kGgmlBF16;
    case GgufFileType::Q8_0: return milora::io::kGgmlQ8_0;
  }
  return milora::io::kGgmlF32;
}

inline std::string gguf_architecture(const LlamaConfig& c) { return c.model_type == "qwen2" ? "qwen2" : "llama"; }

namespace gguf_detail {

// The names of the weights outside the layers, and of a layer's parts: transformers', llama.cpp's.
inline constexpr std::pair<std::string_view, std::string_view> kModelNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"}, {"model.norm.weight", "output_norm.weight"}, {"lm_head.weight", "output.weight"}};
inline constexpr std::pair<std::string_view, std::string_view> kLayerParts[] = {
    {"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"}, {"self_attn.q_proj", "attn_q"},
    {"self_attn.k_proj", "attn_k"},   {"self_attn.v_proj", "attn_v"},           {"self_attn.o_proj", "attn_output"},
    {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},                {"mlp.down_proj", "ffn_down"}};

// One direction of the map: to_gguf, transformers' name -> llama.cpp's; else the reverse.
inline std::optional<std::string> rename(const std::string& name, bool to_gguf) {
  const auto from = [&](const auto& pair) { return to_gguf ? pair.first : pair.second; };
  const auto to = [&](const auto& pair) { return std::string(to_gguf ? pair.second : pair.first); };
  for (const auto& pair : kModelNames)
    if (name == from(pair)) return to(pair);
  static const std::regex hf(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))"), gguf(R"(blk\.(\d+)\.([a-z_]+)\.(weight|bias))");
  std::smatch m;
  if (!std::regex_match(name, m, to_gguf ? hf : gguf)) return std::nullopt;
  for (const auto& pair : kLayerParts)
    if (m[2].str() == from(pair))
      return (to_gguf ? "blk." : "model.layers.") + m[1].str() + "." + to(pair) + "." + m[3].str();
  return std::nullopt;
}

}  // namespace gguf_detail

/// llama.cpp's name of a transformers weight (or bias); throws value_error for one it has none for.
inline std::string gguf_tensor_name(const std::string& hf) {
  if (auto g = gguf_detail::rename(hf, true)) return *g;
  throw milora::value_error("'" + hf + "' has no llama.cpp name (GGUF export covers the LLaMA / Qwen2 weights and the seven projections)");
}

/// The transformers name of a llama.cpp tensor name (the inverse of gguf_tensor_name).
inline std::string hf_tensor_name(const std::string& g) {
  if (auto hf = gguf_detail::rename(g, false)) return *hf;
  throw milora::value_error("GGUF tensor '" + g + "' is not one of the LLaMA / Qwen2 weights milora reads");
}

/// The heads whose rows llama.cpp's "llama" architecture wants permuted (q_proj: attention heads,
/// k_proj: key/value heads), 0 for every other tensor and for Qwen2.
inline Index gguf_permuted_heads(const LlamaConfig& c, const std::string& hf) {
  if (gguf_architecture(c) != "llama") return 0;
  if (hf.find(".self_attn.q_proj.") != std::string::npos) return c.num_attention_heads;
  if (hf.find(".self_attn.k_proj.") != std::string::npos) return c.num_key_value_heads;
  return 0;
}

/// Rows (or, for a 1 x n bias, entries) from transformers' rotate-half order to GGUF's interleaved
/// pairs per head (`to_gguf`), or back.
template <class T>
milora::io::HostMatrix<T> permute_rope_rows(const milora::io::HostMatrix<T>& m, Index heads, bool to_gguf) {
  if (heads == 0) return m;
  const bool vector = m.rows == 1;
  const Index n = vector ? m.cols : m.rows, width = vector ? 1 : m.cols;
  if (n % heads != 0 || (n / heads) % 2 != 0)
    throw milora::shape_error(milora::detail::concat("permute_rope_rows: ", n, " rows do not split into ", heads, " heads of even size"));
  const Index hd = n / heads;
  milora::io::HostMatrix<T> out(m.rows, m.cols);
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < hd / 2; ++i)
      for (Index j = 0; j < 2; ++j) {
        const Index g = h * hd + 2 * i + j, t = h * hd + j * hd / 2 + i;
        const Index from = to_gguf ? t : g, to = to_gguf ? g : t;
        std::copy_n(m.data.begin() + from * width, width, out.data.begin() + to * width);
      }
  return out;
}

/// general.* and <arch>.* keys for a model (or, `adapter`, for a LoRA of it).
inline void add_gguf_architecture(milora::io::GgufWriter& w, const LlamaConfig& c, const std::string& name, bool adapter) {
  const std::string arch = gguf_architecture(c);
  w.set_string("general.architecture", arch);
  w.set_string("general.type", adapter ? "adapter" : "model");
  w.set_string("general.name", name);
  if (adapter) return;
  const Index context = c.sliding_window ? std::min(*c.sliding_window, c.max_position_embeddings) : c.max_position_embeddings;
  w.set_u32(arch + ".vocab_size", std::uint32_t(c.vocab_size));
  w.set_u32(arch + ".context_length", std::uint32_t(context));
  w.set_u32(arch + ".embedding_length", std::uint32_t(c.hidden_size));
  w.set_u32(arch + ".feed_forward_length", std::uint32_t(c.intermediate_size));
  w.set_u32(arch + ".block_count", std::uint32_t(c.num_hidden_layers));
  w.set_u32(arch + ".attention.head_count", std::uint32_t(c.num_attention_heads));
  w.set_u32(arch + ".attention.head_count_kv", std::uint32_t(c.num_key_value_heads));
  w.set_u32(arch + ".attention.key_length", std::uint32_t(c.head_dim));
  w.set_u32(arch + ".attention.value_length", std::uint32_t(c.head_dim));
  w.set_f32(arch + ".attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  w.set_f32(arch + ".rope.freq_base", float(c.rope_theta));
  w.set_u32(arch + ".rope.dimension_count", std::uint32_t(c.head_dim));
}

/// LLaMA-3.1's rope scaling as llama.cpp's per-frequency divisors (rope_freqs.weight): 1 for the
/// short wavelengths, `factor` for the long ones, the smooth interpolation between (transformers'
/// _compute_llama3_parameters, written as what the frequency is divided by).
inline milora::io::HostMatrix<float> llama3_rope_divisors(const LlamaConfig& c) {
  const auto& s = *c.rope_scaling;
  milora::io::HostMatrix<float> f(1, c.head_dim / 2);
  const double low_wavelen = double(s.original_max_position_embeddings) / s.low_freq_factor;
  const double high_wavelen = double(s.original_max_position_embeddings) / s.high_freq_factor;
  for (Index i = 0; i < c.head_dim / 2; ++i) {
    const double freq = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
    const double wavelen = 2 * M_PI / freq;
    double divisor = 1;
    if (wavelen > low_wavelen) {
      divisor = s.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (double(s.original_max_position_embeddings) / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      divisor = 1 / ((1 - smooth) / s.factor + smooth);
    }
    f.data[std::size_t(i)] = float(divisor);
  }
  return f;
}

namespace gguf_detail {

// The modules of a LoRA as llama.cpp names them, checked against the config's shapes.
inline void check_adapter_fits(const milora::io::PeftAdapter<float>& a, const LlamaConfig& c, const std::string& where) {
  using milora::detail::concat;
  std::map<std::string, LlamaConfig::Weight> shapes;
  for (const auto& w : c.weights()) shapes.emplace(w.name, w);
  for (const auto& [module, f] : a.modules) {
    const std::string weight = module + ".weight";
    auto it = shapes.find(weight);
    if (it == shapes.end() || it->second.rows == 1)
      throw milora::format_error(concat(where, ": module '", module, "' is not a projection of the model"));
    gguf_tensor_name(weight);  // the embeddings and the head have no LoRA name in llama.cpp's loader
    if (module.find(".layers.") == std::string::npos)
      throw milora::format_error(concat(where, ": module '", module, "': llama.cpp's LoRA loader applies adapters to the layers' projections"));
    if (f.B.rows != it->second.rows || f.A.cols != it->second.cols)
      throw milora::shape_error(concat(where, ": module '", module, "' has B ", f.B.rows, "x", f.B.cols, " and A ", f.A.rows, "x", f.A.cols,
                                       " but the model's weight is ", it->second.rows, "x", it->second.cols));
  }
}

}  // namespace gguf_detail

/// Writes `model` (config `c`), with `adapter` merged into it when given (W + s B A, in float), as
/// a GGUF llama.cpp loads, its 2-D weights in `type`. The tokenizer of the model folder goes in
/// (a model without one is refused unless `require_tokenizer` is false: llama.cpp cannot run it).
inline void write_model_gguf(const milora::io::HFModel& model, const LlamaConfig& c, const milora::io::PeftAdapter<float>* adapter,
                             const std::filesystem::path& out, GgufFileType type, bool require_tokenizer = true) {
  namespace io = milora::io;
  using milora::detail::concat;
  c.check(model);
  if (adapter) gguf_detail::check_adapter_fits(*adapter, c, "the adapter");
  io::GgufWriter w;
  add_gguf_architecture(w, c, model.dir().filename().string(), false);
  w.set_u32("general.file_type", std::uint32_t(type));
  if (type == GgufFileType::Q8_0) w.set_u32("general.quantization_version", 2);
  if (has_gguf_tokenizer(model.dir()))
    add_gguf_tokenizer(w, model.dir(), c.vocab_size);
  else if (require_tokenizer)
    throw milora::format_error(concat("model '", model.dir().string(), "' has no tokenizer.json or tokenizer.model, which llama.cpp needs in the GGUF"));
  if (c.rope_scaling) w.add_matrix("rope_freqs.weight", llama3_rope_divisors(c), io::kGgmlF32, true);
  const double s = adapter ? adapter->config.scale() : 0.0;
  for (const auto& weight : c.weights()) {
    const bool vector = weight.rows == 1;
    std::uint32_t t = vector ? io::kGgmlF32 : ggml_type_of(type);
    if (t == io::kGgmlQ8_0 && weight.cols % 32 != 0) t = io::kGgmlF16;
    std::vector<std::uint64_t> ne = vector ? std::vector<std::uint64_t>{std::uint64_t(weight.cols)}
                                           : std::vector<std::uint64_t>{std::uint64_t(weight.cols), std::uint64_t(weight.rows)};
    const std::string name = weight.name;
    w.add_tensor(gguf_tensor_name(name), t, std::move(ne), [&model, &c, adapter, s, name, t](std::span<std::byte> bytes) {
      auto m = model.load<float>(name);
      io::require_finite(m, concat("'", name, "' of ", model.dir().string()));
      if (adapter && name.ends_with(".weight"))
        if (auto it = adapter->modules.find(io::module_of_weight(name)); it != adapter->modules.end())
          io::merge_into<milora::EigenBackend<float>>(m, it->second, s, concat("'", name, "'"));
      m = permute_rope_rows(m, gguf_permuted_heads(c, name), true);
      io::GgufWriter::encode_tensor(t, m.data, bytes, name);
    });
  }
  w.write(out);
}

/// Writes a plain LoRA (`a`, PEFT's layout) for the model of config `c` as a GGUF LoRA adapter;
/// `type` F32, F16 or BF16.
inline void write_adapter_gguf(const milora::io::PeftAdapter<float>& a, const LlamaConfig& c, const std::filesystem::path& out,
                               GgufFileType type, const std::string& name) {
  namespace io = milora::io;
  if (type == GgufFileType::Q8_0) throw milora::value_error("a GGUF LoRA adapter is written as f32, f16 or bf16 (its factors are small)");
  gguf_detail::check_adapter_fits(a, c, "the adapter");
  io::GgufWriter w;
  add_gguf_architecture(w, c, name, true);
  w.set_u32("general.file_type", std::uint32_t(type));
  w.set_string("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", float(a.config.scale() * double(a.config.r)));  // llama.cpp scales by alpha / r
  const std::uint32_t t = ggml_type_of(type);
  for (const auto& [module, f] : a.modules) {
    const std::string base = gguf_tensor_name(module + ".weight");
    w.add_matrix(base + ".lora_a", f.A, t);
    w.add_matrix(base + ".lora_b", permute_rope_rows(f.B, gguf_permuted_heads(c, module + ".weight"), true), t);
  }
  w.write(out);
}

/// A GGUF LoRA adapter (llama.cpp's, as write_adapter_gguf or convert_lora_to_gguf.py write them)
/// as a PEFT adapter for the model of config `c`: transformers' module names and row order, r from
/// the factors, lora_alpha from adapter.lora.alpha (scale alpha / r).
inline milora::io::PeftAdapter<float> read_adapter_gguf(const std::filesystem::path& path, const LlamaConfig& c) {
  namespace io = milora::io;
  using milora::detail::concat;
  const io::GgufFile file(path);
  const std::string where = concat("GGUF file '", path.string(), "'");
  if (file.string("general.type") != "adapter" || file.string("adapter.type") != "lora")
    throw milora::format_error(concat(where, " is not a LoRA adapter (general.type 'adapter', adapter.type 'lora')"));
  if (file.string("general.architecture") != gguf_architecture(c))
    throw milora::format_error(concat(where, " is for architecture '", file.string("general.architecture").value_or("?"), "', the model is '",
                                      gguf_architecture(c), "'"));
  io::PeftAdapter<float> a;
  for (const auto& t : file.tensors()) {
    const bool is_a = t.name.ends_with(".lora_a"), is_b = t.name.ends_with(".lora_b");
    if (!is_a && !is_b) throw milora::format_error(concat(where, ": tensor '", t.name, "' is not a .lora_a / .lora_b factor"));
    const std::string weight = hf_tensor_name(t.name.substr(0, t.name.size() - 7));
    auto& f = a.modules[io::module_of_weight(weight)];
    auto m = file.load<float>(t.name);
    io::require_finite(m, concat(where, ": '", t.name, "'"));
    (is_a ? f.A : f.B) = is_a ? std::move(m) : permute_rope_rows(m, gguf_permuted_heads(c, weight), false);
  }
  Index r = -1;
  for (const auto& [module, f] : a.modules) {
    if (f.A.data.empty() || f.B.data.empty()) throw milora::format_error(concat(where, ": module '", module, "' lacks one of its two factors"));
    if (f.A.rows != f.B.cols || (r >= 0 && f.A.rows != r)) throw milora::format_error(concat(where, ": module '", module, "' has rank ", f.A.rows, " / ", f.B.cols, ", not one rank for all"));
    r = f.A.rows;
  }
  if (r < 0) throw milora::format_error(concat(where, " holds no LoRA factors"));
  const double alpha = file.real("adapter.lora.alpha").value_or(0.0);
  a.config.r = r;
  a.config.lora_alpha = alpha > 0 ? alpha : double(r);  // llama.cpp: no alpha means scale 1
  for (const auto& [module, f] : a.modules) a.config.target_modules.push_back(module.substr(module.rfind('.') + 1));
  std::sort(a.config.target_modules.begin(), a.config.target_modules.end());
  a.config.target_modules.erase(std::unique(a.config.target_modules.begin(), a.config.target_modules.end()), a.config.target_modules.end());
  gguf_detail::check_adapter_fits(a, c, where);
  return a;
}

/// The transformers weight `hf` of a GGUF model file for config `c`, in transformers' row order.
inline milora::io::HostMatrix<float> load_gguf_weight(const milora::io::GgufFile& file, const LlamaConfig& c, const std::string& hf) {
  auto m = file.load<float>(gguf_tensor_name(hf));
  return permute_rope_rows(m, gguf_permuted_heads(c, hf), false);
}

}  // namespace llama
