// Between a Llama's adapters and PEFT adapter folders (milora/io/peft.hpp): export the factors,
// load them back, and merge a plain LoRA into the base weights (evaluation of a trained adapter on
// the original model, as PeftModel.from_pretrained(...).merge_and_unload() does).
#pragma once

#include <set>
#include <string>

#include "milora/io/peft.hpp"
#include "model.hpp"

namespace llama {

/// The PEFT config that describes `model`'s adapters.
template <class Model>
milora::io::PeftLoraConfig peft_config(const Model& model, const std::string& base_model) {
  milora::io::PeftLoraConfig c;
  c.r = model.adapter_config().rank;
  c.lora_alpha = model.adapter_config().alpha;
  c.use_rslora = model.adapter_config().use_rslora;
  c.target_modules = model.targets();
  c.base_model_name_or_path = base_model;
  return c;
}

/// Host copies of every adapter's A and B, keyed by module path, with the PEFT config.
template <class Model>
milora::io::PeftAdapter<typename Model::scalar> export_adapters(Model& model, const std::string& base_model) {
  milora::io::PeftAdapter<typename Model::scalar> out;
  out.config = peft_config(model, base_model);
  for (auto* p : model.adapted()) out.modules.emplace(p->module, milora::io::factors_of(*p->adapter));
  return out;
}

/// Sets every adapter's A and B from `adapter`, which must hold exactly the model's adapted modules
/// with their shapes, and the same r / alpha / rsLoRA. Checks everything before writing anything.
template <class Model>
void import_adapters(Model& model, const milora::io::PeftAdapter<typename Model::scalar>& adapter, const std::string& where) {
  using milora::detail::concat;
  using BE = typename Model::backend;
  const auto& want = model.adapter_config();
  if (adapter.config.r != want.rank || adapter.config.lora_alpha != want.alpha || adapter.config.use_rslora != want.use_rslora)
    throw milora::value_error(concat(where, ": r = ", adapter.config.r, ", lora_alpha = ", adapter.config.lora_alpha,
                                     " but the model's adapters have r = ", want.rank, ", alpha = ", want.alpha));
  std::set<std::string> seen;
  for (auto* p : model.adapted()) {
    auto it = adapter.modules.find(p->module);
    if (it == adapter.modules.end()) throw milora::format_error(concat(where, ": no factors for '", p->module, "'"));
    const auto& f = it->second;
    const auto& a = *p->adapter;
    if (f.A.rows != a.rank() || f.A.cols != a.in_features() || f.B.rows != a.out_features() || f.B.cols != a.rank())
      throw milora::format_error(concat(where, ": '", p->module, "' has A ", f.A.rows, "x", f.A.cols, " and B ", f.B.rows, "x",
                                        f.B.cols, "; the model needs ", a.rank(), "x", a.in_features(), " and ",
                                        a.out_features(), "x", a.rank()));
    seen.insert(p->module);
  }
  for (const auto& [module, f] : adapter.modules)
    if (!seen.count(module)) throw milora::format_error(concat(where, ": '", module, "' is not an adapted module of the model"));
  for (auto* p : model.adapted()) {
    const auto& f = adapter.modules.at(p->module);
    // copy into the existing storage: an optimizer holds views of A and B (a move would free them)
    BE::copy(milora::io::to_backend<BE>(f.A), p->adapter->A());
    BE::copy(milora::io::to_backend<BE>(f.B), p->adapter->B());
  }
}

/// W += s * B * A for every module of a plain (non-residual) LoRA adapter: the model then computes
/// what PEFT's model with the adapter computes. The model must have no milora adapters of its own.
template <class Model>
void merge_peft_adapter(Model& model, const milora::io::PeftAdapter<typename Model::scalar>& adapter, const std::string& where) {
  using milora::detail::concat;
  using BE = typename Model::backend;
  if (model.num_adapters() != 0) throw milora::state_error("merge_peft_adapter: the model has adapters of its own");
  std::map<std::string, typename Model::Projection*> by_module;
  for (Index l = 0; l < model.num_layers(); ++l)
    for (auto* p : model.block(l).projections()) by_module[p->module] = p;
  for (const auto& [module, f] : adapter.modules) {  // check all first: a half-merged model is useless
    auto it = by_module.find(module);
    if (it == by_module.end()) throw milora::format_error(concat(where, ": '", module, "' is not a projection of the model"));
    const auto& lin = it->second->linear;
    if (f.B.rows != lin.out_features() || f.A.cols != lin.in_features())
      throw milora::format_error(concat(where, ": '", module, "' is ", f.B.rows, "x", f.A.cols, " but the weight is ",
                                        lin.out_features(), "x", lin.in_features()));
  }
  const auto s = typename Model::scalar(adapter.config.scale());
  for (const auto& [module, f] : adapter.modules)  // W = round(W + s B A) for bf16 weights
    Model::weight_storage::template add_product<BE>(s, milora::io::to_backend<BE>(f.B), milora::io::to_backend<BE>(f.A),
                                                    by_module.at(module)->linear.weight());
}

}  // namespace llama
