// GGUF (llama.cpp's file format): read (memory-mapped, validated) and write.
//
// The format (ggml's docs/gguf.md, version 3, little-endian): "GGUF", a u32 version, a u64 tensor
// count, a u64 key/value count; the key/value pairs (a string key, a u32 value type, the value: a
// scalar, a string = u64 length + bytes, or an array = u32 element type + u64 count + elements);
// the tensor infos (a string name, u32 dimension count, that many u64 dimensions, fastest first, a
// u32 ggml type, a u64 offset into the data region); padding to general.alignment (32 unless the
// file says otherwise); the data region, each tensor at its offset.
//
// A GGUF is a file from outside, so parse_gguf() checks every rule before anything is read through
// a length or an offset, and names the file, the key or tensor and the rule it broke:
//   * magic "GGUF", version 2 or 3 (version 1 had 32-bit counts and is gone from every tool);
//   * every string, array and count fits in the bytes left (a count that could not fit is refused
//     before any allocation); arrays of arrays are refused (no tool writes them);
//   * no key and no tensor name twice; general.alignment, if present, a u32 power of two;
//   * each tensor: 1 to 4 dimensions, each >= 1, an element count and byte size within 64 bits, a
//     known ggml type whose block divides the first dimension;
//   * the tensors lie in the data region in the order listed, each at the aligned end of the one
//     before (what llama.cpp's loader requires too), and the file ends at most one alignment
//     padding after the last one (every byte of the file is accounted for).
// Tensor data is decoded to float only when loaded: F32, F16, BF16, F64 and Q8_0 (other quantised
// types are validated and listed, not decoded).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "milora/io/atomic_file.hpp"
#include "milora/io/dtype.hpp"
#include "milora/io/host_matrix.hpp"
#include "milora/io/mapped_file.hpp"

namespace milora::io {

/// GGUF's metadata value types (the numbers are the format's).
enum class GgufType : std::uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12
};

inline std::string_view gguf_type_name(GgufType t) {
  static constexpr std::string_view names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<std::uint32_t>(t);
  return i < std::size(names) ? names[i] : std::string_view("unknown");
}

/// ggml's tensor types. Each is stored in blocks of `block` elements taking `block_bytes` bytes.
struct GgmlType {
  std::uint32_t id;
  std::string_view name;
  std::uint32_t block, block_bytes;
};

inline constexpr std::uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ8_0 = 8, kGgmlF64 = 28, kGgmlBF16 = 30;

/// Every type a current GGUF may hold (ggml.c's type_traits): enough to validate any file's offsets.
inline const GgmlType* ggml_type(std::uint32_t id) {
  static constexpr GgmlType types[] = {
      {0, "F32", 1, 4},       {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},    {3, "Q4_1", 32, 20},    {6, "Q5_0", 32, 22},
      {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 36},    {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110},
      {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},  {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 256, 66},
      {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50}, {20, "IQ4_NL", 32, 18}, {21, "IQ3_S", 256, 110},
      {22, "IQ2_S", 256, 82}, {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},      {25, "I16", 1, 2},      {26, "I32", 1, 4},
      {27, "I64", 1, 8},      {28, "F64", 1, 8},       {29, "IQ1_M", 256, 56}, {30, "BF16", 1, 2},     {34, "TQ1_0", 256, 54},
      {35, "TQ2_0", 256, 66}, {39, "MXFP4", 32, 17}};
  for (const auto& t : types)
    if (t.id == id) return &t;
  return nullptr;
}

inline std::string ggml_type_name(std::uint32_t id) {
  const GgmlType* t = ggml_type(id);
  return t ? std::string(t->name) : milora::detail::concat("type ", id);
}

/// One metadata value: a scalar (items.size() == 1, is_array false) or an array of `type` items.
/// Integers keep their full width (u64 / i64), floats are widened to double.
struct GgufValue {
  using Item = std::variant<std::uint64_t, std::int64_t, double, bool, std::string>;
  GgufType type = GgufType::U32;  // the scalar type, or the element type of an array
  bool is_array = false;
  std::vector<Item> items;
};

