// The element types of checkpoint files, and conversion between them and float / double.
//
// safetensors names its dtypes with strings ("F32", "BF16", ...). Every dtype the format defines is
// known here, so that a file holding, say, an I64 buffer next to its weights is still *valid* (its
// byte sizes are checked); only the floating-point ones can be loaded into a backend matrix.
//
// F16 and BF16 are converted with round-to-nearest-even, the rounding PyTorch's .to(torch.float16)
// and .to(torch.bfloat16) use, so a weight written by milora is bit-identical to the one PyTorch
// would write from the same float values. NaN stays NaN (quietened), infinities stay infinite.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "milora/core/bf16.hpp"
#include "milora/core/errors.hpp"

namespace milora::io {

static_assert(std::endian::native == std::endian::little,
              "milora's file formats are little-endian and are read in place; big-endian hosts are not supported");

enum class DType : std::uint8_t { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t size;     // bytes per element
  bool floating_point;  // loadable as float / double by milora
};

inline constexpr DTypeInfo kDTypes[] = {
    {DType::BOOL, "BOOL", 1, false},    {DType::U8, "U8", 1, false},
    {DType::I8, "I8", 1, false},        {DType::F8_E5M2, "F8_E5M2", 1, false},
    {DType::F8_E4M3, "F8_E4M3", 1, false}, {DType::I16, "I16", 2, false},
    {DType::U16, "U16", 2, false},      {DType::F16, "F16", 2, true},
    {DType::BF16, "BF16", 2, true},     {DType::I32, "I32", 4, false},
    {DType::U32, "U32", 4, false},      {DType::F32, "F32", 4, true},
    {DType::I64, "I64", 8, false},      {DType::U64, "U64", 8, false},
    {DType::F64, "F64", 8, true},
};

constexpr const DTypeInfo& dtype_info(DType d) { return kDTypes[static_cast<std::size_t>(d)]; }
constexpr std::string_view dtype_name(DType d) { return dtype_info(d).name; }
constexpr std::size_t dtype_size(DType d) { return dtype_info(d).size; }

/// The dtype called `name` in a safetensors header, or nullopt if the format has no such dtype.
inline std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d.dtype;
  return std::nullopt;
}

// ---- half precision ------------------------------------------------------------------------------

/// IEEE binary16 bits -> float (exact: every half is a float).
constexpr float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24
    const float v = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

/// float -> IEEE binary16 bits, round to nearest, ties to even; overflow gives infinity.
constexpr std::uint16_t float_to_half(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;                 // NaN -> quiet NaN
  if (ax >= 0x47800000u) return sign | 0x7c00u;                // >= 65536 (and inf): infinity
  if (ax < 0x38800000u) {                                      // below 2^-14: half subnormal or 0
    if (ax <= 0x33000000u) return sign;                        // <= 2^-25 rounds (ties even) to 0
    const std::uint32_t mant = (ax & 0x7fffffu) | 0x800000u;  // value = mant * 2^(e - 150)
    const int shift = 126 - static_cast<int>(ax >> 23);        // to units of 2^-24: 14..24
    std::uint32_t h = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;    // may carry into the smallest normal
    return sign | static_cast<std::uint16_t>(h);
  }
  std::uint32_t h = (ax - 0x38000000u) >> 13;                  // rebias 127 -> 15
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;      // a carry may round up to infinity
  return sign | static_cast<std::uint16_t>(h);
}

// bf16_to_float / float_to_bf16: milora/core/bf16.hpp (the frozen-weight storage uses them too).
using milora::bf16_to_float;
using milora::float_to_bf16;

// ---- whole buffers -------------------------------------------------------------------------------

// Unaligned little-endian loads and stores: a tensor's offset in a file need not be aligned.
template <class U>
U load(const std::byte* p) {
  U u;
  std::memcpy(&u, p, sizeof u);
  return u;
}
template <class U>
void store(std::byte* p, U u) {
  std::memcpy(p, &u, sizeof u);
}

/// Converts `out.size()` elements of a floating-point dtype, stored little-endian at `src` (any
/// alignment), to T. Throws format_error for a non-floating dtype.
template <class T>
  requires std::is_floating_point_v<T>
void decode(DType dtype, std::span<const std::byte> src, std::span<T> out) {
  const std::size_t n = out.size();
  if (src.size() != n * dtype_size(dtype))
    throw format_error(detail::concat("decode: ", src.size(), " bytes for ", n, " ", dtype_name(dtype),
                                      " values"));
  const std::byte* p = src.data();
  switch (dtype) {
    case DType::F32:
      if constexpr (std::is_same_v<T, float>) {
        if (n) std::memcpy(out.data(), p, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) out[i] = T(std::bit_cast<float>(load<std::uint32_t>(p + 4 * i)));
      }
      return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(std::bit_cast<double>(load<std::uint64_t>(p + 8 * i)));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(half_to_float(load<std::uint16_t>(p + 2 * i)));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = T(bf16_to_float(load<std::uint16_t>(p + 2 * i)));
      return;
    default:
      throw format_error(detail::concat("dtype ", dtype_name(dtype),
                                        " is not a floating-point type milora can load (F16, BF16, F32, F64)"));
  }
}

/// Converts values of type T to `dtype` (F16 / BF16 round to nearest even; F32 from double rounds
/// as a cast does), writing `values.size() * dtype_size(dtype)` bytes at `dst`.
template <class T>
  requires std::is_floating_point_v<T>
void encode(DType dtype, std::span<const T> values, std::span<std::byte> dst) {
  const std::size_t n = values.size();
  if (dst.size() != n * dtype_size(dtype))
    throw format_error(detail::concat("encode: ", dst.size(), " bytes for ", n, " ", dtype_name(dtype),
                                      " values"));
  std::byte* p = dst.data();
  switch (dtype) {
    case DType::F32:
      for (std::size_t i = 0; i < n; ++i) store(p + 4 * i, std::bit_cast<std::uint32_t>(float(values[i])));
      return;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) store(p + 8 * i, std::bit_cast<std::uint64_t>(double(values[i])));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) store(p + 2 * i, float_to_half(float(values[i])));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) store(p + 2 * i, float_to_bf16(float(values[i])));
      return;
    default:
      throw format_error(detail::concat("dtype ", dtype_name(dtype),
                                        " is not a floating-point type milora can write (F16, BF16, F32, F64)"));
  }
}

}  // namespace milora::io
