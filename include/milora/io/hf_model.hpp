// Hugging Face model folders: config.json plus model.safetensors, or shards listed by
// model.safetensors.index.json ({"metadata": {...}, "weight_map": {tensor: shard file}}).
//
// HFModel opens a folder read-only (every shard memory-mapped and validated, the index checked
// against the shards) and loads single tensors by their transformers names
// ("model.layers.0.self_attn.q_proj.weight"). Weights come out as transformers stores them:
// out x in, row-major, which is exactly what a milora adapter wraps.
//
// write_hf_model() writes a copy of a folder with some tensors changed (a PiSSA / MiLoRA residual,
// a merged adapter): same shards, same tensor order, same dtypes, the other files copied. It
// streams one tensor at a time, so rewriting a 7B model needs memory for one matrix, not the model.
#pragma once

#include <algorithm>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/io/atomic_file.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace milora::io {

inline constexpr const char* kModelFile = "model.safetensors";
inline constexpr const char* kModelIndexFile = "model.safetensors.index.json";

class HFModel {
 public:
  explicit HFModel(const std::filesystem::path& dir) : dir_(dir) {
    using milora::detail::concat;
    if (!std::filesystem::is_directory(dir)) throw io_error(concat("model folder '", dir.string(), "' does not exist"));
    if (std::filesystem::exists(dir / "config.json")) config_ = read_json_file(dir / "config.json");
    const auto index_path = dir / kModelIndexFile;
    if (std::filesystem::exists(index_path)) {
      open_index(index_path);
    } else if (std::filesystem::exists(dir / kModelFile)) {
      shards_.push_back(std::make_unique<SafetensorsFile>(dir / kModelFile));
      for (const auto& t : shards_[0]->tensors()) where_[t.name] = 0;
    } else {
      throw io_error(concat("model folder '", dir.string(), "' has neither ", kModelFile, " nor ", kModelIndexFile));
    }
  }

  const std::filesystem::path& dir() const { return dir_; }
  /// config.json (an empty object when the folder has none).
  const nlohmann::json& config() const { return config_; }
  bool sharded() const { return sharded_; }
  std::size_t num_shards() const { return shards_.size(); }
  const SafetensorsFile& shard(std::size_t i) const { return *shards_.at(i); }

  /// Every tensor name, sorted.
  std::vector<std::string> tensor_names() const {
    std::vector<std::string> names;
    names.reserve(where_.size());
    for (const auto& [name, shard] : where_) names.push_back(name);
    return names;
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
      throw format_error(milora::detail::concat("model '", dir_.string(), "' has no tensor '", name, "'"));
    return *shards_[it->second];
  }
  const TensorInfo& info(const std::string& name) const { return file_of(name).info(name); }
  template <class T>
  HostMatrix<T> load(const std::string& name) const {
    return file_of(name).template load<T>(name);
  }

 private:
  void open_index(const std::filesystem::path& index_path) {
    using milora::detail::concat;
    sharded_ = true;
    const nlohmann::json index = read_json_file(index_path);
    const std::string where = concat("'", index_path.string(), "'");
    const auto wm = index.find("weight_map");
    if (wm == index.end() || !wm->is_object()) throw format_error(concat(where, ": no \"weight_map\" object"));
    std::map<std::string, std::size_t> shard_of_file;
    for (const auto& [name, file] : wm->items()) {
      if (!file.is_string()) throw format_error(concat(where, ": weight_map entry '", name, "' is not a file name"));
      const std::string f = file.get<std::string>();
      // A shard is a file in this folder: no paths, so an index cannot make us read elsewhere.
      if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
        throw format_error(concat(where, ": weight_map entry '", name, "' names '", f, "', which is not a file name in the folder"));
      auto [it, added] = shard_of_file.emplace(f, shards_.size());
      if (added) shards_.push_back(std::make_unique<SafetensorsFile>(dir_ / f));
      if (!shards_[it->second]->contains(name))
        throw format_error(concat(where, ": weight_map puts '", name, "' in '", f, "', which has no such tensor"));
      where_[name] = it->second;
    }
    for (const auto& [f, i] : shard_of_file)
      for (const auto& t : shards_[i]->tensors()) {
        auto it = where_.find(t.name);
        if (it == where_.end() || it->second != i)
          throw format_error(concat(where, ": shard '", f, "' holds '", t.name, "', which weight_map ",
                                    it == where_.end() ? "does not list" : "puts in another shard"));
      }
  }

  std::filesystem::path dir_;
  nlohmann::json config_ = nlohmann::json::object();
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, std::size_t> where_;  // tensor -> shard
};

/// Changes one tensor (as T values, same shape) while a model is rewritten.
template <class T>
using TensorEdit = std::function<void(const std::string& name, HostMatrix<T>& values)>;

/// Writes `src` to the folder `out` (created; must not exist or be empty): every tensor in its shard, order and
/// dtype, with those for which `selects(name)` is true loaded as T, passed to `edit`, and converted
/// back to their dtype; all other files of the folder (config.json, the index, tokenizer files)
/// copied. Edited tensors are computed while their shard is written, one at a time, or with
/// jobs > 1 up to `jobs` at once on as many threads (SafetensorsWriter::write): `edit` must then be
/// safe to call concurrently. The files are the same either way.
template <class T>
void write_hf_model(const HFModel& src, const std::filesystem::path& out,
                    const std::function<bool(const std::string&)>& selects, const TensorEdit<T>& edit, int jobs = 1) {
  using milora::detail::concat;
  if (jobs < 1) throw value_error(concat("write_hf_model: ", jobs, " jobs (need >= 1)"));
  if (std::filesystem::exists(out) && !(std::filesystem::is_directory(out) && std::filesystem::is_empty(out)))
    throw io_error(concat("'", out.string(), "' already exists and is not an empty folder"));
  std::filesystem::create_directories(out);
  for (const auto& entry : std::filesystem::directory_iterator(src.dir())) {
    if (!entry.is_regular_file() || entry.path().extension() == ".safetensors") continue;
    copy_file_atomically(entry.path(), out / entry.path().filename());
  }
  for (std::size_t s = 0; s < src.num_shards(); ++s) {
    const SafetensorsFile& shard = src.shard(s);
    SafetensorsWriter writer;
    writer.set_metadata(shard.metadata());
    for (const TensorInfo& t : shard.tensors()) {
      const std::string name = t.name;
      if (selects(name)) {
        writer.add_deferred(name, t.dtype, t.shape, [&shard, &edit, name, dtype = t.dtype](std::span<std::byte> bytes) {
          HostMatrix<T> m = shard.template load<T>(name);
          const Index r = m.rows, c = m.cols;
          edit(name, m);
          if (m.rows != r || m.cols != c)
            throw shape_error(concat("write_hf_model: the edit changed the shape of '", name, "'"));
          encode<T>(dtype, std::span<const T>(m.data), bytes);
        });
      } else {
        writer.add_deferred(name, t.dtype, t.shape, [&shard, name](std::span<std::byte> bytes) {
          const auto raw = shard.raw(name);
          std::copy(raw.begin(), raw.end(), bytes.begin());
        });
      }
    }
    writer.write(out / shard.path().filename(), jobs);
  }
}

}  // namespace milora::io
