// PEFT adapter folders: adapter_config.json + adapter_model.safetensors, as PEFT's
// save_pretrained writes them and PeftModel.from_pretrained reads them, unchanged.
//
// Keys: "base_model.model.<module>.lora_A.weight" (r x in) and "...lora_B.weight" (out x r), where
// <module> is the transformers module path ("model.layers.0.self_attn.q_proj"). The adapter name
// ("default") is not in the keys; PEFT inserts it on load.
//
// Config: PEFT's field names and JSON types. init_lora_weights is always written as true, also for
// PiSSA and MiLoRA adapters: PEFT re-runs a string-valued init ("pissa") when it loads an adapter,
// which would subtract the principal part from the residual model a second time (PEFT's own
// save_pretrained sets it to True for the same reason). milora records what it did (method, solver,
// seed) in the safetensors "__metadata__" instead, next to PEFT's {"format": "pt"}; fields PEFT
// does not know would break older PEFT versions, whose LoraConfig(**json) rejects unknown keys.
//
// to_plain_lora() is PEFT's path_initial_model_for_weight_conversion: an adapter trained on a
// residual model W' = W - s*B0*A0 becomes a rank-2r LoRA on the original W,
//   A* = [A; -A0],  B* = [B, B0],  r* = 2r,  alpha* = 2 alpha (alpha*sqrt(2) with rsLoRA),
// so s* = s and W + s*(B A - B0 A0) = W' + s*B*A: the trained layer, applied to the unmodified base.
#pragma once

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/core/adapter.hpp"
#include "milora/core/config.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace milora::io {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftKeyPrefix = "base_model.model.";

/// LoraConfig as PEFT serialises it. Fields milora does not model are kept in `extra` and written
/// back, so load -> save preserves a PEFT config.
struct PeftLoraConfig {
  Index r = 8;
  double lora_alpha = 8;
  bool use_rslora = false;
  std::vector<std::string> target_modules;
  std::string base_model_name_or_path;
  std::string task_type = "CAUSAL_LM";
  double lora_dropout = 0.0;
  nlohmann::json extra = nlohmann::json::object();

  /// s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (PEFT's LoraLayer.update_layer).
  double scale() const { return use_rslora ? lora_alpha / std::sqrt(double(r)) : lora_alpha / double(r); }
  AdapterConfig adapter_config() const { return {.rank = r, .alpha = lora_alpha, .use_rslora = use_rslora}; }

  nlohmann::json to_json() const {
    nlohmann::json j = extra;
    j["peft_type"] = "LORA";
    j["r"] = r;
    j["lora_alpha"] = lora_alpha;
    j["use_rslora"] = use_rslora;
    j["target_modules"] = target_modules;
    j["base_model_name_or_path"] = base_model_name_or_path;
    j["task_type"] = task_type;
    j["lora_dropout"] = lora_dropout;
    j["init_lora_weights"] = true;  // see the header comment
    if (!j.contains("bias")) j["bias"] = "none";
    for (const char* key : {"fan_in_fan_out", "use_dora"}) if (!j.contains(key)) j[key] = false;
    if (!j.contains("inference_mode")) j["inference_mode"] = true;
    for (const char* key : {"modules_to_save", "layers_to_transform", "layers_pattern", "revision"})
      if (!j.contains(key)) j[key] = nullptr;
    for (const char* key : {"rank_pattern", "alpha_pattern"}) if (!j.contains(key)) j[key] = nlohmann::json::object();
    return j;
  }

  /// Reads a PEFT LoRA config; refuses what milora cannot apply as W + s*B*A per module.
  static PeftLoraConfig from_json(const nlohmann::json& j, const std::string& where) {
    try {
      return from_json_unchecked(j, where);
    } catch (const nlohmann::json::exception& e) {  // a field of the wrong JSON type
      throw format_error(milora::detail::concat(where, ": ", e.what()));
    }
  }

