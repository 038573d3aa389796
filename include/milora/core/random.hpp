// Counter-based random numbers: value k of stream `seed` is a pure function of (seed, k).
//
// Why not <random>: std::normal_distribution differs between standard libraries, and a GPU
// backend cannot replay a sequential engine cheaply. A stateless hash of (seed, k) gives the same
// numbers on every backend and every thread layout, so "same seed => same adapter" holds across
// Eigen, xtensor and CUDA, and element (i, j) of a rows x cols matrix always uses k = i*cols + j.
// The mixer is SplitMix64's finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
// generators", OOPSLA 2014), which passes BigCrush when fed a counter.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>

#include "milora/core/host_device.hpp"

namespace milora::random {

MILORA_HOST_DEVICE constexpr std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// 64 random bits for draw `k` of stream `seed`.
MILORA_HOST_DEVICE constexpr std::uint64_t bits(std::uint64_t seed, std::uint64_t k) {
  return mix64(mix64(seed) ^ k);
}

/// Uniform on [0, 1) with 53 random bits.
MILORA_HOST_DEVICE constexpr double uniform01(std::uint64_t seed, std::uint64_t k) {
  return static_cast<double>(bits(seed, k) >> 11) * 0x1.0p-53;
}

/// Uniform on [lo, hi).
MILORA_HOST_DEVICE constexpr double uniform(std::uint64_t seed, std::uint64_t k, double lo, double hi) {
  return lo + (hi - lo) * uniform01(seed, k);
}

/// Standard normal by Box-Muller from the draws 2k and 2k+1. Computed in double whatever the
/// target scalar, so float and double backends see the same values up to rounding.
MILORA_HOST_DEVICE inline double normal(std::uint64_t seed, std::uint64_t k) {
  const double u1 = 1.0 - uniform01(seed, 2 * k);  // (0, 1]: log is finite
  const double u2 = uniform01(seed, 2 * k + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

/// The host backends' fill_uniform / fill_normal: element (i, j) of any matrix-like m with m(i, j),
/// m.rows(), m.cols() gets draw i * cols + j.
template <class T, class M>
void fill_uniform_host(M& m, double lo, double hi, std::uint64_t seed) {
  for (std::int64_t i = 0; i < std::int64_t(m.rows()); ++i)
    for (std::int64_t j = 0; j < std::int64_t(m.cols()); ++j)
      m(i, j) = T(uniform(seed, std::uint64_t(i * std::int64_t(m.cols()) + j), lo, hi));
}
template <class T, class M>
void fill_normal_host(M& m, double mean, double stddev, std::uint64_t seed) {
  for (std::int64_t i = 0; i < std::int64_t(m.rows()); ++i)
    for (std::int64_t j = 0; j < std::int64_t(m.cols()); ++j)
      m(i, j) = T(mean + stddev * normal(seed, std::uint64_t(i * std::int64_t(m.cols()) + j)));
}

}  // namespace milora::random