struct GgufTensorInfo {
  std::string name;
  std::uint32_t type = kGgmlF32;
  std::vector<std::uint64_t> ne;  // dimensions, fastest first (a row-major r x c matrix: {c, r})
  std::uint64_t offset = 0;       // relative to the data region
  std::uint64_t numel = 1, nbytes = 0;
};

/// What a GGUF header says, validated against the file's size.
struct GgufHeader {
  std::uint32_t version = 3;
  std::uint32_t alignment = 32;
  std::vector<std::pair<std::string, GgufValue>> metadata;  // in file order
  std::vector<GgufTensorInfo> tensors;                      // in file order (= offset order)
  std::uint64_t data_start = 0;

  const GgufValue* find(const std::string& key) const {
    auto it = keys_.find(key);
    return it == keys_.end() ? nullptr : &metadata[it->second].second;
  }
  const GgufTensorInfo* find_tensor(const std::string& name) const {
    auto it = names_.find(name);
    return it == names_.end() ? nullptr : &tensors[it->second];
  }

 private:
  friend GgufHeader parse_gguf(std::span<const std::byte>, const std::string&);
  std::unordered_map<std::string, std::size_t> keys_, names_;
};

namespace gguf_detail {

[[noreturn]] inline void bad_gguf(const std::string& source, const std::string& what) {
  throw format_error(milora::detail::concat("GGUF file '", source, "': ", what));
}

inline std::size_t gguf_scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;  // STRING (variable), ARRAY
  }
}

// A bounds-checked little-endian reader over the file's bytes: every read says what it was for, so
// that a short file is reported as "<what> runs past the end of the file".
class GgufCursor {
 public:
  GgufCursor(std::span<const std::byte> bytes, const std::string& source) : bytes_(bytes), source_(source) {}
  const std::string& source() const { return source_; }
  std::uint64_t position() const { return pos_; }
  std::uint64_t left() const { return bytes_.size() - pos_; }

  template <class U>
  U read(const std::string& what) {
    need(sizeof(U), what);
    const U u = io::load<U>(bytes_.data() + pos_);
    pos_ += sizeof(U);
    return u;
  }
  std::string string(const std::string& what) {
    const auto n = read<std::uint64_t>(what + "'s length");
    if (n > left())
      bad_gguf(source_, milora::detail::concat(what, " has length ", n, " but only ", left(), " bytes are left in the file"));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), std::size_t(n));
    pos_ += n;
    return s;
  }
  void need(std::uint64_t n, const std::string& what) const {
    if (n > left()) bad_gguf(source_, milora::detail::concat(what, " runs past the end of the file (offset ", pos_, ", ", left(), " bytes left)"));
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& source_;
  std::uint64_t pos_ = 0;
};

inline GgufValue::Item gguf_read_item(GgufCursor& in, GgufType t, const std::string& what) {
  switch (t) {
    case GgufType::U8: return std::uint64_t(in.read<std::uint8_t>(what));
    case GgufType::I8: return std::int64_t(in.read<std::int8_t>(what));
    case GgufType::U16: return std::uint64_t(in.read<std::uint16_t>(what));
    case GgufType::I16: return std::int64_t(in.read<std::int16_t>(what));
    case GgufType::U32: return std::uint64_t(in.read<std::uint32_t>(what));
    case GgufType::I32: return std::int64_t(in.read<std::int32_t>(what));
    case GgufType::U64: return in.read<std::uint64_t>(what);
    case GgufType::I64: return in.read<std::int64_t>(what);
    case GgufType::F32: return double(std::bit_cast<float>(in.read<std::uint32_t>(what)));
    case GgufType::F64: return std::bit_cast<double>(in.read<std::uint64_t>(what));
    case GgufType::BOOL: {
      const auto b = in.read<std::uint8_t>(what);
      if (b > 1) bad_gguf(in.source(), milora::detail::concat(what, " is a bool holding ", int(b), " (must be 0 or 1)"));
      return b == 1;
    }
    case GgufType::STRING: return in.string(what);
    default: bad_gguf(in.source(), milora::detail::concat(what, " has value type ", std::uint32_t(t), ", which GGUF does not define"));
  }
}

}  // namespace gguf_detail

