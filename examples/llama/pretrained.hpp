// A Llama's weights in and out of Hugging Face folders (config.json + safetensors), and random
// weights with transformers' initialisation.
//
//   from_pretrained<Model>(hf)      the folder's weights, checked against its config first
//   save_pretrained(model, dir)     config.json + model.safetensors (F32): what from_pretrained and
//                                   transformers read
//   random_model<Model>(config, s)  normal(0, initializer_range) weights, unit norms
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/host_matrix.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace llama {

/// A model with the weights of a Hugging Face folder (config.json + safetensors), checked against
/// the config before anything is loaded; weights are converted to the backend's scalar and
/// refused, with their name, if they hold NaN or Inf.
template <class Model>
std::unique_ptr<Model> from_pretrained(const milora::io::HFModel& hf) {
  using BE = typename Model::backend;
  const LlamaConfig config = LlamaConfig::from_model(hf);
  config.check(hf);
  return std::make_unique<Model>(config, [&](const std::string& name, Index, Index) {
    const auto w = hf.load<typename Model::scalar>(name);
    milora::io::require_finite(w, milora::detail::concat("'", name, "' of ", hf.dir().string()));
    return milora::io::to_backend<BE>(w);
  });
}

/// Writes `model`'s base weights (adapters merged or not, as they are) as a Hugging Face folder:
/// config.json and model.safetensors (F32), which from_pretrained and transformers read.
template <class Model>
void save_pretrained(Model& model, const std::filesystem::path& dir) {
  using BE = typename Model::backend;
  std::filesystem::create_directories(dir);
  milora::io::SafetensorsWriter w;
  w.set_metadata({{"format", "pt"}});
  const auto specs = model.config().weights();
  for (const auto& spec : specs) {
    const auto& m = model.weight(spec.name);
    if (spec.rows == 1) w.add(spec.name, milora::io::to_host_matrix<BE>(m), milora::io::DType::F32, std::vector<std::int64_t>{spec.cols});
    else w.add(spec.name, milora::io::to_host_matrix<BE>(m), milora::io::DType::F32);
  }
  w.write(dir / milora::io::kModelFile);
  milora::io::write_json_file(dir / "config.json", config_json(model.config()));
}

/// A model with transformers' initialisation (normal(0, initializer_range) weights, unit norms, zero
/// biases), each weight drawn from its own stream of `seed`: for tests, benchmarks and pre-training.
template <class Model>
std::unique_ptr<Model> random_model(const LlamaConfig& config, std::uint64_t seed, double initializer_range = 0.02) {
  using BE = typename Model::backend;
  using T = typename Model::scalar;
  std::uint64_t stream = seed;
  return std::make_unique<Model>(config, [&](const std::string& name, Index rows, Index cols) {
    auto m = BE::zeros(rows, cols);  // a bias stays zero
    if (name.find("norm") != std::string::npos) BE::add_row_broadcast(m, BE::from_host(1, cols, std::vector<T>(std::size_t(cols), T(1))));
    else if (!name.ends_with(".bias")) BE::fill_normal(m, 0.0, initializer_range, stream);
    ++stream;
    return m;
  });
}

}  // namespace llama
