// XMatrixRef<T>: the view type of the xtensor backend. A non-owning, row-major, row-strided window
// on T values: the xtensor counterpart of Eigen::Ref.
//
// Why not an xtensor type? The Backend concept needs a view that a `matrix&` converts to
// implicitly, that can be a sub-block (rows with a stride), and that is cheap to copy and store.
// xtensor's candidates (xt::xview, xtensor_adaptor) have a different type for every expression they
// view and none converts from xt::xtensor&; so the backend stores (pointer, rows, cols, row stride)
// and builds an xtensor adaptor on that memory (expr()) whenever it computes with xtensor.
//
// It converts implicitly from the backend's matrix, xt::xtensor<T, 2> (row-major, xtensor's
// default), so a user's existing tensor is adapted in place. Any other row-major 2-D xtensor
// container or view with unit column stride (xt::xarray, xt::adapt over a foreign buffer, a row
// range xt::view) goes through xmatrix_ref(e), which checks the layout.
#pragma once

#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>

#include <array>
#include <cstddef>
#include <type_traits>

#include "milora/core/errors.hpp"

namespace milora {

/// Row-major 2-D xtensor container with the element type of T (T may be const-qualified).
template <class T>
using xmatrix = xt::xtensor<std::remove_const_t<T>, 2, xt::layout_type::row_major>;

template <class T>
class XMatrixRef {
 public:
  using value_type = std::remove_const_t<T>;

  /// rows x cols values, row i starting at data + i * row_stride (row_stride >= cols).
  XMatrixRef(T* data, Index rows, Index cols, Index row_stride)
      : data_(data), rows_(rows), cols_(cols), stride_(row_stride) {
    if (rows < 0 || cols < 0 || row_stride < cols || (data == nullptr && rows * cols != 0))
      throw shape_error(detail::concat("XMatrixRef: ", detail::shape_str(rows, cols),
                                       " with row stride ", row_stride, data ? "" : " and no data"));
  }
  // Implicit, like Eigen::Ref: a matrix (or a mutable view) is accepted wherever a view is.
  XMatrixRef(xmatrix<T>& m)  // NOLINT(google-explicit-constructor)
    requires(!std::is_const_v<T>)
      : XMatrixRef(m.data(), Index(m.shape()[0]), Index(m.shape()[1]), Index(m.shape()[1])) {}
  XMatrixRef(const xmatrix<T>& m)  // NOLINT(google-explicit-constructor)
    requires std::is_const_v<T>
      : XMatrixRef(m.data(), Index(m.shape()[0]), Index(m.shape()[1]), Index(m.shape()[1])) {}
  // A template, so that it is not mistaken for (and does not suppress) the copy constructor.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<U, value_type>)
  XMatrixRef(const XMatrixRef<U>& m)  // NOLINT(google-explicit-constructor)
      : data_(m.data()), rows_(m.rows()), cols_(m.cols()), stride_(m.row_stride()) {}
  XMatrixRef(const XMatrixRef&) = default;
  XMatrixRef& operator=(const XMatrixRef&) = default;  // rebinds the view, copies no values

  T* data() const { return data_; }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index row_stride() const { return stride_; }
  Index size() const { return rows_ * cols_; }
  /// Rows are back to back: the view is one dense row-major array.
  bool contiguous() const { return stride_ == cols_ || rows_ <= 1; }

  T& operator()(Index i, Index j) const { return data_[i * stride_ + j]; }

  /// The nr x nc sub-matrix starting at (r0, c0); bounds-checked.
  XMatrixRef block(Index r0, Index c0, Index nr, Index nc) const {
    if (r0 < 0 || c0 < 0 || nr < 0 || nc < 0 || r0 + nr > rows_ || c0 + nc > cols_)
      throw shape_error(detail::concat("block (", r0, ", ", c0, ") of size ", detail::shape_str(nr, nc),
                                       " is outside a ", detail::shape_str(rows_, cols_), " matrix"));
    return XMatrixRef(nr * nc == 0 ? data_ : data_ + r0 * stride_ + c0, nr, nc, stride_);
  }

  /// An xtensor expression over this memory (no copy). Assign to it with xt::noalias(e) = ...:
  /// plain `=` on an adaptor goes through a temporary that ignores the row stride.
  auto expr() const { return adapt({Index(rows_), Index(cols_)}, {stride_, 1}); }
  /// The same values seen as a 1 x n row (for a row vector) or as an n x 1 column, whether they
  /// are stored as 1 x n or n x 1: how the backend broadcasts a bias or a diagonal.
  auto as_row() const { return adapt({Index(1), size()}, {0, vector_step()}); }
  auto as_column() const { return adapt({size(), Index(1)}, {vector_step(), 0}); }

 private:
  Index vector_step() const { return rows_ == 1 ? 1 : stride_; }
  // xtensor's convention: the stride of an extent-1 dimension is 0 (it enables the contiguous
  // fast paths and broadcasting).
  auto adapt(std::array<Index, 2> shape, std::array<Index, 2> strides) const {
    const std::array<std::size_t, 2> sh{std::size_t(shape[0]), std::size_t(shape[1])};
    const std::array<std::ptrdiff_t, 2> st{shape[0] == 1 ? 0 : strides[0], shape[1] == 1 ? 0 : strides[1]};
    // The buffer size xtensor wants is the element count (it checks that it equals the product of
    // the shape), not the memory span; elements are addressed through the strides either way.
    return xt::adapt(data_, std::size_t(size()), xt::no_ownership(), sh, st);
  }

  T* data_;
  Index rows_, cols_, stride_;
};

/// A view of any row-major 2-D xtensor container or view whose columns are adjacent in memory
/// (xt::xtensor, xt::xarray, xt::adapt over another framework's buffer, a row-range xt::view).
/// Throws shape_error naming the shape and strides otherwise (column-major, column slices).
template <class E>
auto xmatrix_ref(E& e) {
  using T = std::remove_pointer_t<decltype(e.data() + e.data_offset())>;
  const auto& shape = e.shape();
  const auto& strides = e.strides();
  if (e.dimension() != 2)
    throw shape_error(detail::concat("xmatrix_ref: expression has ", e.dimension(), " dimensions, not 2"));
  const Index rows = Index(shape[0]), cols = Index(shape[1]);
  const Index row_stride = rows <= 1 ? cols : Index(strides[0]);
  const bool unit_columns = cols <= 1 || strides[1] == 1;
  if (!unit_columns || row_stride < cols)
    throw shape_error(detail::concat("xmatrix_ref: a ", detail::shape_str(rows, cols),
                                     " expression with strides (", strides[0], ", ", strides[1],
                                     ") is not row-major with adjacent columns"));
  return XMatrixRef<T>(e.data() + e.data_offset(), rows, cols, row_stride);
}

}  // namespace milora
