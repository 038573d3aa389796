// The weights of one LLaMA block: its seven linear layers (Projection: the frozen weight, and the
// adapter when the layer is a target) and its two RMSNorm weights (Block).
//
//   Projection::forward   y = x W'^T (+ b) (+ the adapter's s (x A^T) B^T)
//   Projection::backward  dx = dy W' (+ the adapter's path); the adapter's dA, dB accumulate, or in
//                         full training dW += dy^T x (and db += the column sums of dy)
//
// A bias (Qwen2's q, k, v; LLaMA's attention_bias / mlp_bias) is frozen like the weight and stays
// outside the adapter, as PEFT's lora.Linear leaves the base layer's bias: merging an adapter
// changes W only.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "milora/adapters.hpp"
#include "milora/calibration/input_statistics.hpp"
#include "milora/core/linear_layer.hpp"

namespace llama {

/// The linear layers of a LLaMA block, by the names PEFT's target_modules use.
inline constexpr std::array<std::string_view, 7> kProjectionNames = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"};

/// One linear layer of a block, with its adapter when it is a target. Weights is the frozen weight's
/// storage (milora/core/weight_storage.hpp).
template <milora::Backend BE, class Weights>
struct Projection {
  using matrix = milora::matrix_t<BE>;
  using AdapterT = milora::AnyAdapter<BE, Weights>;  // any init policy (Llama::add_adapters' argument)
  using Layer = milora::OwningLinear<BE, Weights>;    // the frozen weight

  std::string module;  // "model.layers.0.self_attn.q_proj": the module path PEFT's keys use
  Layer linear = milora::owning_linear_from<Weights, BE>(BE::zeros(0, 0));
  std::optional<AdapterT> adapter;
  matrix bias = BE::zeros(0, 0);  // 1 x out, or empty when the layer has none
  matrix h;     // x A^T of the last forward (tokens x rank), which the adapter's backward needs
  matrix grad;  // dL/dW in full training or while collecting weight gradients, else empty
  matrix bias_grad;                   // dL/db in full training (with a bias), else empty
  const matrix* ones = nullptr;       // tokens x 1 ones (the model's), for bias_grad's column sums
  // Set only while the model collects input statistics: every input this layer sees is added to it.
  std::shared_ptr<milora::InputStatistics<BE>> observer;

  /// PEFT's name of the layer: "q_proj", ..., "down_proj".
  std::string_view name() const { return std::string_view(module).substr(module.rfind('.') + 1); }

  void forward(milora::const_view_t<BE> x, milora::view_t<BE> y) { forward(x, y, h); }
  /// The same with the adapter's x A^T in `adapter_h` (tokens x rank): generation's steps keep
  /// the training forward's h for its backward.
  void forward(milora::const_view_t<BE> x, milora::view_t<BE> y, milora::view_t<BE> adapter_h) {
    if (observer) observer->observe(x);
    if (adapter) adapter->forward(x, y, adapter_h);
    else linear.forward(x, y);
    if (has_bias()) BE::add_row_broadcast(y, bias);
  }
  bool has_bias() const { return BE::cols(bias) != 0; }
  /// dx = dy W' (+ the adapter's path); adapter gradients (or, with a weight gradient, dW += dy^T x)
  /// accumulate.
  void backward(milora::const_view_t<BE> x, milora::const_view_t<BE> dy, milora::view_t<BE> dx) {
    if (adapter) {
      adapter->backward(x, h, dy, dx);
      return;
    }
    linear.backward_input(dy, dx);
    if (BE::rows(grad) != 0) BE::gemm(1, dy, milora::Trans::yes, x, milora::Trans::no, 1, grad);
    if (BE::rows(bias_grad) != 0) BE::gemm(1, *ones, milora::Trans::yes, dy, milora::Trans::no, 1, bias_grad);
  }
};

/// One decoder layer's weights: the norms (1 x hidden) and the seven projections.
template <milora::Backend BE, class Weights>
struct Block {
  using matrix = milora::matrix_t<BE>;
  matrix input_norm, post_attention_norm;
  matrix d_input_norm, d_post_attention_norm;  // their gradients in full training
  Projection<BE, Weights> q, k, v, o, gate, up, down;
  std::array<Projection<BE, Weights>*, 7> projections() { return {&q, &k, &v, &o, &gate, &up, &down}; }
  /// "model.layers.3.": the prefix of every weight of this layer.
  std::string prefix() const { return q.module.substr(0, q.module.rfind("self_attn")); }
};

}  // namespace llama
