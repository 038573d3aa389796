// ActivationPCA, the EVA start: A = the r leading principal components of the layer's inputs,
// B = 0, base unchanged. Paischer et al., "One Initialization to Rule them All: Fine-tuning via
// Explained Variance Adaptation", 2024 (arXiv:2410.07170); PEFT's init_lora_weights="eva".
//
// The rows of A are the eigenvectors of the inputs' centred covariance (InputStatistics::
// covariance) for its r largest eigenvalues, in descending order: the right singular vectors of
// the centred activation matrix, which PEFT's EVA finds with an incremental PCA over the
// calibration batches (centring by the running mean, like scikit-learn's IncrementalPCA). Here the
// covariance is accumulated instead and decomposed once (the backend's eigh for an index range), so
// the result does not depend on batch order. h = x Aᵀ then carries the directions in which this
// layer's inputs vary most, and B = 0 leaves the output unchanged.
//
// Left out (said in docs/math.md): EVA's redistribution of ranks across layers by explained
// variance (it changes the rank per module; milora's adapters have one rank per model) and
// whitening (PEFT's default is off). Each row gets its largest-magnitude entry positive, the sign
// convention of the SVD-based policies (from_triplets.hpp).
#pragma once

#include <cmath>
#include <concepts>
#include <memory>
#include <string_view>
#include <vector>

#include "milora/calibration/input_statistics.hpp"
#include "milora/core/init_policy.hpp"
#include "milora/init/calibrated.hpp"

namespace milora {

template <Backend BE>
struct ActivationPCA {
  static constexpr std::string_view name = "eva";
  static constexpr bool residual = false;  ///< B = 0: the base is left as it is
  using calibration = InputStatistics<BE>;  ///< CalibratedInit (milora/init/calibrated.hpp)
  std::shared_ptr<const InputStatistics<BE>> inputs;  ///< this layer's calibration statistics

  /// This policy for one layer: its input statistics.
  ActivationPCA with_calibration(std::shared_ptr<const calibration> stats) const { return {std::move(stats)}; }

  template <Backend B>
    requires std::same_as<B, BE>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    using T = scalar_t<B>;
    if (!inputs) throw state_error("eva init: no calibration statistics (a retained() copy cannot initialise)");
    const Index n = B::cols(w), r = cfg.rank;
    if (inputs->features() != n)
      throw shape_error(detail::concat("eva init: calibration statistics have ", inputs->features(), " features, W is ",
                                       detail::shape_str(B::rows(w), n)));
    // r + 1 tokens at least: the centred covariance of t tokens has rank t - 1 at most, and an
    // eigenvector of a zero eigenvalue is an arbitrary direction, not a component of the data.
    if (inputs->tokens() <= r)
      throw value_error(detail::concat("eva init: ", inputs->tokens(), " calibration tokens for rank ", r,
                                       "; needs more than the rank"));
    const auto eig = B::eigh(inputs->covariance(), n - r, n - 1);  // ascending: reverse below
    const std::vector<T> vals = B::to_host(eig.values), vecs = B::to_host(eig.vectors);  // n x r
    if (!(double(vals.front()) > 0))
      throw value_error(detail::concat("eva init: the inputs vary in fewer than ", r,
                                       " directions (eigenvalue ", double(vals.front()), "); use a smaller rank"));
    std::vector<T> a(std::size_t(r * n));
    for (Index i = 0; i < r; ++i) {  // row i of A: eigenvector of the i-th largest eigenvalue
      const Index col = r - 1 - i;
      Index arg = 0;
      for (Index j = 1; j < n; ++j)
        if (std::abs(vecs[std::size_t(j * r + col)]) > std::abs(vecs[std::size_t(arg * r + col)])) arg = j;
      const T sign = vecs[std::size_t(arg * r + col)] < T(0) ? T(-1) : T(1);
      for (Index j = 0; j < n; ++j) a[std::size_t(i * n + j)] = sign * vecs[std::size_t(j * r + col)];
    }
    return {B::from_host(r, n, a), B::zeros(B::rows(w), r), residual};
  }

  /// The copy an adapter keeps: without the statistics.
  ActivationPCA retained() const { return {nullptr}; }
};

}  // namespace milora