 private:
  static PeftLoraConfig from_json_unchecked(const nlohmann::json& j, const std::string& where) {
    using milora::detail::concat;
    auto fail = [&](const std::string& what) -> void { throw format_error(concat(where, ": ", what)); };
    if (!j.is_object()) fail("not a JSON object");
    if (j.contains("peft_type") && j["peft_type"] != "LORA")
      fail(concat("peft_type is ", j["peft_type"].dump(), "; milora reads LORA adapters"));
    PeftLoraConfig c;
    if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<long long>() <= 0) fail("\"r\" must be a positive integer");
    c.r = j["r"].get<Index>();
    if (!j.contains("lora_alpha") || !j["lora_alpha"].is_number() || !(j["lora_alpha"].get<double>() > 0))
      fail("\"lora_alpha\" must be a positive number");
    c.lora_alpha = j["lora_alpha"].get<double>();
    if (j.contains("use_rslora")) {
      if (!j["use_rslora"].is_boolean()) fail("\"use_rslora\" must be true or false");
      c.use_rslora = j["use_rslora"].get<bool>();
    }
    if (j.contains("target_modules") && !j["target_modules"].is_null()) {
      const auto& t = j["target_modules"];
      if (t.is_string()) {
        c.target_modules = {t.get<std::string>()};  // a regular expression in PEFT; kept as is
      } else if (t.is_array()) {
        for (const auto& m : t) {
          if (!m.is_string()) fail("\"target_modules\" must hold strings");
          c.target_modules.push_back(m.get<std::string>());
        }
      } else {
        fail("\"target_modules\" must be a list of names or a string");
      }
    }
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
      c.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();
    if (j.contains("task_type") && j["task_type"].is_string()) c.task_type = j["task_type"].get<std::string>();
    if (j.contains("lora_dropout") && j["lora_dropout"].is_number()) c.lora_dropout = j["lora_dropout"].get<double>();
    // What would make the adapter compute something other than W x + s B A x per module:
    if (j.contains("use_dora") && j["use_dora"] == true) fail("use_dora is true: DoRA adapters are not LoRA deltas");
    if (j.contains("fan_in_fan_out") && j["fan_in_fan_out"] == true) fail("fan_in_fan_out is true: weights stored in x out are not supported");
    if (j.contains("bias") && j["bias"] != "none") fail(concat("bias is ", j["bias"].dump(), ": adapters that train biases are not supported"));
    // Per-module ranks or alphas would give modules scales other than the one scale() computes.
    if (j.contains("rank_pattern") && !j["rank_pattern"].is_null() && !j["rank_pattern"].empty())
      fail("rank_pattern is not empty: per-module ranks are not supported");
    if (j.contains("alpha_pattern") && !j["alpha_pattern"].is_null() && !j["alpha_pattern"].empty())
      fail("alpha_pattern is not empty: per-module alphas are not supported");
    c.extra = j;
    for (const char* key : {"peft_type", "r", "lora_alpha", "use_rslora", "target_modules", "base_model_name_or_path",
                            "task_type", "lora_dropout", "init_lora_weights"})
      c.extra.erase(key);
    return c;
  }
};

/// The trained factors of one adapted module.
template <class T>
struct LoraFactors {
  HostMatrix<T> A;  // r x in
  HostMatrix<T> B;  // out x r
};

/// A PEFT LoRA adapter in host memory: config, factors per module path, file metadata.
template <class T>
struct PeftAdapter {
  PeftLoraConfig config;
  std::map<std::string, LoraFactors<T>> modules;  // "model.layers.0.self_attn.q_proj" -> A, B
  std::map<std::string, std::string> metadata;    // __metadata__ of adapter_model.safetensors
};

/// "base_model.model.<module>.lora_A.weight" / "...lora_B.weight".
inline std::string peft_key(const std::string& module, char factor) {
  return std::string(kPeftKeyPrefix) + module + (factor == 'A' ? ".lora_A.weight" : ".lora_B.weight");
}

