// F16 / BF16 conversions against an independent definition: a half's value computed from its
// fields with std::ldexp in double, and "round to nearest, ties to even" checked by comparing the
// chosen code with its neighbours rather than by re-deriving the bit tricks.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "milora/io/dtype.hpp"

using namespace milora::io;

namespace {

// Value of a 16-bit IEEE 754 binary format with `exp_bits` exponent bits (binary16: 5,
// bfloat16: 8), straight from the definition.
double ieee16_value(std::uint16_t bits, int exp_bits) {
  const int mant_bits = 15 - exp_bits, bias = (1 << (exp_bits - 1)) - 1, all_ones = (1 << exp_bits) - 1;
  const int s = bits >> 15, e = (bits >> mant_bits) & all_ones, m = bits & ((1 << mant_bits) - 1);
  const double frac = std::ldexp(double(m), -mant_bits);
  double v;
  if (e == 0) v = std::ldexp(frac, 1 - bias);
  else if (e == all_ones) v = m ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else v = std::ldexp(1.0 + frac, e - bias);
  return s ? -v : v;
}
double half_value(std::uint16_t h) { return ieee16_value(h, 5); }
double bf16_value(std::uint16_t b) { return ieee16_value(b, 8); }

// `code` is the correctly rounded encoding of x among the finite codes of its sign: no neighbour
// is closer, and on a tie the mantissa is even.
template <class Value>
void check_nearest(float x, std::uint16_t code, Value value, std::uint16_t max_finite) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const std::uint16_t mag = code & 0x7fff;
  const double target = std::fabs(double(x));
  if (mag > max_finite) {  // rounded to infinity: x must be at least halfway past the largest finite
    const double top = value(max_finite), below = value(max_finite - 1);
    CHECK(target >= top + (top - below) / 2);
    return;
  }
  const double d = std::fabs(std::fabs(value(code)) - target);
  for (int step : {-1, 1}) {
    const int n = int(mag) + step;
    if (n < 0 || n > max_finite) continue;
    const double dn = std::fabs(std::fabs(value(std::uint16_t(sign | n))) - target);
    CAPTURE(x);
    CAPTURE(code);
    CHECK(d <= dn);
    if (d == dn) CHECK((mag & 1) == 0);
  }
}

}  // namespace

TEST_CASE("half_to_float decodes all 65536 codes as IEEE binary16 defines them") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(std::uint16_t(h));
    const double ref = half_value(std::uint16_t(h));
    if (std::isnan(ref)) {
      CHECK(std::isnan(f));
    } else {
      REQUIRE(double(f) == ref);
      if (!std::isnan(f)) CHECK(float_to_half(f) == h);  // every half survives a round trip
    }
  }
}

TEST_CASE("float_to_half rounds to nearest, ties to even, over a sweep of float bit patterns") {
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(-2.0f) == 0xc000);
  CHECK(float_to_half(65504.0f) == 0x7bff);            // largest finite half
  CHECK(float_to_half(65519.99f) == 0x7bff);
  CHECK(float_to_half(65520.0f) == 0x7c00);            // halfway to 65536 ties to even = infinity
  CHECK(float_to_half(0x1p-24f) == 0x0001);            // smallest subnormal
  CHECK(float_to_half(0x1p-25f) == 0x0000);            // tie between 0 and 2^-24: even is 0
  CHECK(float_to_half(0x1.8p-25f) == 0x0001);
  CHECK(float_to_half(0x1p-14f) == 0x0400);            // smallest normal
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(std::numeric_limits<float>::infinity()) == 0x7c00);
  CHECK((float_to_half(std::numeric_limits<float>::quiet_NaN()) & 0x7fff) > 0x7c00);
  for (std::uint64_t bits = 0; bits < 0x100000000ull; bits += 4093) {  // ~1M patterns, all exponents
    const float x = std::bit_cast<float>(std::uint32_t(bits));
    if (std::isnan(x) || std::isinf(x)) continue;
    check_nearest(x, float_to_half(x), half_value, 0x7bff);
  }
}

TEST_CASE("bfloat16 conversions: exact decode, nearest-even encode") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3f80);           // tie, even stays
  CHECK(float_to_bf16(1.0f + 0x1p-7f + 0x1p-8f) == 0x3f82); // tie, odd rounds up
  CHECK((float_to_bf16(std::numeric_limits<float>::quiet_NaN()) & 0x7fff) > 0x7f80);
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const double ref = bf16_value(std::uint16_t(b));
    if (std::isnan(ref)) continue;
    REQUIRE(double(bf16_to_float(std::uint16_t(b))) == ref);
  }
  for (std::uint64_t bits = 0; bits < 0x100000000ull; bits += 4093) {
    const float x = std::bit_cast<float>(std::uint32_t(bits));
    if (std::isnan(x) || std::isinf(x)) continue;
    check_nearest(x, float_to_bf16(x), bf16_value, 0x7f7f);
  }
}

TEST_CASE("decode / encode convert whole buffers and refuse non-float dtypes") {
  const std::vector<double> values = {1.0, -0.5, 3.25, 1e-3};
  for (DType d : {DType::F16, DType::BF16, DType::F32, DType::F64}) {
    std::vector<std::byte> bytes(values.size() * dtype_size(d));
    encode<double>(d, values, bytes);
    std::vector<float> back(values.size());
    decode<float>(d, bytes, back);
    const double tol = d == DType::BF16 ? 1.0 / 256 : d == DType::F16 ? 1.0 / 2048 : 1e-7;  // half an ulp
    for (std::size_t i = 0; i < values.size(); ++i) CHECK(std::fabs(back[i] - values[i]) <= tol * std::fabs(values[i]));
  }
  std::vector<std::byte> eight(8);
  std::vector<float> one(1);
  CHECK_THROWS_AS(decode<float>(DType::I64, eight, one), milora::format_error);
  CHECK_THROWS_AS(decode<float>(DType::F32, eight, one), milora::format_error);  // 8 bytes for 1 value
  CHECK(parse_dtype("BF16") == DType::BF16);
  CHECK_FALSE(parse_dtype("F17").has_value());
}
