// Random weights with a prescribed singular spectrum, for examples and benchmarks.
//
// Pretrained LLM weights have a power-law singular spectrum over a noise floor: a few large
// singular values carry most of the energy, and the minor tail is flat and clustered. We build
// W = U diag(sigma) V^T from random orthonormal U, V (QR of Gaussian matrices) so that the
// spectrum is known exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "milora/core/backend.hpp"

namespace milora::examples {

/// sigma_i = (i + 1)^(-decay) + floor, i = 0 .. k-1 (descending), scaled so sigma_0 = top.
inline std::vector<double> llm_like_spectrum(Index k, double decay = 0.6, double floor = 0.02,
                                             double top = 1.0) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) s[std::size_t(i)] = std::pow(double(i + 1), -decay) + floor;
  const double norm = top / s[0];
  for (auto& x : s) x *= norm;
  return s;
}

/// out x in matrix with the given singular values (k = min(out, in) of them).
template <Backend B>
matrix_t<B> with_spectrum(Index out, Index in, const std::vector<double>& sigma, std::uint64_t seed) {
  const Index k = std::min(out, in);
  auto orthonormal = [](Index n, Index cols, std::uint64_t s) {
    auto g = B::zeros(n, cols);
    B::fill_normal(g, 0.0, 1.0, s);
    return B::qr(g).Q;
  };
  auto U = orthonormal(out, k, seed), V = orthonormal(in, k, seed ^ 0x5bd1e995ULL);
  std::vector<scalar_t<B>> s(sigma.begin(), sigma.begin() + k);
  B::scale_columns(U, B::from_host(1, k, s));
  auto w = B::zeros(out, in);
  B::gemm(1, U, Trans::no, V, Trans::yes, 0, w);
  return w;
}

}  // namespace milora::examples
