// What the host backends (Eigen, xtensor) share, written once: HostBackend<Backend, T, Storage>
// gives a backend every member of the Bf16Backend concept (milora/core/backend.hpp) and its random
// fills by inheritance.
//
// Storage says how the host library holds matrices of any element type U:
//   template <class U> using matrix = ...;      owning, row-major
//   template <class U> using view = ...;        mutable view; m(i, j), m.rows(), m.cols(), m.block(...)
//   template <class U> using const_view = ...;
//   template <class U> static matrix<U> uninitialized(Index rows, Index cols);
//   template <class V> static auto* row(V m, Index i);   the first element of row i of a view
//   using bf16_element = ...;                   16 bits, bf16's bit pattern (std::bit_cast to uint16_t)
// The fills give element (i, j) draw i * cols + j of milora/core/random.hpp, as every backend does.
// Rows are contiguous in every view (row-major, inner stride 1), so conversions walk row pointers,
// which the compiler vectorises. Rounding is milora's float_to_bf16 (to nearest, ties to even,
// double through float, as on every backend); widening is exact. The products widen W a panel of
// rows at a time (bf16_panels.hpp).
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

#include "milora/backend/detail/bf16_panels.hpp"
#include "milora/core/backend.hpp"
#include "milora/core/bf16.hpp"
#include "milora/core/checks.hpp"
#include "milora/core/random.hpp"

namespace milora::detail {

template <class Backend, class T, class Storage>
struct HostBackend {
  static void fill_uniform(typename Storage::template view<T> m, double lo, double hi, std::uint64_t seed) {
    random::fill_uniform_host<T>(m, lo, hi, seed);
  }
  static void fill_normal(typename Storage::template view<T> m, double mean, double stddev, std::uint64_t seed) {
    random::fill_normal_host<T>(m, mean, stddev, seed);
  }

  using bf16_matrix = typename Storage::template matrix<typename Storage::bf16_element>;
  using bf16_view = typename Storage::template view<typename Storage::bf16_element>;
  using bf16_const_view = typename Storage::template const_view<typename Storage::bf16_element>;
  /// How much of W the products widen at once (bf16_panels.hpp says why the size hardly matters).
  static constexpr Index bf16_panel_bytes = Index(8) << 20;

  static bf16_matrix bf16_from_host(Index rows, Index cols, std::span<const std::uint16_t> bits) {
    if (rows < 0 || cols < 0 || static_cast<Index>(bits.size()) != rows * cols)
      throw shape_error(concat("bf16_from_host: ", bits.size(), " values for a ", shape_str(rows, cols), " matrix"));
    bf16_matrix m = Storage::template uninitialized<typename Storage::bf16_element>(rows, cols);
    for (Index i = 0; i < (cols > 0 ? rows : 0); ++i) {
      auto* d = Storage::row(bf16_view(m), i);
      for (Index j = 0; j < cols; ++j) d[j] = std::bit_cast<typename Storage::bf16_element>(bits[std::size_t(i * cols + j)]);
    }
    return m;
  }
  static std::vector<std::uint16_t> bf16_to_host(bf16_const_view m) {
    std::vector<std::uint16_t> out(static_cast<std::size_t>(m.rows() * m.cols()));
    for (Index i = 0; i < (m.cols() > 0 ? m.rows() : 0); ++i) {
      const auto* s = Storage::row(m, i);
      for (Index j = 0; j < m.cols(); ++j) out[std::size_t(i * m.cols() + j)] = std::bit_cast<std::uint16_t>(s[j]);
    }
    return out;
  }
  static Index bf16_rows(bf16_const_view m) { return m.rows(); }
  static Index bf16_cols(bf16_const_view m) { return m.cols(); }
  static bf16_view bf16_block(bf16_view m, Index r0, Index c0, Index nr, Index nc) { return m.block(r0, c0, nr, nc); }
  static bf16_const_view bf16_cblock(bf16_const_view m, Index r0, Index c0, Index nr, Index nc) {
    return m.block(r0, c0, nr, nc);
  }

  /// m rounded to bf16, to nearest even (double through float, as every milora backend does).
  static bf16_matrix to_bf16(typename Storage::template const_view<T> m) {
    bf16_matrix out = Storage::template uninitialized<typename Storage::bf16_element>(m.rows(), m.cols());
    round_into_bf16(m, out);
    return out;
  }
  /// dst = round(src), same shapes.
  static void round_into_bf16(typename Storage::template const_view<T> src, bf16_view dst) {
    require_same_shape(src.rows(), src.cols(), dst.rows(), dst.cols(), "round_into_bf16");
    for (Index i = 0; i < (src.cols() > 0 ? src.rows() : 0); ++i) {
      const T* s = Storage::row(src, i);
      auto* d = Storage::row(dst, i);
      for (Index j = 0; j < src.cols(); ++j) d[j] = std::bit_cast<typename Storage::bf16_element>(float_to_bf16(float(s[j])));
    }
  }
  /// w widened to T (exact).
  static typename Storage::template matrix<T> from_bf16(bf16_const_view w) {
    auto out = Storage::template uninitialized<T>(w.rows(), w.cols());
    from_bf16_into(w, out);
    return out;
  }
  /// dst = src widened (exact), same shapes, into existing storage.
  static void from_bf16_into(bf16_const_view src, typename Storage::template view<T> dst) {
    require_same_shape(src.rows(), src.cols(), dst.rows(), dst.cols(), "from_bf16_into");
    for (Index i = 0; i < (src.cols() > 0 ? src.rows() : 0); ++i) {
      const auto* s = Storage::row(src, i);
      T* d = Storage::row(dst, i);
      for (Index j = 0; j < src.cols(); ++j) d[j] = T(bf16_to_float(std::bit_cast<std::uint16_t>(s[j])));
    }
  }
  /// c = alpha op(round(x)) op(w) + beta c, accumulated in T.
  static void gemm_bf16(T alpha, typename Storage::template const_view<T> x, Trans tx, bf16_const_view w, Trans tw, T beta,
                        typename Storage::template view<T> c) {
    gemm_bf16_by_panels<Backend>(alpha, x, tx, w, tw, beta, c, bf16_panel_bytes);
  }
  /// w = round(w + alpha b a), b: out x r, a: r x in.
  static void add_product_to_bf16(T alpha, typename Storage::template const_view<T> b,
                                  typename Storage::template const_view<T> a, bf16_view w) {
    add_product_to_bf16_by_panels<Backend>(alpha, b, a, w, bf16_panel_bytes);
  }

};

}  // namespace milora::detail
