// ExactSVD: the reference spectral solver. One full thin SVD (LAPACK gesdd through the backend),
// then the first or last r triplets. O(m n min(m, n)): the cost the fast solvers are measured
// against, and the answer they are checked against.
#pragma once

#include <string_view>

#include "milora/core/spectral_solver.hpp"

namespace milora {

namespace detail {
/// Triplets c0 .. c0+r-1 of a full thin SVD.
template <Backend B>
Triplets<B> select_triplets(const SVDResult<matrix_t<B>>& f, Index c0, Index r) {
  const Index m = B::rows(f.U), n = B::cols(f.Vt);
  return {B::clone(B::cblock(f.U, 0, c0, m, r)), B::clone(B::cblock(f.S, 0, c0, 1, r)),
          B::clone(B::cblock(f.Vt, c0, 0, r, n))};
}

inline void check_triplet_count(Index r, Index m, Index n, std::string_view solver) {
  if (r <= 0 || r > std::min(m, n))
    throw shape_error(concat(solver, ": cannot take ", r, " singular triplets of a ",
                             shape_str(m, n), " matrix"));
}
}  // namespace detail

struct ExactSVD {
  static constexpr std::string_view name = "exact";

  /// The r largest singular triplets.
  template <Backend B>
  Triplets<B> top(const_view_t<B> w, Index r) const {
    detail::check_triplet_count(r, B::rows(w), B::cols(w), name);
    return detail::select_triplets<B>(B::svd(w), 0, r);
  }

  /// The r smallest singular triplets (still in descending order).
  template <Backend B>
  Triplets<B> bottom(const_view_t<B> w, Index r) const {
    detail::check_triplet_count(r, B::rows(w), B::cols(w), name);
    const auto full = B::svd(w);
    return detail::select_triplets<B>(full, B::cols(full.S) - r, r);
  }
};

}  // namespace milora