/// Parses and validates the header of the GGUF file held in `file` (all of its bytes); `source`
/// names it in messages.
inline GgufHeader parse_gguf(std::span<const std::byte> file, const std::string& source) {
  using milora::detail::concat;
  using gguf_detail::bad_gguf;
  gguf_detail::GgufCursor in(file, source);
  GgufHeader h;
  in.need(4, "the magic number");
  if (std::memcmp(file.data(), "GGUF", 4) != 0) bad_gguf(source, "does not start with the magic \"GGUF\"");
  in.read<std::uint32_t>("magic");
  h.version = in.read<std::uint32_t>("the version");
  if (h.version != 2 && h.version != 3) bad_gguf(source, concat("version ", h.version, " (milora reads versions 2 and 3)"));
  const auto n_tensors = in.read<std::uint64_t>("the tensor count");
  const auto n_kv = in.read<std::uint64_t>("the key/value count");
  // Each pair takes at least 12 bytes (key length + type), each tensor info at least 24: a count
  // that cannot fit is refused before anything is reserved for it.
  if (n_kv > in.left() / 12) bad_gguf(source, concat("key/value count ", n_kv, " cannot fit in the ", in.left(), " bytes left"));
  if (n_tensors > in.left() / 24) bad_gguf(source, concat("tensor count ", n_tensors, " cannot fit in the ", in.left(), " bytes left"));

  for (std::uint64_t i = 0; i < n_kv; ++i) {
    std::string key = in.string(concat("key ", i));
    if (key.empty()) bad_gguf(source, concat("key ", i, " is empty"));
    const std::string what = concat("key '", key, "'");
    if (h.keys_.count(key)) bad_gguf(source, concat(what, " appears twice"));
    GgufValue v;
    auto type = static_cast<GgufType>(in.read<std::uint32_t>(what + "'s type"));
    if (type == GgufType::ARRAY) {
      v.is_array = true;
      type = static_cast<GgufType>(in.read<std::uint32_t>(what + "'s element type"));
      if (type == GgufType::ARRAY) bad_gguf(source, concat(what, " is an array of arrays"));
      const auto n = in.read<std::uint64_t>(what + "'s element count");
      const std::size_t size = gguf_detail::gguf_scalar_size(type);
      const std::uint64_t least = type == GgufType::STRING ? 8 : size;  // a string takes at least its length
      if (least == 0) bad_gguf(source, concat(what, " has element type ", std::uint32_t(type), ", which GGUF does not define"));
      if (n > in.left() / least) bad_gguf(source, concat(what, " has ", n, " elements, more than the ", in.left(), " bytes left can hold"));
      v.items.reserve(std::size_t(n));
      for (std::uint64_t k = 0; k < n; ++k) v.items.push_back(gguf_detail::gguf_read_item(in, type, concat(what, "[", k, "]")));
    } else {
      v.items.push_back(gguf_detail::gguf_read_item(in, type, what));
    }
    v.type = type;
    h.keys_.emplace(key, h.metadata.size());
    h.metadata.emplace_back(std::move(key), std::move(v));
  }
  if (const GgufValue* a = h.find("general.alignment")) {
    if (a->is_array || a->type != GgufType::U32) bad_gguf(source, "general.alignment is not a u32");
    const auto al = std::get<std::uint64_t>(a->items[0]);
    if (al == 0 || (al & (al - 1)) != 0) bad_gguf(source, concat("general.alignment ", al, " is not a power of two"));
    h.alignment = std::uint32_t(al);
  }

  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = in.string(concat("tensor name ", i));
    const std::string what = concat("tensor '", t.name, "'");
    if (t.name.empty()) bad_gguf(source, concat("tensor ", i, " has an empty name"));
    if (h.names_.count(t.name)) bad_gguf(source, concat(what, " appears twice"));
    const auto n_dims = in.read<std::uint32_t>(what + "'s dimension count");
    if (n_dims < 1 || n_dims > 4) bad_gguf(source, concat(what, " has ", n_dims, " dimensions (GGUF allows 1 to 4)"));
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const auto n = in.read<std::uint64_t>(concat(what, "'s dimension ", d));
      if (n == 0 || n > std::uint64_t(INT64_MAX)) bad_gguf(source, concat(what, " has dimension ", d, " = ", n));
      if (__builtin_mul_overflow(t.numel, n, &t.numel)) bad_gguf(source, concat(what, ": element count overflows 64 bits"));
      t.ne.push_back(n);
    }
    t.type = in.read<std::uint32_t>(what + "'s type");
    const GgmlType* gt = ggml_type(t.type);
    if (!gt) bad_gguf(source, concat(what, " has ggml type ", t.type, ", which milora does not know"));
    if (t.ne[0] % gt->block != 0)
      bad_gguf(source, concat(what, ": its first dimension ", t.ne[0], " is not a multiple of ", gt->name, "'s block of ", gt->block));
    if (__builtin_mul_overflow(t.numel / gt->block, std::uint64_t(gt->block_bytes), &t.nbytes))
      bad_gguf(source, concat(what, ": byte size overflows 64 bits"));
    t.offset = in.read<std::uint64_t>(what + "'s offset");
    h.names_.emplace(t.name, h.tensors.size());
    h.tensors.push_back(std::move(t));
  }

  const auto pad = [&](std::uint64_t x) { return x + (h.alignment - x % h.alignment) % h.alignment; };
  h.data_start = pad(in.position());
  if (h.tensors.empty()) h.data_start = std::min<std::uint64_t>(h.data_start, file.size());  // no data: the padding may be left out
  if (h.data_start > file.size()) bad_gguf(source, concat("the data region would start at ", h.data_start, ", past the end of the file (", file.size(), " bytes)"));
  const std::uint64_t data_size = file.size() - h.data_start;
  std::uint64_t expected = 0;
  for (const auto& t : h.tensors) {
    if (t.offset != expected)
      bad_gguf(source, concat("tensor '", t.name, "' is at offset ", t.offset, " but the tensors before it end at ", expected,
                              " (tensors must follow each other, aligned to ", h.alignment, " bytes)"));
    if (t.nbytes > data_size - t.offset)
      bad_gguf(source, concat("tensor '", t.name, "' (", t.nbytes, " bytes at offset ", t.offset, ") runs past the end of the data region (",
                              data_size, " bytes)"));
    expected = t.offset + t.nbytes;
    if (expected % h.alignment) expected = std::min(pad(expected), data_size);  // the last tensor's padding may be cut
  }
  if (data_size - expected >= h.alignment)
    bad_gguf(source, concat("the data region has ", data_size - expected, " trailing bytes that belong to no tensor"));
  return h;
}

