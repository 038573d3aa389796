// Completes a symmetric row-major matrix of which only the upper triangle was computed (what BLAS
// syrk writes), for the host backends.
#pragma once

#include <algorithm>

#include "milora/core/errors.hpp"

namespace milora::detail {

/// Copies the upper triangle of a row-major n x n matrix into the lower one, in 64 x 64 tiles (a
/// plain loop reads one column per row: a cache miss per element at n = 4096).
template <class T>
void mirror_upper(Index n, T* c, Index ldc) {
  constexpr Index tile = 64;
  for (Index i0 = 0; i0 < n; i0 += tile)
    for (Index j0 = 0; j0 <= i0; j0 += tile)
      for (Index i = i0; i < std::min(n, i0 + tile); ++i)
        for (Index j = j0; j < std::min(i, j0 + tile); ++j) c[i * ldc + j] = c[j * ldc + i];
}

}  // namespace milora::detail
