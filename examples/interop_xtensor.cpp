// interop_xtensor: adapt xtensor weights that another framework owns, in place.
//
// The xtensor backend's matrix is xt::xtensor<T, 2> itself, so an existing tensor is wrapped
// without a copy; milora::xmatrix_ref does the same for other row-major containers and for views,
// e.g. one projection inside a fused QKV weight. PiSSA / MiLoRA write the residual W' straight into
// that memory. (examples/interop_eigen.cpp shows the same with Eigen::Matrix and raw buffers.)
#include <cstdio>

#include <xtensor/xview.hpp>

#include "milora/backend/xtensor.hpp"
#include "milora/milora.hpp"

using XB = milora::XtensorBackend<float>;

// ||a - b|| / ||b|| on any two xtensor expressions.
template <class A, class B>
double rel_err(const A& a, const B& b) {
  return std::sqrt(double(xt::sum(xt::square(a - b))())) / std::sqrt(double(xt::sum(xt::square(b))()));
}

int main() {
  // 1. An existing xt::xtensor<float, 2> weight (out x in, row-major like PyTorch's).
  xt::xtensor<float, 2> w = XB::zeros(32, 24);
  XB::fill_normal(w, 0.0, 0.05, 1);
  const xt::xtensor<float, 2> w0 = w;
  milora::WeightRef<XB> layer(w);  // a view of w, no copy
  milora::MiLoRA<XB> adapter(layer, {.rank = 4, .alpha = 4});
  // The residual is in w itself, and the adapted layer computes what the original one did.
  xt::xtensor<float, 2> x = XB::zeros(5, 24);
  XB::fill_normal(x, 0.0, 1.0, 2);
  const xt::xtensor<float, 2> y = adapter.forward(x);
  const xt::xtensor<float, 2> y0 = xt::linalg::dot(x, xt::transpose(w0));
  const double out_err = rel_err(y, y0);
  const bool shared = adapter.weight().data() == w.data();

  // 2. One projection of a fused QKV weight (3d x d): adapt V's rows only, in place.
  const std::size_t d = 16;
  xt::xtensor<float, 2> qkv = XB::zeros(3 * d, d);
  XB::fill_normal(qkv, 0.0, 0.05, 3);
  const xt::xtensor<float, 2> qkv0 = qkv;
  auto v_rows = xt::view(qkv, xt::range(2 * d, 3 * d), xt::all());
  milora::WeightRef<XB> v_proj(milora::xmatrix_ref(v_rows));
  milora::PiSSA<XB> v_adapter(v_proj, {.rank = 2, .alpha = 2});
  const auto q_and_k = xt::view(qkv, xt::range(0, 2 * d), xt::all());
  const bool qk_untouched = q_and_k == xt::view(qkv0, xt::range(0, 2 * d), xt::all());
  const xt::xtensor<float, 2> v_after = v_rows;
  const xt::xtensor<float, 2> v_rebuilt =
      v_after + float(v_adapter.scale()) * xt::linalg::dot(v_adapter.B(), v_adapter.A());
  const double v_err = rel_err(v_rebuilt, xt::view(qkv0, xt::range(2 * d, 3 * d), xt::all()));

  std::printf("xt::xtensor weight: storage %s, output change after MiLoRA init %.1e\n",
              shared ? "shared" : "COPIED", out_err);
  std::printf("fused QKV: Q and K rows %s, V: W' + s*B*A = W to %.1e\n",
              qk_untouched ? "untouched" : "CHANGED", v_err);
  return shared && qk_untouched && out_err < 1e-5 && v_err < 1e-5 ? 0 : 1;
}