/// Decodes `out.size()` elements of ggml type `type` from `bytes` (which must hold exactly them):
/// F32, F16, BF16, F64 and Q8_0; other types are refused naming `what`.
template <class T>
void decode_ggml(std::uint32_t type, std::span<const std::byte> bytes, std::span<T> out, const std::string& what) {
  using milora::detail::concat;
  const GgmlType* gt = ggml_type(type);
  if (!gt || out.size() % gt->block != 0 || bytes.size() != out.size() / gt->block * gt->block_bytes)
    throw format_error(concat(what, ": ", bytes.size(), " bytes do not hold ", out.size(), " ", ggml_type_name(type), " values"));
  switch (type) {
    case kGgmlF32: decode<T>(DType::F32, bytes, out); return;
    case kGgmlF16: decode<T>(DType::F16, bytes, out); return;
    case kGgmlBF16: decode<T>(DType::BF16, bytes, out); return;
    case kGgmlF64: decode<T>(DType::F64, bytes, out); return;
    case kGgmlQ8_0:
      for (std::size_t b = 0; b < out.size() / 32; ++b) {
        const std::byte* block = bytes.data() + 34 * b;
        const float d = half_to_float(io::load<std::uint16_t>(block));
        for (std::size_t j = 0; j < 32; ++j) out[32 * b + j] = T(d * float(static_cast<std::int8_t>(block[2 + j])));
      }
      return;
    default:
      throw format_error(concat(what, " is ", ggml_type_name(type), ", which milora cannot decode (F32, F16, BF16, F64, Q8_0)"));
  }
}

