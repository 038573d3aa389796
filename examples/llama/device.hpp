// The LLaMA on a device and a weight storage named at run time: run a piece of code on
// EigenBackend<float> ("cpu") or, in a program built with the LLaMA's CUDA kernels
// (MILORA_LLAMA_CUDA), on CudaBackend<float> ("cuda"); with float32 or bf16 frozen projections.
//
// The code is a lambda templated on the backend, written once:
//
//   llama::on_device(device, "milora-eval", [&]<class BE>() { ... Llama<BE> ... });
//
// Without a usable GPU, or in a build without the CUDA toolkit, "cuda" is refused before the lambda
// runs (device_error / value_error), with a message that says which, so a tool fails before it
// writes anything.
#pragma once

#include <string>
#include <type_traits>

#include "kernels_cpu.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/weight_storage.hpp"
#if defined(MILORA_LLAMA_CUDA)
#include "kernels_cuda.hpp"
#endif

namespace llama {

template <class Run>
void on_device(const std::string& device, [[maybe_unused]] const std::string& tool, Run&& run) {
  if (device == "cpu") {
    run.template operator()<milora::EigenBackend<float>>();
    return;
  }
  if (device != "cuda") throw milora::value_error("--device '" + device + "': expected cpu or cuda");
#if defined(MILORA_LLAMA_CUDA)
  if (const std::string why = milora::cuda::no_device_reason(); !why.empty())
    throw milora::device_error("--device cuda: no usable CUDA device (" + why + ")");
  run.template operator()<milora::CudaBackend<float>>();
#else
  throw milora::value_error("--device cuda: this " + tool + " was built without the CUDA toolkit");
#endif
}

/// Runs run.template operator()<Weights>() with the storage --dtype names: milora::NativeWeights for
/// float32, milora::Bf16Weights for bf16 (the second template argument of Llama).
template <class Run>
void with_dtype(const std::string& dtype, Run&& run) {
  if (dtype == "float32") run.template operator()<milora::NativeWeights>();
  else if (dtype == "bf16") run.template operator()<milora::Bf16Weights>();
  else throw milora::value_error("--dtype '" + dtype + "': expected float32 or bf16");
}

inline constexpr const char* kTf32NeedsCuda = "--tf32 needs --device cuda (TF32 is a tensor-core format)";

/// Refuses --tf32 without --device cuda, before any work.
inline void check_tf32_device(const std::string& device, bool tf32) {
  if (tf32 && device != "cuda") throw milora::value_error(kTf32NeedsCuda);
}

/// --tf32: float matrix products on tensor cores in TF32 (milora::cuda::Context::allow_tf32), on
/// CudaBackend only; value_error on the CPU. Call it after the adapters are initialised, so that
/// the initialisation's SVDs and QRs keep full float precision.
template <class BE>
void use_tf32(bool on) {
#if defined(MILORA_LLAMA_CUDA)
  if constexpr (std::is_same_v<BE, milora::CudaBackend<float>>) {
    milora::cuda::context().allow_tf32(on);
    return;
  }
#endif
  if (on) throw milora::value_error(kTf32NeedsCuda);
}

}  // namespace llama
