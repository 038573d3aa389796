// Adapters for any init policy, including the data-driven ones (milora::CalibratedInit), whose
// policies hold what a few batches of the fine-tuning data did to a projection of the base model:
// its inputs' statistics (CorDA, EVA: forward passes) or its weight's gradient (LoRA-GA: forward and
// backward passes). Those are collected first, then each projection gets a policy with its own.
// add_adapters_for_method does the same for a method named on a command line (milora's registry).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data.hpp"
#include "milora/core/config.hpp"
#include "milora/init/calibrated.hpp"
#include "milora/init/registry.hpp"

namespace llama {

/// model.add_adapters(targets, config, Init{}), calibrating data-driven policies first on the first
/// `batches` batches of `tokens` (batch x seq each, read by a loader of their own, so that the
/// training loader's cursor is not moved): the inputs' statistics over those forward passes, or
/// the mean of the weights' gradients over those batches. Returns the number of calibration
/// tokens (0: none needed).
template <class Init, class Model>
Index add_adapters_calibrated(Model& model, const std::vector<std::string>& targets, const milora::AdapterConfig& config,
                              const std::vector<Token>& tokens, Index batch, Index seq, Index batches) {
  using BE = typename Model::backend;
  if constexpr (milora::CalibratedInit<Init, BE>) {
    if (batches <= 0) throw milora::value_error(milora::detail::concat("calibration batches must be positive, got ", batches));
    DataLoader calibration(tokens, batch, seq, "calibration data");
    std::vector<Token> in, target;
    if constexpr (milora::InputCalibratedInit<Init, BE>) {
      const auto stats = model.collect_input_statistics(targets, [&] {
        for (Index i = 0; i < batches; ++i) {
          calibration.next(in, target);
          model.forward(in, batch, seq);
        }
      });
      model.add_adapters_with(targets, config, [&](const std::string& module) { return Init{}.with_calibration(stats.at(module)); });
    } else {
      static_assert(milora::GradientCalibratedInit<Init, BE>, "add_adapters_calibrated: an unknown kind of calibration");
      const auto grads = model.collect_weight_gradients(targets, [&] {
        for (Index i = 0; i < batches; ++i) {
          calibration.next(in, target);
          model.forward_backward(in, target, batch, seq, 1.0 / double(batches));
        }
      });
      model.add_adapters_with(targets, config, [&](const std::string& module) { return Init{}.with_calibration(grads.at(module)); });
    }
    return batches * batch * seq;
  } else {
    model.add_adapters(targets, config, Init{});
    return 0;
  }
}

/// Adds the adapters of the init method called `method` (milora::InitMethods; with fast_solvers
/// its fast policy) to `model`, calibrating data-driven ones first (add_adapters_calibrated).
/// Returns the calibration tokens used; an unknown name is refused with value_error before anything
/// is added.
template <class Model>
Index add_adapters_for_method(Model& model, const std::string& method, bool fast_solvers,
                              const std::vector<std::string>& targets, const milora::AdapterConfig& config,
                              const std::vector<Token>& tokens, Index batch, Index seq, Index batches) {
  return milora::with_init_method<typename Model::backend>(method, fast_solvers, [&]<class Init>() {
    return add_adapters_calibrated<Init>(model, targets, config, tokens, batch, seq, batches);
  });
}

}  // namespace llama