/// A GGUF file opened for reading: memory-mapped, header validated once.
class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path) : file_(path), header_(parse_gguf(file_.bytes(), path.string())) {}

  const std::filesystem::path& path() const { return file_.path(); }
  const GgufHeader& header() const { return header_; }
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  bool contains(const std::string& name) const { return header_.find_tensor(name) != nullptr; }

  const GgufTensorInfo& info(const std::string& name) const {
    if (const auto* t = header_.find_tensor(name)) return *t;
    throw format_error(milora::detail::concat("GGUF file '", path().string(), "' has no tensor '", name, "'"));
  }

  /// The value of `key` (scalar or array), null if absent.
  const GgufValue* value(const std::string& key) const { return header_.find(key); }
  /// Scalars of the types named: a string, an unsigned integer (u8 to u64), a float (f32 / f64);
  /// nullopt if absent, format_error if the key holds another type.
  std::optional<std::string> string(const std::string& key) const {
    const GgufValue* v = scalar(key, {GgufType::STRING});
    return v ? std::optional(std::get<std::string>(v->items[0])) : std::nullopt;
  }
  std::optional<std::uint64_t> uint(const std::string& key) const {
    const GgufValue* v = scalar(key, {GgufType::U8, GgufType::U16, GgufType::U32, GgufType::U64});
    return v ? std::optional(std::get<std::uint64_t>(v->items[0])) : std::nullopt;
  }
  std::optional<double> real(const std::string& key) const {
    const GgufValue* v = scalar(key, {GgufType::F32, GgufType::F64});
    return v ? std::optional(std::get<double>(v->items[0])) : std::nullopt;
  }

  std::span<const std::byte> raw(const std::string& name) const {
    const auto& t = info(name);
    return file_.bytes().subspan(header_.data_start + t.offset, t.nbytes);
  }

  /// The tensor as a row-major T matrix: ne {c} -> 1 x c, {c, r} -> r x c. F32, F16, BF16, F64 and
  /// Q8_0 are decoded; other types and more dimensions are refused with the tensor's name.
  template <class T>
  HostMatrix<T> load(const std::string& name) const {
    using milora::detail::concat;
    const auto& t = info(name);
    if (t.ne.size() > 2)
      throw shape_error(concat("tensor '", name, "' in '", path().string(), "' has ", t.ne.size(), " dimensions; milora loads matrices and vectors"));
    const Index cols = Index(t.ne[0]), rows = t.ne.size() == 2 ? Index(t.ne[1]) : 1;
    HostMatrix<T> m(rows, cols);
    decode_ggml<T>(t.type, raw(name), std::span<T>(m.data), concat("tensor '", name, "' in '", path().string(), "'"));
    return m;
  }

 private:
  const GgufValue* scalar(const std::string& key, std::initializer_list<GgufType> types) const {
    const GgufValue* v = header_.find(key);
    if (!v) return nullptr;
    if (v->is_array || std::find(types.begin(), types.end(), v->type) == types.end())
      throw format_error(milora::detail::concat("GGUF file '", path().string(), "': key '", key, "' is ", v->is_array ? "an array of " : "",
                                                gguf_type_name(v->type), ", not the type expected"));
    return v;
  }

  MappedFile file_;
  GgufHeader header_;
};

// ---- writing -------------------------------------------------------------------------------------

/// ggml's Q8_0 block (quantize_row_q8_0_ref): 32 values as d = max|x| / 127 in f16 and
/// q_j = round(x_j / d) (halves away from zero), so that x_j ~ q_j * d.
inline void quantize_q8_0(std::span<const float> x, std::span<std::byte> out) {
  for (std::size_t b = 0; b < x.size() / 32; ++b) {
    float amax = 0;
    for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    std::byte* block = out.data() + 34 * b;
    io::store(block, float_to_half(d));
    for (std::size_t j = 0; j < 32; ++j) block[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(std::round(x[32 * b + j] * id)));
  }
}

/// Writes a GGUF (version 3, alignment 32). Keys keep the order they were set in; tensors are laid
/// out in the order added, their bytes produced while writing (one tensor in memory at a time).
/// write() goes through "<path>.partial" and a rename, as every milora file does.
class GgufWriter {
 public:
  using Fill = std::function<void(std::span<std::byte>)>;
  static constexpr std::uint32_t kAlignment = 32;

