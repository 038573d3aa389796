// safetensors: read (memory-mapped, validated) and write.
//
// The format (github.com/huggingface/safetensors): an 8-byte little-endian header length N, N bytes
// of JSON, then the data region. The JSON maps each tensor name to {"dtype", "shape",
// "data_offsets": [begin, end]} (offsets relative to the data region) and may hold a
// "__metadata__" object of string -> string.
//
// A checkpoint is a file from outside, so parse_safetensors() checks every rule before anything is
// read through an offset, and names the file, the tensor and the rule it broke:
//   * the file holds at least 8 bytes; N <= kMaxHeaderBytes and 8 + N <= file size;
//   * the header is well-formed JSON, an object, with no key twice at any level (JSON parsers
//     silently keep the last duplicate; a checkpoint whose readers disagree is an attack surface);
//   * each entry has a known dtype string, a shape of non-negative integers and two integer offsets
//     begin <= end; element count and byte size do not overflow 64 bits;
//   * end - begin = product(shape) * dtype size;
//   * the tensors tile the data region exactly, as the reference implementation requires: sorted by
//     offset, none overlaps the previous one, none leaves a gap, the last one ends at the end of the
//     file (so every byte of the file is accounted for);
//   * "__metadata__", if present, maps strings to strings.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/io/dtype.hpp"
#include "milora/io/host_matrix.hpp"
#include "milora/io/json.hpp"
#include "milora/io/mapped_file.hpp"

namespace milora::io {

/// The reference implementation's bound on the JSON header (100 MB): a length field larger than
/// this is a corrupt or hostile file, not a checkpoint with ten million tensors.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype{};
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets relative to the data region
  std::uint64_t numel = 1;

  std::uint64_t nbytes() const { return end - begin; }
};

/// What a safetensors header says, validated against the file's size.
struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by offset (the order of the data region)
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start = 0;     // 8 + N: where the data region begins in the file

  const TensorInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors[it->second];
  }

 private:
  friend SafetensorsHeader parse_safetensors(std::span<const std::byte>, const std::string&);
  std::unordered_map<std::string, std::size_t> index_;
};

namespace detail {

// Throws format_error "<source>: <what>".
[[noreturn]] inline void bad_file(const std::string& source, const std::string& what) {
  throw format_error(milora::detail::concat("safetensors file '", source, "': ", what));
}

inline std::uint64_t json_uint(const nlohmann::json& v, const std::string& source, const std::string& what) {
  if (!v.is_number_unsigned())  // nlohmann stores non-negative integers as unsigned
    bad_file(source, milora::detail::concat(what, " must be a non-negative integer, got ", v.dump()));
  return v.get<std::uint64_t>();
}

}  // namespace detail