/// The module path of a weight name ("model.layers.0.mlp.up_proj.weight" -> "model.layers.0.mlp.up_proj").
inline std::string module_of_weight(const std::string& weight_name) {
  constexpr std::string_view suffix = ".weight";
  if (weight_name.size() <= suffix.size() || weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) != 0)
    throw value_error(milora::detail::concat("'", weight_name, "' is not a weight name (no .weight suffix)"));
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

/// Host copies of an adapter's A and B (whatever its weights' storage: A and B are in the scalar).
template <Backend BE, class Init, class Weights>
LoraFactors<scalar_t<BE>> factors_of(const Adapter<BE, Init, Weights>& adapter) {
  return {to_host_matrix<BE>(adapter.A()), to_host_matrix<BE>(adapter.B())};
}

/// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors (F32 factors, as PEFT
/// saves adapters trained in float32). `dir` is created if needed.
template <class T>
void save_peft_adapter(const PeftAdapter<T>& adapter, const std::filesystem::path& dir, DType dtype = DType::F32) {
  using milora::detail::concat;
  for (const auto& [module, f] : adapter.modules)
    if (f.A.rows != adapter.config.r || f.B.cols != adapter.config.r)
      throw shape_error(concat("save_peft_adapter: module '", module, "' has A ", milora::detail::shape_str(f.A.rows, f.A.cols),
                               " and B ", milora::detail::shape_str(f.B.rows, f.B.cols), " but r = ", adapter.config.r));
  std::filesystem::create_directories(dir);
  SafetensorsWriter writer;
  auto metadata = adapter.metadata;
  metadata.emplace("format", "pt");  // what PEFT / transformers write and check
  writer.set_metadata(metadata);
  for (const auto& [module, f] : adapter.modules) {
    writer.add(peft_key(module, 'A'), f.A, dtype);
    writer.add(peft_key(module, 'B'), f.B, dtype);
  }
  writer.write(dir / kAdapterWeightsFile);
  write_json_file(dir / kAdapterConfigFile, adapter.config.to_json());
}