  void set(const std::string& key, GgufType type, GgufValue::Item item) { put(key, GgufValue{type, false, {std::move(item)}}); }
  void set_string(const std::string& key, std::string s) { set(key, GgufType::STRING, std::move(s)); }
  void set_u32(const std::string& key, std::uint32_t v) { set(key, GgufType::U32, std::uint64_t(v)); }
  void set_i32(const std::string& key, std::int32_t v) { set(key, GgufType::I32, std::int64_t(v)); }
  void set_f32(const std::string& key, float v) { set(key, GgufType::F32, double(v)); }
  void set_bool(const std::string& key, bool v) { set(key, GgufType::BOOL, v); }
  void set_array(const std::string& key, GgufType type, std::vector<GgufValue::Item> items) {
    put(key, GgufValue{type, true, std::move(items)});
  }

  /// A tensor of ggml type `type` with dimensions `ne` (fastest first) whose bytes `fill` writes.
  void add_tensor(const std::string& name, std::uint32_t type, std::vector<std::uint64_t> ne, Fill fill) {
    using milora::detail::concat;
    const GgmlType* gt = ggml_type(type);
    if (!gt) throw value_error(concat("GGUF: tensor '", name, "' has unknown ggml type ", type));
    if (name.empty() || name.size() >= 64) throw value_error(concat("GGUF: tensor name '", name, "' must have 1 to 63 bytes (ggml's limit)"));
    if (ne.empty() || ne.size() > 4) throw shape_error(concat("GGUF: tensor '", name, "' has ", ne.size(), " dimensions (1 to 4)"));
    std::uint64_t numel = 1;
    for (auto n : ne) {
      if (n == 0) throw shape_error(concat("GGUF: tensor '", name, "' has a zero dimension"));
      numel *= n;
    }
    if (ne[0] % gt->block) throw shape_error(concat("GGUF: tensor '", name, "': ", gt->name, " needs rows of a multiple of ", gt->block, ", not ", ne[0]));
    if (!names_.insert(name).second) throw value_error(concat("GGUF: tensor '", name, "' added twice"));
    tensors_.push_back({name, type, std::move(ne), numel / gt->block * gt->block_bytes, std::move(fill)});
  }

  /// A row-major matrix (ne = {cols, rows}; a 1 x n matrix as a vector {n} when `as_vector`),
  /// converted to F32, F16, BF16 or Q8_0.
  void add_matrix(const std::string& name, const HostMatrix<float>& m, std::uint32_t type, bool as_vector = false) {
    std::vector<std::uint64_t> ne = as_vector ? std::vector<std::uint64_t>{std::uint64_t(m.data.size())}
                                              : std::vector<std::uint64_t>{std::uint64_t(m.cols), std::uint64_t(m.rows)};
    auto values = std::make_shared<std::vector<float>>(m.data);
    add_tensor(name, type, std::move(ne), [values, type, name](std::span<std::byte> out) { encode_tensor(type, *values, out, name); });
  }

  static void encode_tensor(std::uint32_t type, std::span<const float> v, std::span<std::byte> out, const std::string& name) {
    switch (type) {
      case kGgmlF32: encode<float>(DType::F32, v, out); return;
      case kGgmlF16: encode<float>(DType::F16, v, out); return;
      case kGgmlBF16: encode<float>(DType::BF16, v, out); return;
      case kGgmlQ8_0: quantize_q8_0(v, out); return;
      default: throw value_error(milora::detail::concat("GGUF: tensor '", name, "': milora writes F32, F16, BF16 and Q8_0, not ", ggml_type_name(type)));
    }
  }

  std::size_t tensor_count() const { return tensors_.size(); }

