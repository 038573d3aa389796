// The step PiSSA and MiLoRA share: turn r singular triplets into adapter factors.
//
// With d = sqrt(sigma / s):  A = diag(d) Vt (r x in),  B = U diag(d) (out x r),
// so s*B*A = U diag(sigma) Vt, the part of W the adapter takes over. Dividing sigma by s before the
// square root is PEFT's formula (tuners/lora/layer.py, pissa_init); with MiLoRA's alpha = r, s = 1.
//
// Sign convention. A singular pair (u_i, v_i) is only defined up to a common sign, and LAPACK
// implementations, the row-/column-major call, cuSOLVER and the randomized solvers each pick their
// own. We fix it here, once for every solver: each row of A gets its largest-magnitude entry
// positive (the first one on ties; scikit-learn's svd_flip does the same on V). The product s*B*A
// does not change; what it buys is that the same W and rank give the same A and B on every backend
// and with every solver, so adapters and checkpoints can be compared across them.
#pragma once

#include <cmath>
#include <limits>
#include <string_view>
#include <vector>

#include "milora/core/init_policy.hpp"
#include "milora/core/spectral_solver.hpp"

namespace milora {

/// A = diag(sqrt(sigma/s)) Vt, B = U diag(sqrt(sigma/s)), residual = true. Public: a user's own
/// spectral policy (docs/extending.md) calls it too.
template <Backend B>
AdapterFactors<B> factors_from_triplets(Triplets<B> t, double scale) {
  using T = scalar_t<B>;
  const Index r = B::cols(t.S), n = B::cols(t.Vt);
  std::vector<T> d = B::to_host(t.S);          // r values: cheap on any backend
  const std::vector<T> vt = B::to_host(t.Vt);  // r x in: small next to W, read once at init
  for (Index i = 0; i < r; ++i) {
    Index arg = 0;
    for (Index j = 1; j < n; ++j)
      if (std::abs(vt[std::size_t(i * n + j)]) > std::abs(vt[std::size_t(i * n + arg)])) arg = j;
    const double sign = vt[std::size_t(i * n + arg)] < T(0) ? -1.0 : 1.0;
    d[std::size_t(i)] = static_cast<T>(sign * std::sqrt(static_cast<double>(d[std::size_t(i)]) / scale));
  }
  const auto signed_root = B::from_host(1, r, d);  // the sign is applied to both factors
  B::scale_rows(t.Vt, signed_root);
  B::scale_columns(t.U, signed_root);
  return {std::move(t.Vt), std::move(t.U), /*residual=*/true};
}

/// Throws value_error when a singular value the adapter would start from is zero (an all-zero or
/// exactly rank-deficient W): A and B would both be zero in that direction, where no gradient ever
/// reaches them, so the adapter could never train it. Small but non-zero values are fine: Adam
/// scales their updates up. `policy` names the init in the message.
template <Backend B>
void require_nonzero_singular_values(const_view_t<B> w, const Triplets<B>& t, std::string_view policy) {
  using T = scalar_t<B>;
  const std::vector<T> s = B::to_host(t.S);
  Index zero = 0;
  for (T x : s) zero += !(std::abs(x) >= std::numeric_limits<T>::min());
  if (zero == 0) return;
  throw value_error(detail::concat(policy, " init: ", zero, " of the ", s.size(), " singular values it starts the adapter from are 0 (W ",
                                   detail::shape_str(B::rows(w), B::cols(w)),
                                   B::squared_norm(w) == 0 ? " is all zero" : " is rank-deficient",
                                   "): A and B would both be 0 there and never receive a gradient. Use a smaller rank, or "
                                   "LoRA's KaimingUniform init for this weight"));
}

}  // namespace milora
