// HostMatrix<T>: a row-major matrix in ordinary host memory, the currency of the file layer.
//
// Files are read and written on the host whatever backend trains the adapter; HostMatrix is what
// a tensor becomes on its way between a file and a backend (B::from_host / B::to_host), and it has
// no dependency on any tensor library.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <span>
#include <utility>
#include <vector>

#include "milora/core/backend.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/weight_storage.hpp"

namespace milora::io {

template <class T>
struct HostMatrix {
  Index rows = 0, cols = 0;
  std::vector<T> data;  // rows * cols values, row-major

  HostMatrix() = default;
  HostMatrix(Index r, Index c) : rows(r), cols(c), data(static_cast<std::size_t>(r * c)) {}
  HostMatrix(Index r, Index c, std::vector<T> values) : rows(r), cols(c), data(std::move(values)) {
    if (static_cast<Index>(data.size()) != r * c)
      throw shape_error(detail::concat("HostMatrix: ", data.size(), " values for a ", detail::shape_str(r, c),
                                       " matrix"));
  }
  T& operator()(Index i, Index j) { return data[static_cast<std::size_t>(i * cols + j)]; }
  const T& operator()(Index i, Index j) const { return data[static_cast<std::size_t>(i * cols + j)]; }
};

/// Throws value_error "WHAT holds nan at (i, j)" for the first NaN or Inf of m: values read from
/// a file are checked before anything computes with them, so a damaged file is named, not a NaN
/// that surfaces later in a merged weight, a loss or a sampled token.
template <class T>
void require_finite(const HostMatrix<T>& m, const std::string& what) {
  static_assert(std::is_floating_point_v<T>, "require_finite: a matrix of floating-point values");
  for (std::size_t k = 0; k < m.data.size(); ++k)
    if (!std::isfinite(m.data[k]))
      throw value_error(detail::concat(what, " holds ", m.data[k], " at (", Index(k) / m.cols, ", ", Index(k) % m.cols, ")"));
}

/// A backend matrix with the same values.
template <ProductBackend B>
matrix_t<B> to_backend(const HostMatrix<scalar_t<B>>& m) {
  return B::from_host(m.rows, m.cols, std::span<const scalar_t<B>>(m.data));
}

/// A backend bf16 matrix from bf16 bits (SafetensorsFile::load_bf16), for a Bf16Linear.
template <Bf16Backend B>
typename B::bf16_matrix to_backend_bf16(const HostMatrix<std::uint16_t>& m) {
  return B::bf16_from_host(m.rows, m.cols, std::span<const std::uint16_t>(m.data));
}

/// A host copy of a backend matrix or view.
template <ProductBackend B>
HostMatrix<scalar_t<B>> to_host_matrix(const_view_t<B> v) {
  return {B::rows(v), B::cols(v), B::to_host(v)};
}

}  // namespace milora::io
