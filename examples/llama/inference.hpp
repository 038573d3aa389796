// What milora-eval and milora-generate share: a pretrained model with an optional PEFT adapter
// merged in, on the device and in the storage named at run time.
#pragma once

#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "device.hpp"
#include "peft_bridge.hpp"
#include "pretrained.hpp"

namespace llama {

/// The model in `model_dir` on backend BE, its projections stored as Weights says, with the
/// plain-LoRA adapter in `adapter_dir` (if not empty) merged into its weights (rounded once per
/// entry for bf16). A milora-finetune checkpoint of PiSSA / MiLoRA is applied through its
/// plain_lora/ folder, the form that fits the original model.
template <class BE, class Weights = milora::NativeWeights>
std::unique_ptr<Llama<BE, Weights>> load_for_inference(const std::string& model_dir, const std::string& adapter_dir) {
  const milora::io::HFModel hf(model_dir);
  auto model = from_pretrained<Llama<BE, Weights>>(hf);
  if (!adapter_dir.empty()) {
    std::filesystem::path dir = adapter_dir;
    if (std::filesystem::exists(dir / "plain_lora" / milora::io::kAdapterConfigFile)) {
      dir /= "plain_lora";
      std::cerr << "applying " << dir.string() << " (the residual adapter converted for the original model)\n";
    }
    merge_peft_adapter(*model, milora::io::load_peft_adapter<float>(dir), dir.string());
  }
  return model;
}

/// run.template operator()<BE>(model) with the model of load_for_inference on `device` ("cpu" or
/// "cuda", on_device) with its projections stored as `dtype` says ("float32" or "bf16",
/// with_dtype); `tool` names the program in on_device's refusals.
template <class Run>
void with_inference_model(const std::string& model_dir, const std::string& adapter_dir, const std::string& device,
                          const std::string& dtype, const std::string& tool, Run&& run) {
  on_device(device, tool, [&]<class BE>() {
    with_dtype(dtype, [&]<class Weights>() {
      auto model = load_for_inference<BE, Weights>(model_dir, adapter_dir);
      run.template operator()<BE>(*model);
    });
  });
}

}  // namespace llama
