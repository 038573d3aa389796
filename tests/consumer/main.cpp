#include <milora/milora.hpp>
#if defined(MILORA_HAS_XTENSOR)
#include <milora/backend/xtensor.hpp>
#endif
#if defined(CONSUMER_USES_CUDA)
#include <milora/backend/cuda.hpp>
#endif
#if defined(MILORA_HAS_IO)
#include <cstdio>
#include <milora/io.hpp>
#endif

// A MiLoRA adapter keeps W' + s*B*A = W; checked through the backend's own host copies.
template <class B>
bool contract_holds() {
  milora::Linear<B> layer(B::zeros(8, 6));
  B::fill_normal(layer.weight(), 0.0, 1.0, 1);
  const auto w = B::clone(layer.weight());
  milora::MiLoRA<B> adapter(layer, {.rank = 2, .alpha = 2});
  auto rebuilt = B::clone(layer.weight());
  B::gemm(float(adapter.scale()), adapter.B(), milora::Trans::no, adapter.A(), milora::Trans::no, 1, rebuilt);
  B::axpy(-1, w, rebuilt);
  return B::squared_norm(rebuilt) < 1e-10 * B::squared_norm(w);
}

int main() {
  bool ok = contract_holds<milora::EigenBackend<float>>();
#if defined(MILORA_HAS_XTENSOR)  // the installed package exports milora::xtensor too
  ok = ok && contract_holds<milora::XtensorBackend<float>>();
#endif
#if defined(MILORA_HAS_IO)  // the file layer: a safetensors round trip
  {
    milora::io::SafetensorsWriter w;
    w.add("x", milora::io::HostMatrix<float>(1, 2, {1.5f, -2.0f}), milora::io::DType::BF16);
    w.write("consumer.safetensors");
    ok = ok && milora::io::SafetensorsFile("consumer.safetensors").load<float>("x").data == std::vector<float>{1.5f, -2.0f};
    std::remove("consumer.safetensors");
  }
#endif
#if defined(CONSUMER_USES_CUDA)  // with a GPU the contract; without one, the documented device_error
  if (milora::cuda::device_count() > 0) {
    ok = ok && contract_holds<milora::CudaBackend<float>>();
  } else {
    try {
      (void)milora::CudaBackend<float>::zeros(2, 2);
      ok = false;
    } catch (const milora::device_error&) {
    }
  }
#endif
  return ok ? 0 : 1;
}
