// CalibratedInit: an init policy that is built per layer from what calibration data did to that
// layer, and says so in its type. A data-driven method cannot start from W alone: CorDA and EVA
// need the layer's input statistics over a few batches, LoRA-GA its weight's gradient. Such a
// policy declares
//
//   using calibration = InputStatistics<B>;   (or WeightGradient<B>: the layer's dL/dW)
//   P with_calibration(std::shared_ptr<const calibration> data) const;   // this policy for one layer
//
// and a program that holds a model (the reference LLaMA's add_adapters_calibrated) collects the
// data for every targeted layer, then builds each layer's policy with with_calibration. Policies
// without the member alias start from W alone.
#pragma once

#include <concepts>
#include <memory>

#include "milora/calibration/input_statistics.hpp"
#include "milora/core/init_policy.hpp"

namespace milora {

/// What LoRA-GA calibrates on: a layer's weight gradient dL/dW (out x in), averaged over batches.
template <ProductBackend B>
using WeightGradient = matrix_t<B>;

template <class I, class B>
concept CalibratedInit = InitPolicy<I, B> && requires { typename I::calibration; } &&
                         requires(const I& init, std::shared_ptr<const typename I::calibration> data) {
                           { init.with_calibration(data) } -> std::same_as<I>;
                         };

/// Calibrated on the layer's inputs (CorDA, EVA): forward passes over the calibration batches.
template <class I, class B>
concept InputCalibratedInit = CalibratedInit<I, B> && std::same_as<typename I::calibration, InputStatistics<B>>;

/// Calibrated on the layer's weight gradient (LoRA-GA): forward and backward passes.
template <class I, class B>
concept GradientCalibratedInit = CalibratedInit<I, B> && std::same_as<typename I::calibration, WeightGradient<B>>;

/// What an init policy needs besides W, for listings (milora/init/registry.hpp).
enum class Calibration { none, input_statistics, weight_gradient };

template <class I, class B>
constexpr Calibration calibration_of() {
  if constexpr (InputCalibratedInit<I, B>) return Calibration::input_statistics;
  else if constexpr (GradientCalibratedInit<I, B>) return Calibration::weight_gradient;
  else return Calibration::none;
}

}  // namespace milora