/// Reads a PEFT LoRA adapter folder. Every lora_A needs its lora_B with matching rank; keys that
/// are not LoRA factors of this form, and factors holding NaN or Inf, are refused with their name.
template <class T>
PeftAdapter<T> load_peft_adapter(const std::filesystem::path& dir) {
  using milora::detail::concat;
  PeftAdapter<T> a;
  a.config = PeftLoraConfig::from_json(read_json_file(dir / kAdapterConfigFile), concat("'", (dir / kAdapterConfigFile).string(), "'"));
  const SafetensorsFile file(dir / kAdapterWeightsFile);
  const std::string where = concat("'", file.path().string(), "'");
  a.metadata = file.metadata();
  const std::string prefix = kPeftKeyPrefix;
  for (const auto& t : file.tensors()) {
    const std::string& key = t.name;
    char factor = 0;
    for (const char f : {'A', 'B'}) {
      const std::string suffix = concat(".lora_", f, ".weight");
      if (key.size() > prefix.size() + suffix.size() && key.compare(0, prefix.size(), prefix) == 0 &&
          key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
        factor = f;
    }
    if (!factor) throw format_error(concat(where, ": key '", key, "' is not base_model.model.<module>.lora_{A,B}.weight"));
    if (t.shape.size() != 2) throw format_error(concat(where, ": '", key, "' is not a matrix"));
    const std::string module = key.substr(prefix.size(), key.size() - prefix.size() - 14);  // 14 = ".lora_A.weight"
    auto& f = a.modules[module];
    auto& m = (factor == 'A' ? f.A : f.B);
    m = file.template load<T>(key);
    require_finite(m, concat(where, ": '", key, "'"));
  }
  for (const auto& [module, f] : a.modules) {
    if (f.A.data.empty() || f.B.data.empty())
      throw format_error(concat(where, ": module '", module, "' has lora_", f.A.data.empty() ? 'B' : 'A', " but no lora_",
                                f.A.data.empty() ? 'A' : 'B'));
    if (f.A.rows != f.B.cols)
      throw format_error(concat(where, ": module '", module, "' has lora_A ", milora::detail::shape_str(f.A.rows, f.A.cols),
                                " and lora_B ", milora::detail::shape_str(f.B.rows, f.B.cols), ": ranks differ"));
    // rank_pattern may give a module its own rank; the scale below assumes the global one.
    if (f.A.rows != a.config.r)
      throw format_error(concat(where, ": module '", module, "' has rank ", f.A.rows, " but adapter_config.json says r = ",
                                a.config.r, " (rank_pattern is not supported)"));
  }
  return a;
}

/// W <- W + s*B*A in backend B's arithmetic (what merging an adapter into its weight is), for the
/// weight `what` names: refuses a merged value that is not finite (an overflow names the weight).
template <Backend B>
void merge_into(HostMatrix<scalar_t<B>>& w, const LoraFactors<scalar_t<B>>& f, double s, const std::string& what) {
  auto W = to_backend<B>(w);
  B::gemm(scalar_t<B>(s), to_backend<B>(f.B), Trans::no, to_backend<B>(f.A), Trans::no, 1, W);
  w.data = B::to_host(W);
  require_finite(w, milora::detail::concat(what, " merged"));
}

/// PEFT's conversion of an adapter trained from a residual initialisation (PiSSA, MiLoRA) into a
/// plain LoRA of rank 2r for the original weights (see the header comment). `initial` is the
/// adapter as initialised (A0, B0), `trained` the same adapter after training.
template <class T>
PeftAdapter<T> to_plain_lora(const PeftAdapter<T>& initial, const PeftAdapter<T>& trained) {
  using milora::detail::concat;
  if (initial.config.r != trained.config.r || initial.config.lora_alpha != trained.config.lora_alpha ||
      initial.config.use_rslora != trained.config.use_rslora)
    throw value_error(concat("to_plain_lora: initial (r = ", initial.config.r, ", alpha = ", initial.config.lora_alpha,
                             ") and trained (r = ", trained.config.r, ", alpha = ", trained.config.lora_alpha,
                             ") adapters have different hyperparameters"));
  for (const auto& [module, f] : initial.modules)
    if (!trained.modules.count(module)) throw value_error(concat("to_plain_lora: module '", module, "' is only in the initial adapter"));
  PeftAdapter<T> out;
  out.config = trained.config;
  out.config.r = 2 * trained.config.r;
  out.config.lora_alpha = trained.config.use_rslora ? trained.config.lora_alpha * std::sqrt(2.0) : 2 * trained.config.lora_alpha;
  out.metadata = trained.metadata;
  out.metadata["milora.converted_from"] = "residual initialisation (A* = [A; -A0], B* = [B, B0])";
  for (const auto& [module, f] : trained.modules) {
    auto it = initial.modules.find(module);
    if (it == initial.modules.end()) throw value_error(concat("to_plain_lora: module '", module, "' is only in the trained adapter"));
    const auto& f0 = it->second;
    if (f0.A.rows != f.A.rows || f0.A.cols != f.A.cols || f0.B.rows != f.B.rows || f0.B.cols != f.B.cols)
      throw shape_error(concat("to_plain_lora: module '", module, "' has A ", milora::detail::shape_str(f.A.rows, f.A.cols),
                               " trained but ", milora::detail::shape_str(f0.A.rows, f0.A.cols), " initially"));
    const Index r = f.A.rows, in = f.A.cols, o = f.B.rows;
    LoraFactors<T> g{HostMatrix<T>(2 * r, in), HostMatrix<T>(o, 2 * r)};
    for (Index i = 0; i < r; ++i)
      for (Index j = 0; j < in; ++j) {
        g.A(i, j) = f.A(i, j);
        g.A(r + i, j) = -f0.A(i, j);
      }
    for (Index i = 0; i < o; ++i)
      for (Index j = 0; j < r; ++j) {
        g.B(i, j) = f.B(i, j);
        g.B(i, r + j) = f0.B(i, j);
      }
    out.modules.emplace(module, std::move(g));
  }
  return out;
}

}  // namespace milora::io
