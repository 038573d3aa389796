// CusolverRandomizedSVD: PiSSA's r largest triplets by the backend's own randomized SVD where it has
// one (CudaBackend: cuSOLVER's cusolverDnXgesvdr), else by RandomizedSVD with the same oversampling
// and power iterations. So it can be named in backend-generic code, and on a GPU it is cuSOLVER's
// tuned implementation of the same algorithm (Halko, Martinsson & Tropp) instead of milora's gemm + QR
// loop.
//
// The difference from RandomizedSVD on CUDA: cuSOLVER draws its own Gaussian sketch, so an adapter
// made with it is not the one RandomizedSVD makes on the CPU with the same seed (no seed member).
// As for every solver, the adapter builds W' from the factors produced, so the layer's output is
// unchanged at init whatever the accuracy. Which of the two is faster on a GPU is cuda_bench's
// init_pissa_cusolver_randomized row against init_pissa_randomized.
#pragma once

#include <string_view>

#include "milora/core/spectral_solver.hpp"
#include "milora/spectral/randomized.hpp"

namespace milora {

struct CusolverRandomizedSVD {
  static constexpr std::string_view name = "cusolver-randomized";
  /// p: the sketch has r + p columns (capped at min(m, n)); RandomizedSVD::same_as_rank means p = r.
  Index oversampling = RandomizedSVD::same_as_rank;
  int power_iterations = 6;  ///< q, as RandomizedSVD's

  /// The r largest singular triplets (approximate), sigma descending.
  template <Backend B>
  Triplets<B> top(const_view_t<B> w, Index r) const {
    if constexpr (RandomizedSvdBackend<B>) {
      detail::check_triplet_count(r, B::rows(w), B::cols(w), name);
      if (oversampling < RandomizedSVD::same_as_rank || power_iterations < 0)
        throw value_error(detail::concat("CusolverRandomizedSVD: oversampling ", oversampling, " and power_iterations ",
                                         power_iterations, " must be >= 0"));
      const Index p = oversampling == RandomizedSVD::same_as_rank ? r : oversampling;
      return B::svd_randomized_top(w, r, p, Index(power_iterations));
    } else {
      return RandomizedSVD{.oversampling = oversampling, .power_iterations = power_iterations}.template top<B>(w, r);
    }
  }
};

}  // namespace milora
