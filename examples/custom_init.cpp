// custom_init: plug a policy of your own (my_init_policy.hpp) into milora's Adapter, next to the
// built-in ones, and check what it promised.
#include <cstdio>

#include "milora/milora.hpp"
#include "my_init_policy.hpp"
#include "synthetic_weights.hpp"

using B = milora::EigenBackend<double>;

int main() {
  const B::matrix w = milora::examples::with_spectrum<B>(64, 48, milora::examples::llm_like_spectrum(48), 7);
  milora::Linear<B> layer(w);

  // Your policy is a template argument, exactly like LoRA / PiSSA / MiLoRA's.
  milora::Adapter<B, my::MinorDirectionsZeroB<>> adapter(layer, {.rank = 4, .alpha = 4});

  // Promise 1: base unchanged and B = 0, so the output is unchanged.
  const double base_change = (layer.weight() - w).norm();
  // Promise 2: A's rows lie in W's minor right-singular subspace (overlap 1 = same subspace).
  const auto ref = B::svd(w);
  const B::matrix v_minor = ref.Vt.bottomRows(4);
  const B::matrix a_unit = adapter.A().rowwise().normalized();
  const double overlap = (a_unit * v_minor.transpose()).squaredNorm() / 4;

  std::printf("policy %s: base change %.1e, ||B|| = %.1e, overlap of A with minor subspace %.6f\n",
              std::string(decltype(adapter)::init_policy::name).c_str(), base_change,
              adapter.B().norm(), overlap);
  return base_change == 0 && adapter.B().norm() == 0 && overlap > 0.9999 ? 0 : 1;
}
