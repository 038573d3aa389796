// Adapters for any init policy, including the data-driven ones, whose policies hold what a few
// batches of the fine-tuning data did to a projection of the base model: its inputs' statistics
// (CorDA, EVA: forward passes) or its weight's gradient (LoRA-GA: forward and backward passes).
// Those are collected first, then each projection gets a policy with its own.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data.hpp"
#include "milora/calibration/input_statistics.hpp"
#include "milora/core/config.hpp"

namespace llama {

/// Whether Init is a policy whose `inputs` take a projection's InputStatistics (CorDA, EVA).
template <class Init, class BE>
constexpr bool kStatisticsInit = requires(Init i) { i.inputs = std::shared_ptr<const milora::InputStatistics<BE>>{}; };
/// Whether Init is a policy whose `gradient` takes a projection's dL/dW (LoRA-GA).
template <class Init, class BE>
constexpr bool kGradientInit = requires(Init i) { i.gradient = std::shared_ptr<const milora::matrix_t<BE>>{}; };
template <class Init, class BE>
constexpr bool kCalibratedInit = kStatisticsInit<Init, BE> || kGradientInit<Init, BE>;

/// model.add_adapters(targets, config, Init{}), calibrating data-driven policies first on the first
/// `batches` batches of `tokens` (batch x seq each, read by a loader of their own, so that the
/// training loader's cursor is not moved): the inputs' statistics over those forward passes, or
/// the mean of the weights' gradients over those batches. Returns the number of calibration
/// tokens (0: none needed).
template <class Init, class Model>
Index add_adapters_calibrated(Model& model, const std::vector<std::string>& targets, const milora::AdapterConfig& config,
                              const std::vector<Token>& tokens, Index batch, Index seq, Index batches) {
  using BE = typename Model::backend;
  if constexpr (kCalibratedInit<Init, BE>) {
    if (batches <= 0) throw milora::value_error(milora::detail::concat("calibration batches must be positive, got ", batches));
    DataLoader calibration(tokens, batch, seq, "calibration data");
    std::vector<Token> in, target;
    if constexpr (kStatisticsInit<Init, BE>) {
      const auto stats = model.collect_input_statistics(targets, [&] {
        for (Index i = 0; i < batches; ++i) {
          calibration.next(in, target);
          model.forward(in, batch, seq);
        }
      });
      model.add_adapters_with(targets, config, [&](const std::string& module) {
        Init init{};
        init.inputs = stats.at(module);
        return init;
      });
    } else {
      const auto grads = model.collect_weight_gradients(targets, [&] {
        for (Index i = 0; i < batches; ++i) {
          calibration.next(in, target);
          model.forward_backward(in, target, batch, seq, 1.0 / double(batches));
        }
      });
      model.add_adapters_with(targets, config, [&](const std::string& module) {
        Init init{};
        init.gradient = grads.at(module);
        return init;
      });
    }
    return batches * batch * seq;
  } else {
    model.add_adapters(targets, config, Init{});
    return 0;
  }
}

}  // namespace llama
