// The init methods the LLaMA tools name on their command lines (milora-finetune --method,
// compare_inits --methods), each mapped to its policy once: add_adapters_for_method. With
// fast_solvers (milora-finetune --solver fast) the SVD-based ones take the fast spectral solvers:
// CholeskyKrylovSVD for the minor end (MiLoRA, MiCA, CorDA-KPM), RandomizedSVD for the major end
// (PiSSA, CorDA-IPM, LoRA-GA); the others have no solver to swap.
#pragma once

#include <string>
#include <vector>

#include "calibration.hpp"
#include "milora/adapters.hpp"
#include "milora/spectral/cholesky_krylov.hpp"
#include "milora/spectral/randomized.hpp"

namespace llama {

/// The method names add_adapters_for_method knows, comma-separated (for help texts and errors).
inline constexpr const char* kInitMethods = "lora,pissa,milora,olora,orthogonal,mica,corda-kpm,corda-ipm,eva,lora-ga";

/// Adds the adapters of init method `method` to `model` (add_adapters_calibrated: the data-driven
/// ones calibrate first on `batches` batches of `tokens`). Returns the calibration tokens used; an
/// unknown name is refused with value_error before anything is added.
template <class Model>
Index add_adapters_for_method(Model& model, const std::string& method, bool fast_solvers,
                              const std::vector<std::string>& targets, const milora::AdapterConfig& config,
                              const std::vector<Token>& tokens, Index batch, Index seq, Index batches) {
  using BE = typename Model::backend;
  using milora::CholeskyKrylovSVD, milora::RandomizedSVD;
  using enum milora::CordaMode;
  auto with = [&]<class Exact, class Fast = Exact>() {
    if (fast_solvers) return add_adapters_calibrated<Fast>(model, targets, config, tokens, batch, seq, batches);
    return add_adapters_calibrated<Exact>(model, targets, config, tokens, batch, seq, batches);
  };
  if (method == "lora") return with.template operator()<milora::KaimingUniform>();
  if (method == "olora") return with.template operator()<milora::LeadingQR>();
  if (method == "orthogonal") return with.template operator()<milora::OrthogonalInit>();
  if (method == "eva") return with.template operator()<milora::ActivationPCA<BE>>();
  if (method == "mica")
    return with.template operator()<milora::MinorLeftSingular<>, milora::MinorLeftSingular<CholeskyKrylovSVD>>();
  if (method == "corda-kpm")
    return with.template operator()<milora::ContextOrientedSVD<BE, knowledge_preserved>,
                                    milora::ContextOrientedSVD<BE, knowledge_preserved, CholeskyKrylovSVD>>();
  if (method == "corda-ipm")
    return with.template operator()<milora::ContextOrientedSVD<BE, instruction_previewed>,
                                    milora::ContextOrientedSVD<BE, instruction_previewed, RandomizedSVD>>();
  if (method == "lora-ga")
    return with.template operator()<milora::GradientApproximation<BE>, milora::GradientApproximation<BE, RandomizedSVD>>();
  if (method == "pissa") return with.template operator()<milora::PrincipalSVD<>, milora::PrincipalSVD<RandomizedSVD>>();
  if (method == "milora") return with.template operator()<milora::MinorSVD<>, milora::MinorSVD<CholeskyKrylovSVD>>();
  throw milora::value_error(milora::detail::concat("unknown init method '", method, "' (", kInitMethods, ")"));
}

}  // namespace llama
