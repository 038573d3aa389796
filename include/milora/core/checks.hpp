// Argument checks shared by the adapter, the optimizer and the examples. Each throws with a
// message that names what was wrong, and is called before anything is modified.
#pragma once

#include <cmath>

#include "milora/core/backend.hpp"

namespace milora::detail {

/// Throws value_error naming the first non-finite entry of m (and where it is), if any.
template <ProductBackend B>
void require_finite(const_view_t<B> m, const char* what) {
  if (B::all_finite(m)) return;
  const auto host = B::to_host(m);  // error path only: fine to copy to the host
  const Index cols = B::cols(m);
  for (std::size_t k = 0; k < host.size(); ++k)
    if (!std::isfinite(static_cast<double>(host[k])))
      throw value_error(concat(what, " (", shape_str(B::rows(m), cols), ") contains ",
                               static_cast<double>(host[k]), " at (", Index(k) / cols, ", ",
                               Index(k) % cols, ")"));
}

/// Throws shape_error unless m is rows x cols.
template <ProductBackend B>
void require_shape(const_view_t<B> m, Index rows, Index cols, const char* what) {
  if (B::rows(m) != rows || B::cols(m) != cols)
    throw shape_error(concat(what, " is ", shape_str(B::rows(m), B::cols(m)), ", expected ",
                             shape_str(rows, cols)));
}

}  // namespace milora::detail
