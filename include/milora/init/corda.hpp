// ContextOrientedSVD, the CorDA start: decompose W oriented by what the layer actually sees.
// Yang et al., "CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for
// Task-Aware Parameter-Efficient Fine-tuning", NeurIPS 2024; PEFT's init_lora_weights="corda".
//
// With C the layer's input second moment over calibration data (InputStatistics::second_moment)
// and C~ = C + lambda I (lambda = damp * mean(diag C), damp from 0.01, doubled until C~ has a
// Cholesky factor, as PEFT doubles it until C~ inverts):
//
//   W C~ = U S Vt,   V'ᵀ = Vt C~^-1,   so  W = U S V'ᵀ  exactly,
//   A = sqrt(S_I / s) V'_Iᵀ,  B = U_I sqrt(S_I / s),  W' = W - s*B*A   (factors_from_triplets)
//
// with I the r LARGEST triplets in instruction-previewed mode (IPM: adapt what the task's data
// excites most) or the r SMALLEST in knowledge-preserved mode (KPM: leave the directions the
// calibration data relies on in the frozen residual, adapt the rest — MiLoRA's idea, oriented by
// data). C~^-1 is applied through its Cholesky factor (two triangular solves on r columns), never
// formed. PEFT normalises each calibration sample by its largest |x| before accumulating; that
// rescales C, which changes how A and B share the magnitude but not the subspace or s*B*A. We use
// the plain mean of x xᵀ.
//
// What the policy needs is in its type: the layer's InputStatistics. Adapters keep a copy of
// their policy; retained() gives them one without the statistics (in x in per layer), so the
// calibration memory is released once the adapters exist.
#pragma once

#include <cmath>
#include <concepts>
#include <memory>
#include <string_view>
#include <utility>

#include "milora/calibration/input_statistics.hpp"
#include "milora/core/init_policy.hpp"
#include "milora/init/calibrated.hpp"
#include "milora/init/from_triplets.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

enum class CordaMode {
  knowledge_preserved,   ///< KPM: the r smallest components of W C (PEFT's corda_method="kpm")
  instruction_previewed  ///< IPM: the r largest (PEFT's corda_method="ipm")
};

template <Backend BE, CordaMode Mode = CordaMode::knowledge_preserved, class Solver = ExactSVD>
struct ContextOrientedSVD {
  static constexpr std::string_view name = Mode == CordaMode::knowledge_preserved ? "corda-kpm" : "corda-ipm";
  static constexpr bool residual = true;  ///< the base becomes W - s*B*A
  using calibration = InputStatistics<BE>;  ///< CalibratedInit (milora/init/calibrated.hpp)
  std::shared_ptr<const InputStatistics<BE>> inputs;  ///< this layer's calibration statistics
  Solver solver{};

  /// This policy for one layer: its input statistics.
  ContextOrientedSVD with_calibration(std::shared_ptr<const calibration> stats) const { return {std::move(stats), solver}; }

  template <Backend B>
    requires std::same_as<B, BE>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    using T = scalar_t<B>;
    if (!inputs)
      throw state_error(detail::concat(name, " init: no calibration statistics (a retained() copy cannot initialise)"));
    if (inputs->features() != B::cols(w))
      throw shape_error(detail::concat(name, " init: calibration statistics have ", inputs->features(),
                                       " features, W is ", detail::shape_str(B::rows(w), B::cols(w))));
    auto [damped, l] = damped_covariance<B>(inputs->second_moment());

    matrix_t<B> wc = B::zeros(B::rows(w), B::cols(w));
    B::gemm(T(1), w, Trans::no, damped, Trans::no, T(0), wc);
    Triplets<B> t = [&] {
      if constexpr (Mode == CordaMode::knowledge_preserved) {
        static_assert(MinorSolver<Solver, B>, "ContextOrientedSVD<KPM, Solver>: Solver must provide bottom<B>(w, r)");
        return solver.template bottom<B>(wc, cfg.rank);
      } else {
        static_assert(PrincipalSolver<Solver, B>, "ContextOrientedSVD<IPM, Solver>: Solver must provide top<B>(w, r)");
        return solver.template top<B>(wc, cfg.rank);
      }
    }();
    require_nonzero_singular_values<B>(wc, t, name);
    // V'ᵀ = Vt C~^-1 = (C~^-1 Vtᵀ)ᵀ with C~ = L Lᵀ: two triangular solves on r columns.
    const Index r = B::rows(t.Vt);
    matrix_t<B> eye = B::zeros(r, r);
    B::add_diagonal(eye, T(1));
    matrix_t<B> v = B::zeros(B::cols(w), r);
    B::gemm(T(1), t.Vt, Trans::yes, eye, Trans::no, T(0), v);
    B::trsm(l, Trans::no, v);
    B::trsm(l, Trans::yes, v);
    B::gemm(T(1), eye, Trans::no, v, Trans::yes, T(0), t.Vt);
    return factors_from_triplets<B>(std::move(t), cfg.scale());
  }

  /// The copy an adapter keeps: everything but the statistics.
  ContextOrientedSVD retained() const { return {nullptr, solver}; }

  /// C~ = C + lambda I and its Cholesky factor, lambda = damp * mean(diag C) with damp = 0.01,
  /// doubled while C~ has no Cholesky factor (PEFT doubles it while C~ does not invert).
  template <Backend B>
  static std::pair<matrix_t<B>, matrix_t<B>> damped_covariance(matrix_t<B> c) {
    const auto host = B::to_host(c);
    const Index n = B::cols(c);
    double mean_diag = 0;
    for (Index i = 0; i < n; ++i) mean_diag += double(host[std::size_t(i * n + i)]);
    mean_diag /= double(n);
    if (!(mean_diag > 0) || !std::isfinite(mean_diag))
      throw value_error(detail::concat(name, " init: the calibration inputs' second moment has mean diagonal ", mean_diag,
                                       " (all-zero inputs?)"));
    double added = 0;
    for (double damp = 0.01; damp < 1e4; damp *= 2) {
      B::add_diagonal(c, scalar_t<B>(damp * mean_diag - added));
      added = damp * mean_diag;
      try {
        auto l = B::cholesky(c);
        return {std::move(c), std::move(l)};
      } catch (const numerical_error&) {
      }
    }
    throw numerical_error(detail::concat(name, " init: the damped calibration covariance has no Cholesky factor"));
  }
};

}  // namespace milora