/// Parses and validates the header of the safetensors file held in `file` (all of its bytes);
/// `source` names it in messages. Reads nothing past what the header proves is inside the file.
inline SafetensorsHeader parse_safetensors(std::span<const std::byte> file, const std::string& source) {
  using milora::detail::concat;
  using detail::bad_file;
  if (file.size() < 8) bad_file(source, concat("file has ", file.size(), " bytes, fewer than the 8-byte header length"));
  const auto n = load<std::uint64_t>(file.data());
  if (n > kMaxHeaderBytes) bad_file(source, concat("header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  if (n > file.size() - 8)
    bad_file(source, concat("header length ", n, " runs past the end of the file (", file.size(), " bytes)"));
  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  if (n == 0 || text[0] != '{') bad_file(source, "header does not start with '{'");
  const nlohmann::json j = parse_json_strict(text, text + n, concat("safetensors file '", source, "'"));
  if (!j.is_object()) bad_file(source, "header is not a JSON object");

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const std::uint64_t data_size = file.size() - h.data_start;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) bad_file(source, "__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) bad_file(source, concat("__metadata__ value of '", k, "' is not a string: ", v.dump()));
        h.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string what = concat("tensor '", name, "'");
    if (!entry.is_object()) bad_file(source, concat(what, " is not an object"));
    TensorInfo t;
    t.name = name;
    const auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) bad_file(source, concat(what, " has no dtype string"));
    const auto parsed = parse_dtype(dt->get<std::string>());
    if (!parsed) bad_file(source, concat(what, " has unknown dtype '", dt->get<std::string>(), "'"));
    t.dtype = *parsed;
    const auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) bad_file(source, concat(what, " has no shape array"));
    for (const auto& d : *sh) {
      const std::uint64_t dim = detail::json_uint(d, source, concat(what, ": a shape entry"));
      if (dim > std::uint64_t(INT64_MAX)) bad_file(source, concat(what, ": shape entry ", dim, " is too large"));
      t.shape.push_back(static_cast<std::int64_t>(dim));
      if (__builtin_mul_overflow(t.numel, dim, &t.numel))
        bad_file(source, concat(what, ": element count of shape ", sh->dump(), " overflows 64 bits"));
    }
    const auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2)
      bad_file(source, concat(what, " has no data_offsets pair [begin, end]"));
    t.begin = detail::json_uint((*off)[0], source, concat(what, ": data_offsets[0]"));
    t.end = detail::json_uint((*off)[1], source, concat(what, ": data_offsets[1]"));
    if (t.begin > t.end) bad_file(source, concat(what, ": data_offsets [", t.begin, ", ", t.end, "] has begin > end"));
    if (t.end > data_size)
      bad_file(source, concat(what, ": data_offsets [", t.begin, ", ", t.end, "] run past the end of the data region (",
                              data_size, " bytes)"));
    std::uint64_t expected = 0;
    if (__builtin_mul_overflow(t.numel, std::uint64_t(dtype_size(t.dtype)), &expected))
      bad_file(source, concat(what, ": byte size overflows 64 bits"));
    if (t.nbytes() != expected)
      bad_file(source, concat(what, ": data_offsets [", t.begin, ", ", t.end, "] hold ", t.nbytes(), " bytes but ",
                              dtype_name(t.dtype), " ", sh->dump(), " needs ", expected));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  std::uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < covered)
      bad_file(source, concat("tensor '", t.name, "' (bytes ", t.begin, "..", t.end, ") overlaps tensor '", previous->name,
                              "' (bytes ", previous->begin, "..", previous->end, ")"));
    if (t.begin > covered)
      bad_file(source, concat("data region has a gap: bytes ", covered, "..", t.begin, " before tensor '", t.name,
                              "' belong to no tensor"));
    covered = t.end;
    previous = &t;
  }
  if (covered != data_size)
    bad_file(source, concat("data region has ", data_size - covered, " trailing bytes that belong to no tensor"));
  for (std::size_t i = 0; i < h.tensors.size(); ++i) h.index_.emplace(h.tensors[i].name, i);
  return h;
}

/// The matrix shape of a tensor: [r, c] -> r x c, [n] -> 1 x n, [] -> 1 x 1; more dimensions are
/// refused (a linear layer's weight is 2-D).
inline std::pair<Index, Index> matrix_shape(const TensorInfo& t, const std::string& source) {
  switch (t.shape.size()) {
    case 0: return {1, 1};
    case 1: return {1, static_cast<Index>(t.shape[0])};
    case 2: return {static_cast<Index>(t.shape[0]), static_cast<Index>(t.shape[1])};
    default:
      throw shape_error(milora::detail::concat("tensor '", t.name, "' in '", source, "' has ", t.shape.size(),
                                               " dimensions; milora loads matrices and vectors"));
  }
}