  void write(const std::filesystem::path& path) const {
    std::string head;
    auto u32 = [&](std::uint32_t v) { head.append(reinterpret_cast<const char*>(&v), 4); };
    auto u64 = [&](std::uint64_t v) { head.append(reinterpret_cast<const char*>(&v), 8); };
    auto str = [&](const std::string& s) { u64(s.size()); head += s; };
    head += "GGUF";
    u32(3);
    u64(tensors_.size());
    u64(metadata_.size());
    for (const auto& [key, v] : metadata_) {
      str(key);
      if (v.is_array) {
        u32(std::uint32_t(GgufType::ARRAY));
        u32(std::uint32_t(v.type));
        u64(v.items.size());
      } else {
        u32(std::uint32_t(v.type));
      }
      for (const auto& item : v.items) put_item(head, v.type, item, key);
    }
    std::uint64_t offset = 0;
    for (const auto& t : tensors_) {
      str(t.name);
      u32(std::uint32_t(t.ne.size()));
      for (auto n : t.ne) u64(n);
      u32(t.type);
      u64(offset);
      offset += padded(t.nbytes);
    }
    head.append(padded(head.size()) - head.size(), '\0');
    AtomicFile out(path);
    out.write(head);
    std::vector<std::byte> buffer;
    for (const auto& t : tensors_) {
      buffer.assign(padded(t.nbytes), std::byte{0});
      t.fill(std::span<std::byte>(buffer).first(t.nbytes));
      out.write(buffer.data(), buffer.size());
    }
    out.commit();
  }

 private:
  struct Tensor {
    std::string name;
    std::uint32_t type;
    std::vector<std::uint64_t> ne;
    std::uint64_t nbytes;
    Fill fill;
  };

  static std::uint64_t padded(std::uint64_t n) { return n + (kAlignment - n % kAlignment) % kAlignment; }

  void put(const std::string& key, GgufValue v) {
    if (key.empty()) throw value_error("GGUF: empty key");
    if (v.type == GgufType::ARRAY) throw value_error(milora::detail::concat("GGUF: key '", key, "': arrays of arrays are not written"));
    for (auto& [k, old] : metadata_)
      if (k == key) throw value_error(milora::detail::concat("GGUF: key '", key, "' set twice"));
    if (!v.is_array && v.items.size() != 1) throw value_error(milora::detail::concat("GGUF: key '", key, "' needs exactly one value"));
    for (const auto& item : v.items) {  // checked now, so that write() cannot fail on a value
      const bool fits = v.type == GgufType::STRING ? std::holds_alternative<std::string>(item)
                        : v.type == GgufType::BOOL ? std::holds_alternative<bool>(item)
                        : v.type == GgufType::F32 || v.type == GgufType::F64 ? std::holds_alternative<double>(item)
                        : v.type == GgufType::U8 || v.type == GgufType::U16 || v.type == GgufType::U32 || v.type == GgufType::U64
                            ? std::holds_alternative<std::uint64_t>(item)
                            : std::holds_alternative<std::int64_t>(item);
      if (!fits) throw value_error(milora::detail::concat("GGUF: key '", key, "' holds a value that is not a ", gguf_type_name(v.type)));
    }
    metadata_.emplace_back(key, std::move(v));
  }

  static void put_item(std::string& out, GgufType t, const GgufValue::Item& item, const std::string& key) {
    auto raw = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof v); };
    {  // put() checked that each item holds its type's alternative
      switch (t) {
        case GgufType::U8: raw(std::uint8_t(std::get<std::uint64_t>(item))); return;
        case GgufType::I8: raw(std::int8_t(std::get<std::int64_t>(item))); return;
        case GgufType::U16: raw(std::uint16_t(std::get<std::uint64_t>(item))); return;
        case GgufType::I16: raw(std::int16_t(std::get<std::int64_t>(item))); return;
        case GgufType::U32: raw(std::uint32_t(std::get<std::uint64_t>(item))); return;
        case GgufType::I32: raw(std::int32_t(std::get<std::int64_t>(item))); return;
        case GgufType::U64: raw(std::get<std::uint64_t>(item)); return;
        case GgufType::I64: raw(std::get<std::int64_t>(item)); return;
        case GgufType::F32: raw(float(std::get<double>(item))); return;
        case GgufType::F64: raw(std::get<double>(item)); return;
        case GgufType::BOOL: raw(std::uint8_t(std::get<bool>(item) ? 1 : 0)); return;
        case GgufType::STRING: {
          const auto& s = std::get<std::string>(item);
          raw(std::uint64_t(s.size()));
          out += s;
          return;
        }
        default: break;
      }
    }
    throw value_error(milora::detail::concat("GGUF: key '", key, "' has type ", gguf_type_name(t), ", which is not written"));
  }

  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::vector<Tensor> tensors_;
  std::set<std::string> names_;
};

}  // namespace milora::io
