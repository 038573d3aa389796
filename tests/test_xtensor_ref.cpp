// XMatrixRef, the xtensor backend's view: in-place adaptation of tensors that other code owns.
#include "test_util.hpp"

#if defined(MILORA_HAS_XTENSOR)

#include <xtensor/xarray.hpp>
#include <xtensor/xmanipulation.hpp>
#include <xtensor/xview.hpp>

using namespace test;
using XB = milora::XtensorBackend<float>;

TEST_CASE("xtensor: an existing xt::xtensor<float, 2> is adapted in place") {
  xt::xtensor<float, 2> w = XB::zeros(12, 9);  // the user's tensor
  XB::fill_normal(w, 0, 1, 7);
  const HostMatrix w0 = host<XB>(w);
  const float* storage = w.data();
  milora::WeightRef<XB> layer(w);  // no copy: a view of w
  milora::MiLoRA<XB> adapter(layer, {.rank = 3, .alpha = 3});
  CHECK(w.data() == storage);
  CHECK(rel_err(host<XB>(w), w0) > 1e-3);  // the residual was written into w itself
  CHECK(rel_err(host<XB>(w) + host<XB>(adapter.B()) * host<XB>(adapter.A()), w0) <= 1e-5);
}

TEST_CASE("xtensor: xmatrix_ref accepts row-major containers and strided row windows") {
  xt::xarray<double> a = xt::reshape_view(xt::arange<double>(0, 42), {6, 7});
  auto v = milora::xmatrix_ref(a);
  CHECK(v.rows() == 6);
  CHECK(v.cols() == 7);
  CHECK(v(2, 3) == 17.0);

  // A column window of a row-major matrix is strided but has adjacent columns: accepted, in place.
  auto window = xt::view(a, xt::range(1, 4), xt::range(2, 5));
  auto w = milora::xmatrix_ref(window);
  CHECK(w.rows() == 3);
  CHECK(w.cols() == 3);
  CHECK(w.row_stride() == 7);
  milora::XtensorBackend<double>::scale(w, 0);
  CHECK(a(1, 2) == 0.0);
  CHECK(a(3, 4) == 0.0);
  CHECK(a(1, 1) == 8.0);  // left of the window
  CHECK(a(4, 2) == 30.0);  // below it
}

TEST_CASE("xtensor: layouts that are not row-major are refused with the shape and strides") {
  xt::xtensor<float, 2, xt::layout_type::column_major> cm = xt::zeros<float>({4, 3});
  CHECK_THROWS_WITH_AS(milora::xmatrix_ref(cm), doctest::Contains("strides (1, 4)"), milora::shape_error);
  xt::xtensor<float, 2> rm = xt::zeros<float>({4, 3});
  auto t = xt::transpose(rm);
  CHECK_THROWS_AS(milora::xmatrix_ref(t), milora::shape_error);
  xt::xarray<float> cube = xt::zeros<float>({2, 2, 2});
  CHECK_THROWS_WITH_AS(milora::xmatrix_ref(cube), doctest::Contains("3 dimensions"), milora::shape_error);
}

TEST_CASE("xtensor: views check their bounds") {
  xt::xtensor<float, 2> m = xt::zeros<float>({4, 3});
  milora::XMatrixRef<float> v(m);
  CHECK_THROWS_WITH_AS(v.block(2, 1, 3, 1), doctest::Contains("outside a 4x3"), milora::shape_error);
  CHECK_THROWS_AS(v.block(-1, 0, 1, 1), milora::shape_error);
  CHECK_THROWS_AS(milora::XMatrixRef<float>(m.data(), 4, 3, 2), milora::shape_error);  // stride < cols
  CHECK(v.block(1, 1, 2, 2).data() == m.data() + 4);
}

#endif  // MILORA_HAS_XTENSOR
