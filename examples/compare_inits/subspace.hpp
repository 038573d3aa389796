// The subspace analysis of the MiLoRA paper (Wang et al. 2025, sec. 5): where in the pretrained
// weight's spectrum does fine-tuning put its update, and how much does it disturb the principal
// directions that pre-training built?
#pragma once

#include <algorithm>
#include <cmath>

#include "milora/core/backend.hpp"

namespace compare {

using milora::Index;

struct SubspaceStats {
  double top_energy = 0;     // ||U_r^T dW V_r||^2 / ||dW||^2: the update's share in W0's top-r subspace
  double bottom_energy = 0;  // the same for the r smallest singular directions
  double sigma_shift = 0;    // mean over the top k of |sigma_i(W1) - sigma_i(W0)| / sigma_i(W0)
  double vector_shift = 0;   // mean over the top k of 1 - |<u_i(W0), u_i(W1)>|
};

/// Stats of the update W1 - W0 (both out x in) against W0's SVD.
template <milora::Backend BE>
SubspaceStats subspace_stats(milora::const_view_t<BE> w0, milora::const_view_t<BE> w1, Index r, Index k) {
  using milora::Trans;
  const Index m = BE::rows(w0), n = BE::cols(w0), p = std::min(m, n);
  r = std::min(r, p);
  k = std::min(k, p);
  auto dw = BE::clone(w1);
  BE::axpy(-1, w0, dw);
  const auto s0 = BE::svd(w0), s1 = BE::svd(w1);
  SubspaceStats st;
  const double total = BE::squared_norm(dw);
  if (total > 0) {
    auto energy = [&](Index first) {  // ||U_r^T dW V_r||^2 for singular indices first .. first + r - 1
      auto u = BE::cblock(s0.U, 0, first, m, r);
      auto vt = BE::cblock(s0.Vt, first, 0, r, n);
      auto t = BE::zeros(r, n), c = BE::zeros(r, r);
      BE::gemm(1, u, Trans::yes, dw, Trans::no, 0, t);
      BE::gemm(1, t, Trans::no, vt, Trans::yes, 0, c);
      return BE::squared_norm(c) / total;
    };
    st.top_energy = energy(0);
    st.bottom_energy = energy(p - r);
  }
  const auto sig0 = BE::to_host(s0.S), sig1 = BE::to_host(s1.S);
  const auto u0 = BE::to_host(s0.U), u1 = BE::to_host(s1.U);
  for (Index i = 0; i < k; ++i) {
    st.sigma_shift += std::abs(double(sig1[std::size_t(i)]) - double(sig0[std::size_t(i)])) / double(sig0[std::size_t(i)]);
    double dot = 0;
    for (Index j = 0; j < m; ++j) dot += double(u0[std::size_t(j * p + i)]) * double(u1[std::size_t(j * p + i)]);
    st.vector_shift += 1 - std::abs(dot);
  }
  st.sigma_shift /= double(k);
  st.vector_shift /= double(k);
  return st;
}

}  // namespace compare
