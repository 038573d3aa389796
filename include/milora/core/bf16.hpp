// bfloat16: the 16-bit storage format of frozen weights when memory matters (a LLaMA-2-7B is 13.5 GB
// in bf16, 27 GB in float). bf16 keeps float's 8-bit exponent and 8 bits of mantissa (7 stored), so
// rounding to it is a relative error of at most 2^-8 (its unit roundoff), and float's whole range
// is representable.
//
// Conversions round to nearest, ties to even: the rounding of PyTorch's .to(torch.bfloat16), of
// CUDA's __float2bfloat16_rn and of Eigen::bfloat16, so a weight rounded by milora is bit-identical to
// the one PyTorch would produce. double rounds through float (as torch's double -> bf16 does not:
// the double-rounding difference is at most one ulp in cases of a near-tie, and every milora backend
// does the same).
#pragma once

#include <bit>
#include <cstdint>

namespace milora {

/// A bf16 value as stored in memory: 16 bits, no arithmetic (widen it to compute with it).
struct bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(bf16) == 2 && alignof(bf16) == 2);

/// bfloat16 bits -> float (exact).
constexpr float bf16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }

/// float -> bfloat16 bits, round to nearest, ties to even (a NaN stays a quiet NaN).
constexpr std::uint16_t float_to_bf16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<std::uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/// f rounded to the nearest bf16 value, as a float.
constexpr float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace milora
