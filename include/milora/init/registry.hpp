// The init methods milora offers by name: one list, InitMethods<B>, that every tool (milora-init and
// milora-finetune --method, their --help), the reference LLaMA and the comparison demo read.
//
// An entry names PEFT's init_lora_weights value, the method's exact policy and its fast policy (the
// same start with a fast spectral solver: CholeskyKrylovSVD for the minor end, RandomizedSVD for
// the major end; the exact one again where there is no solver to swap). The rest is read from the
// policy itself, never from a second list:
//   name          Policy::name, the tools' --method ("milora")
//   changes_base  Policy::residual: the base becomes W - s*B*A, so a residual model goes with the
//                 adapter (PiSSA, MiLoRA, OLoRA, CorDA, LoRA-GA)
//   calibration   CalibratedInit (milora/init/calibrated.hpp): what the policy needs besides W
//
// Adding a method is its policy's header plus one line below (docs/extending.md walks through it).
//
//   milora::with_init_method<B>("milora", /*fast=*/true, [&]<class Policy>() { ... Policy{} ... });
//   milora::init_method<B>("corda-kpm").calibration  // Calibration::input_statistics
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "milora/core/errors.hpp"
#include "milora/init/calibrated.hpp"
#include "milora/init/corda.hpp"
#include "milora/init/eva.hpp"
#include "milora/init/gaussian.hpp"
#include "milora/init/kaiming.hpp"
#include "milora/init/lora_ga.hpp"
#include "milora/init/mica.hpp"
#include "milora/init/minor.hpp"
#include "milora/init/olora.hpp"
#include "milora/init/orthogonal.hpp"
#include "milora/init/principal.hpp"
#include "milora/spectral/cholesky_krylov.hpp"
#include "milora/spectral/exact.hpp"
#include "milora/spectral/randomized.hpp"

namespace milora {

/// A string literal as a template argument (PEFT's name in an InitMethod).
template <std::size_t N>
struct FixedString {
  char text[N]{};
  constexpr FixedString(const char (&s)[N]) { std::copy_n(s, N, text); }  // NOLINT: implicit by design
  constexpr std::string_view view() const { return {text, N - 1}; }
};

/// One named method: PEFT's init_lora_weights value ("" where PEFT has none), the exact policy and
/// the fast one.
template <FixedString Peft, class Exact, class Fast = Exact>
struct InitMethod {
  using exact = Exact;
  using fast = Fast;
  static constexpr std::string_view name = Exact::name;
  static constexpr std::string_view peft_name = Peft.view();
  static constexpr bool changes_base = Exact::residual;
  static constexpr bool has_fast_solver = !std::is_same_v<Exact, Fast>;
  static_assert(Exact::name == Fast::name, "InitMethod: the exact and fast policies must be the same method");
  static_assert(Exact::residual == Fast::residual, "InitMethod: the exact and fast policies must agree on residual");
};

template <Backend B>
using InitMethods = std::tuple<
    //         PEFT init_lora_weights  exact policy                                        fast policy
    InitMethod<"true",        KaimingUniform>,
    InitMethod<"gaussian",    Gaussian>,
    InitMethod<"pissa",       PrincipalSVD<ExactSVD>,                              PrincipalSVD<RandomizedSVD>>,
    InitMethod<"",            MinorSVD<ExactSVD>,                                  MinorSVD<CholeskyKrylovSVD>>,
    InitMethod<"olora",       LeadingQR>,
    InitMethod<"orthogonal",  OrthogonalInit>,
    InitMethod<"",            MinorLeftSingular<ExactSVD>,                         MinorLeftSingular<CholeskyKrylovSVD>>,
    InitMethod<"corda",       ContextOrientedSVD<B, CordaMode::knowledge_preserved>,
                              ContextOrientedSVD<B, CordaMode::knowledge_preserved, CholeskyKrylovSVD>>,
    InitMethod<"corda",       ContextOrientedSVD<B, CordaMode::instruction_previewed>,
                              ContextOrientedSVD<B, CordaMode::instruction_previewed, RandomizedSVD>>,
    InitMethod<"eva",         ActivationPCA<B>>,
    InitMethod<"lora_ga",     GradientApproximation<B>,                            GradientApproximation<B, RandomizedSVD>>>;

/// What a listing needs to know of a method, without its types.
struct InitMethodInfo {
  std::string_view name;       ///< --method
  std::string_view peft_name;  ///< PEFT's init_lora_weights ("" where PEFT has none)
  bool changes_base;           ///< a residual model goes with the adapter
  Calibration calibration;     ///< what the policy needs besides W
  bool has_fast_solver;        ///< --solver fast picks another policy
};

namespace detail {
template <Backend B, class M>
constexpr InitMethodInfo init_method_info() {
  static_assert(InitPolicy<typename M::exact, B> && InitPolicy<typename M::fast, B>,
                "InitMethods: every entry's policies must be InitPolicies");
  static_assert(!CalibratedInit<typename M::exact, B> || calibration_of<typename M::exact, B>() != Calibration::none,
                "InitMethods: a CalibratedInit must calibrate on InputStatistics<B> or WeightGradient<B>");
  return {M::name, M::peft_name, M::changes_base, calibration_of<typename M::exact, B>(), M::has_fast_solver};
}
template <Backend B, class Tuple>
struct InitMethodList;
template <Backend B, class... M>
struct InitMethodList<B, std::tuple<M...>> {
  static constexpr std::array<InitMethodInfo, sizeof...(M)> value = {init_method_info<B, M>()...};
};
}  // namespace detail

/// Every method of InitMethods<B>, in its order.
template <Backend B>
constexpr const auto& init_methods() {
  return detail::InitMethodList<B, InitMethods<B>>::value;
}

/// The methods' names joined by `separator`: "lora,pissa,milora,...".
template <Backend B>
std::string init_method_names(std::string_view separator = ",") {
  std::string out;
  for (const auto& m : init_methods<B>()) {
    if (!out.empty()) out += separator;
    out += m.name;
  }
  return out;
}

/// The method called `name`; value_error listing the known names otherwise.
template <Backend B>
const InitMethodInfo& init_method(std::string_view name) {
  for (const auto& m : init_methods<B>())
    if (m.name == name) return m;
  throw value_error(detail::concat("unknown init method '", name, "' (", init_method_names<B>(), ")"));
}

namespace detail {
template <Backend B, class Result, std::size_t I = 0, class Fn>
Result dispatch_init_method(std::string_view name, bool fast, Fn& fn) {
  using M = std::tuple_element_t<I, InitMethods<B>>;
  if (M::name == name) return fast ? fn.template operator()<typename M::fast>() : fn.template operator()<typename M::exact>();
  if constexpr (I + 1 < std::tuple_size_v<InitMethods<B>>) return dispatch_init_method<B, Result, I + 1>(name, fast, fn);
  else throw value_error(detail::concat("unknown init method '", name, "' (", init_method_names<B>(), ")"));
}
}  // namespace detail

/// fn.template operator()<Policy>() with the exact (or, with `fast`, the fast) policy of the method
/// called `name`, returning what fn returns (the same type for every policy); value_error naming
/// the known methods for an unknown name, before fn runs.
template <Backend B, class Fn>
decltype(auto) with_init_method(std::string_view name, bool fast, Fn&& fn) {
  (void)init_method<B>(name);
  using First = typename std::tuple_element_t<0, InitMethods<B>>::exact;
  using Result = decltype(fn.template operator()<First>());
  return detail::dispatch_init_method<B, Result>(name, fast, fn);
}

}  // namespace milora
