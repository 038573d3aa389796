// RandomizedSVD: the r largest singular triplets by randomized subspace iteration, for PiSSA.
// Halko, Martinsson & Tropp, "Finding structure with randomness", SIAM Review 2011: Alg. 4.4
// (randomized subspace iteration, re-orthonormalised after every product) + Alg. 5.1 (direct SVD of
// the projected matrix).
//
//   Omega = N(0, 1)^{n x k}, k = r + oversampling;   Q = orth(W Omega)
//   repeat power_iterations times:  Q = orth(W orth(W^T Q))
//   W ~ Q (Q^T W);  SVD of the small k x n matrix Q^T W gives the triplets.
//
// Cost: 2 (1 + 2 q) gemms of W with a k-column block plus k x n work, instead of gesdd's O(m n^2).
// PEFT's init_lora_weights="pissa_niter_K" calls torch.svd_lowrank(W, q=r, niter=K), i.e.
// RandomizedSVD{.oversampling = 0, .power_iterations = K}. Our default, p = r and q = 6, keeps sigma
// to ~1e-5 on a slowly decaying (LLM-like) spectrum, where PEFT-like p = 10, q = 4 is off by 1e-3
// to 1e-2; docs/benchmarks.md has the measured alternatives.
// As everywhere, the adapter builds W' from the factors produced, so the output is unchanged at init
// whatever the accuracy.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>

#include "milora/core/spectral_solver.hpp"
#include "milora/spectral/exact.hpp"

namespace milora {

struct RandomizedSVD {
  static constexpr std::string_view name = "randomized";
  static constexpr Index same_as_rank = -1;
  /// p: the sketch has r + p columns (capped at min(m, n)); same_as_rank means p = r.
  Index oversampling = same_as_rank;
  int power_iterations = 6;     ///< q: passes of W W^T, each re-orthonormalised (PEFT's niter)
  std::uint64_t seed = 0x9E3779B97F4A7C15ULL;  ///< of the Gaussian test matrix

  /// The r largest singular triplets (approximate), sigma descending.
  template <Backend B>
  Triplets<B> top(const_view_t<B> w, Index r) const {
    const Index m = B::rows(w), n = B::cols(w);
    detail::check_triplet_count(r, m, n, name);
    if (oversampling < same_as_rank || power_iterations < 0)
      throw value_error(detail::concat("RandomizedSVD: oversampling ", oversampling,
                                       " and power_iterations ", power_iterations, " must be >= 0"));
    const Index p = oversampling == same_as_rank ? r : oversampling;
    const Index k = std::min(r + p, std::min(m, n));

    auto omega = B::zeros(n, k);
    B::fill_normal(omega, 0.0, 1.0, seed);
    auto y = B::zeros(m, k), z = B::zeros(n, k);
    B::gemm(1, w, Trans::no, omega, Trans::no, 0, y);
    auto q = B::qr(y).Q;
    for (int i = 0; i < power_iterations; ++i) {
      B::gemm(1, w, Trans::yes, q, Trans::no, 0, z);
      const auto qz = B::qr(z).Q;
      B::gemm(1, w, Trans::no, qz, Trans::no, 0, y);
      q = B::qr(y).Q;
    }
    auto projected = B::zeros(k, n);  // Q^T W
    B::gemm(1, q, Trans::yes, w, Trans::no, 0, projected);
    auto small = B::svd(projected);   // U k x k, S 1 x k, Vt k x n
    auto u = B::zeros(m, k);
    B::gemm(1, q, Trans::no, small.U, Trans::no, 0, u);
    small.U = std::move(u);
    return detail::select_triplets<B>(small, 0, r);
  }
};

}  // namespace milora
