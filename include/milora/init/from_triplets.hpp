// The step PiSSA and MiLoRA share: turn r singular triplets into adapter factors.
//
// With d = sqrt(sigma / s):  A = diag(d) Vt (r x in),  B = U diag(d) (out x r),
// so s*B*A = U diag(sigma) Vt, the part of W the adapter takes over. Dividing sigma by s before the
// square root is PEFT's formula (tuners/lora/layer.py, pissa_init); with MiLoRA's alpha = r, s = 1.
#pragma once

#include <cmath>
#include <vector>

#include "milora/core/init_policy.hpp"
#include "milora/core/spectral_solver.hpp"

namespace milora {

/// A = diag(sqrt(sigma/s)) Vt, B = U diag(sqrt(sigma/s)), residual = true. Public: a user's own
/// spectral policy (docs/extending.md) calls it too.
template <Backend B>
AdapterFactors<B> factors_from_triplets(Triplets<B> t, double scale) {
  std::vector<scalar_t<B>> d = B::to_host(t.S);  // r values: cheap on any backend
  for (auto& x : d) x = static_cast<scalar_t<B>>(std::sqrt(static_cast<double>(x) / scale));
  const auto root = B::from_host(1, static_cast<Index>(d.size()), d);
  B::scale_rows(t.Vt, root);
  B::scale_columns(t.U, root);
  return {std::move(t.Vt), std::move(t.U), /*residual=*/true};
}

}  // namespace milora
