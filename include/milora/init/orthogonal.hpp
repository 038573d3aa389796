// OrthogonalInit: PEFT's init_lora_weights="orthogonal". Both factors start random and non-zero
// (so both receive a gradient at step one, unlike LoRA's B = 0), yet B*A = 0, so the base is left
// alone and the output is unchanged:
//
//   Q = qr(X), X ~ N(0, 1) r x r;  q_odd = Q's rows 0, 2, 4, ...;  q_even = rows 1, 3, 5, ...
//   A = (G_A q_odd)^T / 10   (G_A ~ N(0, 1), in x r/2)      B = G_B q_even / 10   (G_B ~ N(0, 1), out x r/2)
//   B*A = G_B (q_even q_odd^T) G_A^T / 100 = 0, as distinct rows of an orthogonal Q are orthogonal.
//
// The rank must be even. https://datta0.github.io/posts/rethink-lora-init/#orthogonal-initialisation
// (2024), as PEFT implements it (LoraLayer.orthogonal_init). The random numbers are milora's own
// counter-based streams (cfg.seed), not torch's.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "milora/core/errors.hpp"
#include "milora/core/init_policy.hpp"

namespace milora {

struct OrthogonalInit {
  static constexpr std::string_view name = "orthogonal";
  static constexpr bool residual = false;  ///< B*A = 0: the base is left as it is
  double scale = 0.1;  ///< PEFT divides both factors by 10

  template <Backend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    using T = scalar_t<B>;
    const Index r = cfg.rank, h = r / 2, out = B::rows(w), in = B::cols(w);
    if (r % 2 != 0)
      throw value_error(detail::concat("orthogonal init needs an even rank (its two halves are orthogonal), got ", r));
    auto x = B::zeros(r, r);
    B::fill_normal(x, 0.0, 1.0, cfg.seed);
    const std::vector<T> q = B::to_host(B::qr(x).Q);  // r x r orthogonal, row-major
    std::vector<T> odd(std::size_t(h * r)), even(std::size_t(h * r));
    for (Index i = 0; i < h; ++i)
      for (Index j = 0; j < r; ++j) {
        odd[std::size_t(i * r + j)] = q[std::size_t(2 * i * r + j)];
        even[std::size_t(i * r + j)] = q[std::size_t((2 * i + 1) * r + j)];
      }
    const auto q_odd = B::from_host(h, r, odd), q_even = B::from_host(h, r, even);
    auto ga = B::zeros(in, h), gb = B::zeros(out, h);
    B::fill_normal(ga, 0.0, 1.0, cfg.seed ^ 0xA5A5A5A5A5A5A5A5ULL);
    B::fill_normal(gb, 0.0, 1.0, cfg.seed ^ 0x5A5A5A5A5A5A5A5AULL);
    AdapterFactors<B> f{B::zeros(r, in), B::zeros(out, r), residual};
    B::gemm(T(scale), q_odd, Trans::yes, ga, Trans::yes, 0, f.A);  // (G_A q_odd)^T = q_odd^T G_A^T
    B::gemm(T(scale), gb, Trans::no, q_even, Trans::no, 0, f.B);
    return f;
  }
};

}  // namespace milora