/// A safetensors file opened for reading: memory-mapped, header validated once; tensors are
/// converted to float / double only when loaded, one at a time.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path)
      : file_(path), header_(parse_safetensors(file_.bytes(), path.string())) {}

  const std::filesystem::path& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  bool contains(const std::string& name) const { return header_.find(name) != nullptr; }

  const TensorInfo& info(const std::string& name) const {
    if (const TensorInfo* t = header_.find(name)) return *t;
    throw format_error(milora::detail::concat("safetensors file '", path().string(), "' has no tensor '", name, "'"));
  }

  /// The tensor's bytes, in place in the mapping (no copy).
  std::span<const std::byte> raw(const std::string& name) const {
    const TensorInfo& t = info(name);
    return file_.bytes().subspan(header_.data_start + t.begin, t.nbytes());
  }

  /// The tensor as a row-major T matrix (see matrix_shape), converted from its dtype.
  template <class T>
  HostMatrix<T> load(const std::string& name) const {
    const TensorInfo& t = info(name);
    const auto [r, c] = matrix_shape(t, path().string());
    if (!dtype_info(t.dtype).floating_point)
      throw format_error(milora::detail::concat("tensor '", name, "' in '", path().string(), "' has dtype ",
                                                dtype_name(t.dtype), ", which milora cannot load (F16, BF16, F32, F64)"));
    HostMatrix<T> m(r, c);
    decode<T>(t.dtype, raw(name), std::span<T>(m.data));
    return m;
  }

  /// The tensor as bf16 bits, row-major (see matrix_shape): a BF16 tensor's bits as they lie in the
  /// file, with no float copy on the way (what a bf16 frozen weight loads, io::to_backend_bf16), any
  /// other floating dtype rounded to nearest even (F64 through float, as every milora backend does).
  HostMatrix<std::uint16_t> load_bf16(const std::string& name) const {
    const TensorInfo& t = info(name);
    if (t.dtype != DType::BF16) {
      const HostMatrix<float> wide = load<float>(name);  // checks the shape and the dtype
      HostMatrix<std::uint16_t> m(wide.rows, wide.cols);
      for (std::size_t i = 0; i < wide.data.size(); ++i) m.data[i] = float_to_bf16(wide.data[i]);
      return m;
    }
    const auto [r, c] = matrix_shape(t, path().string());
    HostMatrix<std::uint16_t> m(r, c);
    const std::span<const std::byte> bytes = raw(name);  // the header check made nbytes = 2 * r * c
    for (std::size_t i = 0; i < m.data.size(); ++i) m.data[i] = io::load<std::uint16_t>(bytes.data() + 2 * i);
    return m;
  }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
};

/// Writes a safetensors file. Tensors are laid out in the order they were added; data can be given
/// now (copied) or produced while writing (a callback), so that a model can be rewritten one
/// tensor at a time without holding it in memory. write() goes through "<path>.partial" and a
/// rename, so a failed write never leaves a truncated file under the final name.
///
/// write(path, jobs) with jobs > 1 runs up to `jobs` callbacks at once, each on its own thread and
/// into its own buffer, while the calling thread writes the finished ones in order: the file is the
/// same, memory holds at most `jobs` tensors, and the callbacks must be safe to run concurrently.
class SafetensorsWriter {
 public:
  using Fill = std::function<void(std::span<std::byte>)>;

  void set_metadata(std::map<std::string, std::string> metadata) { metadata_ = std::move(metadata); }

  /// Adds a tensor whose `fill` writes its bytes (already in `dtype`) at write() time.
  void add_deferred(const std::string& name, DType dtype, std::vector<std::int64_t> shape, Fill fill) {
    using milora::detail::concat;
    if (name.empty() || name == "__metadata__") throw value_error(concat("safetensors: invalid tensor name '", name, "'"));
    if (!names_.insert(name).second) throw value_error(concat("safetensors: tensor '", name, "' added twice"));
    std::uint64_t numel = 1;
    for (auto d : shape) {
      if (d < 0) throw shape_error(concat("safetensors: tensor '", name, "' has a negative dimension ", d));
      numel *= static_cast<std::uint64_t>(d);
    }
    entries_.push_back({name, dtype, std::move(shape), numel * dtype_size(dtype), std::move(fill)});
  }

  /// Adds a tensor from bytes already in `dtype` (copied).
  void add_raw(const std::string& name, DType dtype, std::vector<std::int64_t> shape, std::span<const std::byte> bytes) {
    std::uint64_t needed = dtype_size(dtype);
    for (auto d : shape) needed *= static_cast<std::uint64_t>(std::max<std::int64_t>(d, 0));
    if (needed != bytes.size())
      throw shape_error(milora::detail::concat("safetensors: tensor '", name, "' has ", bytes.size(),
                                               " bytes but its dtype and shape need ", needed));
    auto copy = std::make_shared<std::vector<std::byte>>(bytes.begin(), bytes.end());
    add_deferred(name, dtype, std::move(shape),
                 [copy](std::span<std::byte> out) {
                   if (!out.empty()) std::memcpy(out.data(), copy->data(), out.size());
                 });
  }

