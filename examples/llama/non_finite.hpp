// Where a NaN or Inf came from, for the trainer's message when a step produced one: the first one
// in what the last forward computed from, or in the gradients, named as a person would look for it
// ("model.layers.1.mlp.up_proj.lora_B holds nan at (4, 0)").
#pragma once

#include <cmath>
#include <string>

#include "milora/core/errors.hpp"
#include "milora/io/host_matrix.hpp"

namespace llama {

/// "NAME holds VALUE at (row, col)" for the first NaN or Inf of m, or empty.
template <milora::Backend BE>
std::string non_finite_entry(milora::const_view_t<BE> m, const std::string& name) {
  const auto host = milora::io::to_host_matrix<BE>(m);
  for (Index i = 0; i < host.rows; ++i)
    for (Index j = 0; j < host.cols; ++j)
      if (const auto x = host(i, j); !std::isfinite(x)) return milora::detail::concat(name, " holds ", x, " at (", i, ", ", j, ")");
  return {};
}

/// The first NaN or Inf in what the last forward computed from: every base weight, then every
/// adapter factor, then the activations in the order the forward made them (the embedding output,
/// each layer's attention half and output, the final norm, the logits); empty when all are finite.
template <class Model>
std::string find_non_finite(Model& model) {
  using BE = typename Model::backend;
  for (const auto& spec : model.config().weights())
    if (auto m = non_finite_entry<BE>(model.weight(spec.name), spec.name); !m.empty()) return m;
  for (auto* p : model.adapted())
    for (const auto& param : p->adapter->parameters())
      if (auto m = non_finite_entry<BE>(param.value, p->module + "." + std::string(param.name)); !m.empty()) return m;
  const auto& act = model.activations();
  if (act.batch() < 0) return {};
  // in forward order, so the first hit names the layer where the overflow started
  const auto layer = [](std::size_t l) { return "model.layers." + std::to_string(l); };
  using Layer = typename std::remove_cvref_t<decltype(act)>::Layer;
  const auto layers = std::size_t(model.num_layers());
  for (std::size_t l = 0; l < layers; ++l) {
    if (auto m = non_finite_entry<BE>(act.kept(l, &Layer::x), l == 0 ? std::string("the embedding output") : "the output of " + layer(l - 1));
        !m.empty())
      return m;
    if (auto m = non_finite_entry<BE>(act.kept(l, &Layer::x_mid), "the attention half of " + layer(l)); !m.empty()) return m;
  }
  if (auto m = non_finite_entry<BE>(act.x_final, "the output of " + layer(layers - 1) + " (the last layer)"); !m.empty())
    return m;
  return non_finite_entry<BE>(act.logits, "the logits");
}

/// The first trainable parameter whose gradient holds NaN or Inf, as find_non_finite names it.
template <class Model>
std::string find_non_finite_gradient(Model& model) {
  using BE = typename Model::backend;
  if (model.full_training()) {
    for (const auto& p : model.parameters())
      if (auto m = non_finite_entry<BE>(p.grad, "the gradient of " + std::string(p.name)); !m.empty()) return m;
    return {};
  }
  for (auto* p : model.adapted())
    for (const auto& param : p->adapter->parameters())
      if (auto m = non_finite_entry<BE>(param.grad, "the gradient of " + p->module + "." + std::string(param.name)); !m.empty())
        return m;
  return {};
}

}  // namespace llama
