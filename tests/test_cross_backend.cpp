// The same weights and the same seed give the same adapters, outputs, gradients and AdamW steps on
// the Eigen and the xtensor backend (float, relative Frobenius error <= 1e-5). Different LAPACK call
// paths (gesdd on A^T vs on A) pick different signs for singular vectors; factors_from_triplets
// fixes the sign, which is what makes PiSSA and MiLoRA comparable here at all.
#include "test_util.hpp"

#if defined(MILORA_HAS_XTENSOR)

using namespace test;

namespace {

using EB = milora::EigenBackend<float>;
using XB = milora::XtensorBackend<float>;
constexpr double kTol = 1e-5;

// Distinct, well separated singular values (4 down to 0.4, gaps 0.24): single singular vectors, not
// only subspaces, are then determined to ~eps * sigma_max / gap = 1e-6 in float.
HostMatrix test_weight(Index out, Index in) {
  const Index k = std::min(out, in);
  std::vector<double> s(static_cast<std::size_t>(k));
  for (Index i = 0; i < k; ++i) s[std::size_t(i)] = 4.0 - 3.6 * double(i) / double(k - 1);
  return with_spectrum(out, in, s, 71);
}

// Relative Frobenius distance, absolute where the reference is exactly zero (LoRA's B at init).
bool same(const HostMatrix& got, const HostMatrix& want) {
  return (got - want).norm() <= kTol * std::max(want.norm(), 1e-30);
}

template <class AdapterE, class AdapterX>
void compare(Index out, Index in) {
  CAPTURE(out);
  CAPTURE(in);
  const HostMatrix w0 = test_weight(out, in), x = random_normal(6, in, 72), dy = random_normal(6, out, 73);
  const milora::AdapterConfig cfg{.rank = 4, .alpha = 8, .seed = 1234};
  milora::Linear<EB> le(device<EB>(w0));
  milora::Linear<XB> lx(device<XB>(w0));
  AdapterE ae(le, cfg);
  AdapterX ax(lx, cfg);

  CHECK(same(host<XB>(ax.A()), host<EB>(ae.A())));
  CHECK(same(host<XB>(ax.B()), host<EB>(ae.B())));
  CHECK(same(host<XB>(lx.weight()), host<EB>(le.weight())));

  // A few training steps: forward, backward (dx, dA, dB) and AdamW.
  auto opt_e = milora::AdamW<EB>({.lr = 1e-2});
  auto opt_x = milora::AdamW<XB>({.lr = 1e-2});
  opt_e.add_all(ae.parameters());
  opt_x.add_all(ax.parameters());
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    auto ye = EB::zeros(6, out), he = EB::zeros(6, cfg.rank), dxe = EB::zeros(6, in);
    auto yx = XB::zeros(6, out), hx = XB::zeros(6, cfg.rank), dxx = XB::zeros(6, in);
    ae.forward(device<EB>(x), ye, he);
    ax.forward(device<XB>(x), yx, hx);
    CHECK(same(host<XB>(yx), host<EB>(ye)));
    opt_e.zero_grad();
    opt_x.zero_grad();
    ae.backward(device<EB>(x), he, device<EB>(dy), dxe);
    ax.backward(device<XB>(x), hx, device<XB>(dy), dxx);
    CHECK(same(host<XB>(dxx), host<EB>(dxe)));
    CHECK(same(host<XB>(ax.grad_A()), host<EB>(ae.grad_A())));
    CHECK(same(host<XB>(ax.grad_B()), host<EB>(ae.grad_B())));
    opt_e.step();
    opt_x.step();
    CHECK(same(host<XB>(ax.A()), host<EB>(ae.A())));
    CHECK(same(host<XB>(ax.B()), host<EB>(ae.B())));
  }
  ae.merge();
  ax.merge();
  CHECK(same(host<XB>(lx.weight()), host<EB>(le.weight())));
}

}  // namespace

TEST_CASE("cross-backend: LoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : {std::pair<Index, Index>{24, 16}, {16, 24}}) compare<milora::LoRA<EB>, milora::LoRA<XB>>(out, in);
}
TEST_CASE("cross-backend: PiSSA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : {std::pair<Index, Index>{24, 16}, {16, 24}}) compare<milora::PiSSA<EB>, milora::PiSSA<XB>>(out, in);
}
TEST_CASE("cross-backend: MiLoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : {std::pair<Index, Index>{24, 16}, {16, 24}}) compare<milora::MiLoRA<EB>, milora::MiLoRA<XB>>(out, in);
}

#endif  // MILORA_HAS_XTENSOR