  /// Adds a matrix, converting its values to `dtype`. The shape is {rows, cols} unless given: a
  /// 1 x n matrix can be written as a vector ({n}) and a 1 x 1 one as a scalar ({}).
  template <class T>
  void add(const std::string& name, const HostMatrix<T>& m, DType dtype = DType::F32,
           std::optional<std::vector<std::int64_t>> given_shape = std::nullopt) {
    std::vector<std::int64_t> shape = given_shape ? *given_shape : std::vector<std::int64_t>{m.rows, m.cols};
    std::uint64_t numel = 1;
    for (auto d : shape) numel *= static_cast<std::uint64_t>(std::max<std::int64_t>(d, 0));
    if (numel != m.data.size())
      throw shape_error(milora::detail::concat("safetensors: tensor '", name, "' shape holds ", numel, " values, matrix has ",
                                               m.data.size()));
    auto values = std::make_shared<std::vector<T>>(m.data);
    add_deferred(name, dtype, std::move(shape),
                 [values, dtype](std::span<std::byte> out) { encode<T>(dtype, std::span<const T>(*values), out); });
  }

  std::size_t size() const { return entries_.size(); }

  void write(const std::filesystem::path& path, int jobs = 1) const {
    using milora::detail::concat;
    if (jobs < 1) throw value_error(concat("safetensors: write of '", path.string(), "' with ", jobs, " jobs (need >= 1)"));
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::uint64_t offset = 0;
    for (const auto& e : entries_) {
      header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + e.nbytes}}};
      offset += e.nbytes;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data region starts 8-byte aligned
    AtomicFile out(path);  // removes the partial file unless committed
    const std::uint64_t n = text.size();
    std::byte len[8];
    store(len, n);
    out.write(len, 8);
    out.write(text);
    const auto put = [&](const std::vector<std::byte>& bytes) { out.write(bytes.data(), bytes.size()); };
    if (jobs == 1) {
      std::vector<std::byte> buffer;
      for (const auto& e : entries_) {
        buffer.assign(e.nbytes, std::byte{0});
        e.fill(buffer);
        put(buffer);
      }
    } else {
      fill_concurrently(jobs, put);
    }
    out.commit();
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::uint64_t nbytes;
    Fill fill;
  };

  // Entries filled by `jobs` worker threads, at most `jobs` ahead of the last one put(); put() runs
  // on the calling thread, in order. The first exception (a fill's or put()'s) stops the workers
  // after their current entry and is rethrown.
  template <class Put>
  void fill_concurrently(int jobs, const Put& put) const {
    struct Slot {
      std::vector<std::byte> bytes;
      bool done = false;
      std::exception_ptr error;
    };
    std::vector<Slot> slots(entries_.size());
    std::mutex mutex;
    std::condition_variable changed;
    std::size_t next = 0, written = 0;
    bool stop = false;
    const auto work = [&] {
      for (;;) {
        std::size_t i;
        {
          std::unique_lock lock(mutex);
          changed.wait(lock, [&] { return stop || next == slots.size() || next < written + std::size_t(jobs); });
          if (stop || next == slots.size()) return;
          i = next++;
        }
        std::exception_ptr error;
        try {
          slots[i].bytes.assign(entries_[i].nbytes, std::byte{0});
          entries_[i].fill(slots[i].bytes);
        } catch (...) {
          error = std::current_exception();
        }
        std::lock_guard lock(mutex);
        slots[i].done = true;
        slots[i].error = error;
        changed.notify_all();
      }
    };
    std::exception_ptr failure;
    {
      std::vector<std::jthread> workers;
      try {
        for (int j = 0; j < jobs; ++j) workers.emplace_back(work);
      } catch (...) {  // no thread for another worker: stop those started, or their join would wait forever
        {
          std::lock_guard lock(mutex);
          stop = true;
        }
        changed.notify_all();
        throw;
      }
      for (std::size_t i = 0; i < slots.size() && !failure; ++i) {
        {
          std::unique_lock lock(mutex);
          changed.wait(lock, [&] { return slots[i].done; });
          failure = slots[i].error;
        }
        if (!failure) try {
            put(slots[i].bytes);
          } catch (...) {
            failure = std::current_exception();
          }
        std::vector<std::byte>().swap(slots[i].bytes);
        std::lock_guard lock(mutex);
        written = i + 1;
        stop = failure != nullptr;
        changed.notify_all();
      }
    }  // the workers are joined here
    if (failure) std::rethrow_exception(failure);
  }

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace milora::io
