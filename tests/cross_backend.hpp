// One comparison for any two backends: the same weights and the same seed must give the same
// adapters, outputs, gradients, AdamW steps and merged weight. Used for Eigen vs xtensor
// (test_cross_backend.cpp) and Eigen vs CUDA (cuda/test_parity.cpp), with the tolerance each states.
//
// Different LAPACK / cuSOLVER call paths pick different signs for singular vectors;
// factors_from_triplets fixes the sign, which is what makes PiSSA and MiLoRA comparable at all.
#pragma once

#include <algorithm>
#include <utility>

#include "test_util.hpp"

namespace test {

// Distinct, well separated singular values (4 down to 0.4, gaps 0.24): single singular vectors, not
// only subspaces, are then determined to ~eps * sigma_max / gap = 1e-6 in float.
inline HostMatrix cross_backend_weight(Index out, Index in) {
  const Index k = std::min(out, in);
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) s[std::size_t(i)] = 4.0 - 3.6 * double(i) / double(k - 1);
  return with_spectrum(out, in, s, 71);
}

// Relative Frobenius distance <= tol, absolute where the reference is exactly zero (LoRA's B at init).
inline bool same_within(const HostMatrix& got, const HostMatrix& want, double tol) {
  return (got - want).norm() <= tol * std::max(want.norm(), 1e-30);
}

/// The layer an adapter of this type wraps, with weight w0 (rounded to bf16 for Bf16Weights), and
/// its weight on the host.
template <class Adapter, class B>
auto layer_for(const HostMatrix& w0) {
  if constexpr (std::is_same_v<typename Adapter::weight_storage, milora::Bf16Weights>)
    return milora::Bf16Linear<B>(device_bf16<B>(w0));
  else
    return milora::Linear<B>(device<B>(w0));
}
template <class Adapter, class Layer>
HostMatrix layer_weight(const Layer& layer) {
  using B = typename Adapter::backend;
  if constexpr (std::is_same_v<typename Adapter::weight_storage, milora::Bf16Weights>)
    return host_bf16<B>(layer.weight());
  else
    return host<B>(layer.weight());
}

/// Two adapters of one method on two backends (e.g. milora::MiLoRA<B1>, milora::MiLoRA<B2>) on an
/// out x in layer: init, three forward / backward / AdamW steps, merge. The first is the reference.
template <class Adapter1, class Adapter2>
void compare_backends(Index out, Index in, double tol) {
  using B1 = typename Adapter1::backend;
  using B2 = typename Adapter2::backend;
  CAPTURE(out);
  CAPTURE(in);
  const auto same = [tol](const HostMatrix& got, const HostMatrix& want) { return same_within(got, want, tol); };
  const HostMatrix w0 = cross_backend_weight(out, in), x = random_normal(6, in, 72), dy = random_normal(6, out, 73);
  const milora::AdapterConfig cfg{.rank = 4, .alpha = 8, .seed = 1234};
  auto l1 = layer_for<Adapter1, B1>(w0);
  auto l2 = layer_for<Adapter2, B2>(w0);
  Adapter1 a1(l1, cfg);
  Adapter2 a2(l2, cfg);

  CHECK(same(host<B2>(a2.A()), host<B1>(a1.A())));
  CHECK(same(host<B2>(a2.B()), host<B1>(a1.B())));
  CHECK(same(layer_weight<Adapter2>(l2), layer_weight<Adapter1>(l1)));

  auto opt1 = milora::AdamW<B1>({.lr = 1e-2});
  auto opt2 = milora::AdamW<B2>({.lr = 1e-2});
  opt1.add_all(a1.parameters());
  opt2.add_all(a2.parameters());
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    auto y1 = B1::zeros(6, out), h1 = B1::zeros(6, cfg.rank), dx1 = B1::zeros(6, in);
    auto y2 = B2::zeros(6, out), h2 = B2::zeros(6, cfg.rank), dx2 = B2::zeros(6, in);
    a1.forward(device<B1>(x), y1, h1);
    a2.forward(device<B2>(x), y2, h2);
    CHECK(same(host<B2>(y2), host<B1>(y1)));
    opt1.zero_grad();
    opt2.zero_grad();
    a1.backward(device<B1>(x), h1, device<B1>(dy), dx1);
    a2.backward(device<B2>(x), h2, device<B2>(dy), dx2);
    CHECK(same(host<B2>(dx2), host<B1>(dx1)));
    CHECK(same(host<B2>(a2.grad_A()), host<B1>(a1.grad_A())));
    CHECK(same(host<B2>(a2.grad_B()), host<B1>(a1.grad_B())));
    opt1.step();
    opt2.step();
    CHECK(same(host<B2>(a2.A()), host<B1>(a1.A())));
    CHECK(same(host<B2>(a2.B()), host<B1>(a1.B())));
  }
  a1.merge();
  a2.merge();
  CHECK(same(layer_weight<Adapter2>(l2), layer_weight<Adapter1>(l1)));
}

}  // namespace test
