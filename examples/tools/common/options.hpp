// The options several tools share, declared once: the LLaMA tools' --device and --dtype, and
// --method / --solver, whose values and help come from milora's registry of init methods
// (milora/init/registry.hpp), so a method added there appears in every tool.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"
#include "milora/init/registry.hpp"

namespace milora::tools {

/// --device: where the reference LLaMA runs (llama::on_device). `note` is appended to the help.
inline CLI::Option* add_device_option(CLI::App& app, std::string& device, const std::string& note = "") {
  return app.add_option("--device", device, "cpu | cuda (CudaBackend<float>; the same files as on the CPU)" + note)
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
}

/// --dtype: the storage of the LLaMA's frozen projections (llama::with_dtype).
inline CLI::Option* add_dtype_option(CLI::App& app, std::string& dtype) {
  return app
      .add_option("--dtype", dtype,
                  "storage of the frozen projection weights: float32, or bf16 (half the memory; products of bf16-rounded "
                  "operands accumulated in float32; adapters, optimizer state, embedding, norms, head and activations "
                  "stay float32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"float32", "bf16"}));
}

/// What a LLaMA inference tool runs: the model folder, an optional adapter, the device and storage.
struct InferenceOptions {
  std::string model, adapter, device = "cpu", dtype = "float32";
};

/// --model, --adapter, --device, --dtype.
inline void add_inference_options(CLI::App& app, InferenceOptions& o) {
  app.add_option("--model", o.model, "Hugging Face LLaMA folder")->required()->check(CLI::ExistingDirectory);
  app.add_option("--adapter", o.adapter, "PEFT LoRA adapter folder (or a milora-finetune checkpoint)")->check(CLI::ExistingDirectory);
  add_device_option(app, o.device);
  add_dtype_option(app, o.dtype);
}

/// "a, b and c".
inline std::string join_words(const std::vector<std::string>& words) {
  std::string out;
  for (std::size_t i = 0; i < words.size(); ++i) out += (i == 0 ? "" : i + 1 == words.size() ? " and " : ", ") + words[i];
  return out;
}

/// The methods of the registry that need calibration data, as words: "corda-kpm, corda-ipm, eva and lora-ga".
template <Backend B>
std::string calibrated_method_names() {
  std::vector<std::string> names;
  for (const auto& m : init_methods<B>())
    if (m.calibration != Calibration::none) names.emplace_back(m.name);
  return join_words(names);
}

/// --method: one of the registry's methods. The help lists them with what each implies.
template <Backend B>
CLI::Option* add_method_option(CLI::App& app, std::string& method, const std::string& calibrated_note) {
  std::string help, names;
  for (const auto& m : init_methods<B>()) {
    help += (help.empty() ? "" : " | ") + std::string(m.name);
    std::vector<std::string> notes;
    if (!m.peft_name.empty()) notes.push_back("PEFT \"" + std::string(m.peft_name) + "\"");
    if (m.changes_base) notes.push_back("residual base");
    if (m.calibration == Calibration::input_statistics) notes.push_back("calibrated on inputs");
    if (m.calibration == Calibration::weight_gradient) notes.push_back("calibrated on gradients");
    if (!notes.empty()) help += " (" + join_words(notes) + ")";
  }
  return app.add_option("--method", method, help + ". " + calibrated_note)
      ->capture_default_str()
      ->check(CLI::IsMember(split_list(init_method_names<B>())));
}

/// --solver: exact (LAPACK) or the fast spectral solvers, for the methods that have one.
inline CLI::Option* add_solver_option(CLI::App& app, std::string& solver) {
  return app
      .add_option("--solver", solver,
                  "exact (LAPACK gesdd) | fast (randomized SVD at the major end: PiSSA, CorDA-IPM, LoRA-GA; "
                  "Cholesky-Krylov at the minor end: MiLoRA, MiCA, CorDA-KPM)")
      ->capture_default_str()
      ->check(CLI::IsMember({"exact", "fast"}));
}

}  // namespace milora::tools
