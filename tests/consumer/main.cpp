#include <milora/milora.hpp>

int main() {
  using B = milora::EigenBackend<float>;
  milora::Linear<B> layer(B::zeros(8, 6));
  B::fill_normal(layer.weight(), 0.0, 1.0, 1);
  const B::matrix w = layer.weight();
  milora::MiLoRA<B> adapter(layer, {.rank = 2, .alpha = 2});
  const float err = (layer.weight() + float(adapter.scale()) * adapter.B() * adapter.A() - w).norm();
  return err < 1e-5f * w.norm() ? 0 : 1;
}
