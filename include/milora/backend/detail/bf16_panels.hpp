// The bf16 frozen-weight products of the host backends (Eigen, xtensor), written once over the
// backend's own operations. A host BLAS has no bf16 x float product, so W is widened to the
// backend's scalar a panel of rows at a time (panel_bytes of it) and multiplied with the backend's
// gemm: the conversion is one pass over W per product against 2 * tokens passes of arithmetic, and
// a 4096 x 11008 weight never exists in float at once.
//
// Panels are taken so that each gemm writes its own columns of C once: rows of W when the product
// uses W^T (a forward, y = x W^T), columns of W when it uses W (a backward, dx = dy W); splitting the
// summation index instead reads and writes all of C once per panel. What the bf16 path costs over a
// float layer on the CPU is the rounded copy of x and the widening, not the panel size
// (docs/benchmarks.md, "Why the code is as it is").
//
// B is a Bf16Backend (milora/core/backend.hpp): these call nothing that concept does not name.
#pragma once

#include <algorithm>

#include "milora/core/backend.hpp"
#include "milora/core/errors.hpp"

namespace milora::detail {

/// Rows (or columns) of a panel: panel_bytes of the widened weight, at least one.
template <class T>
Index bf16_panel_width(Index length, Index panel_bytes) {
  return std::max<Index>(1, panel_bytes / (Index(sizeof(T)) * std::max<Index>(length, 1)));
}

/// c = alpha op(round(x)) op(w) + beta c, accumulated in B's scalar.
template <Bf16Backend B>
void gemm_bf16_by_panels(scalar_t<B> alpha, const_view_t<B> x, Trans tx, typename B::bf16_const_view w, Trans tw,
                         scalar_t<B> beta, view_t<B> c, Index panel_bytes) {
  using T = scalar_t<B>;
  const Index m = B::rows(c), n = B::cols(c);
  const Index k = tx == Trans::yes ? B::rows(x) : B::cols(x), xm = tx == Trans::yes ? B::cols(x) : B::rows(x);
  const Index wrows = B::bf16_rows(w), wcols = B::bf16_cols(w);
  const Index wk = tw == Trans::yes ? wcols : wrows, wn = tw == Trans::yes ? wrows : wcols;
  if (xm != m || wk != k || wn != n)
    throw shape_error(concat("gemm_bf16: op(X) ", shape_str(xm, k), " times op(W) ", shape_str(wk, wn), " into C ",
                             shape_str(m, n)));
  if (m == 0 || n == 0) return;
  if (k == 0) {
    B::scale(c, beta);
    return;
  }
  const matrix_t<B> xr = B::from_bf16(B::to_bf16(x));  // x rounded to bf16, in T
  // Panel p covers C's columns p0 .. p0 + np: W's rows for op(W) = W^T, W's columns for op(W) = W.
  const Index panel = bf16_panel_width<T>(k, panel_bytes);
  for (Index p0 = 0; p0 < n; p0 += panel) {
    const Index np = std::min(panel, n - p0);
    const matrix_t<B> wp = B::from_bf16(tw == Trans::yes ? B::bf16_cblock(w, p0, 0, np, k) : B::bf16_cblock(w, 0, p0, k, np));
    B::gemm(alpha, xr, tx, wp, tw, beta, B::block(c, 0, p0, m, np));
  }
}

/// w = round(w + alpha b a), b: out x r, a: r x in.
template <Bf16Backend B>
void add_product_to_bf16_by_panels(scalar_t<B> alpha, const_view_t<B> b, const_view_t<B> a, typename B::bf16_view w,
                                   Index panel_bytes) {
  using T = scalar_t<B>;
  const Index wrows = B::bf16_rows(w), wcols = B::bf16_cols(w);
  if (B::rows(b) != wrows || B::cols(a) != wcols || B::cols(b) != B::rows(a))
    throw shape_error(concat("add_product_to_bf16: ", shape_str(B::rows(b), B::cols(b)), " times ",
                             shape_str(B::rows(a), B::cols(a)), " into a bf16 ", shape_str(wrows, wcols)));
  const Index panel = bf16_panel_width<T>(wcols, panel_bytes);
  for (Index p0 = 0; p0 < wrows; p0 += panel) {
    const Index np = std::min(panel, wrows - p0);
    const typename B::bf16_view rows_p = B::bf16_block(w, p0, 0, np, wcols);
    matrix_t<B> wp = B::from_bf16(rows_p);
    B::gemm(alpha, B::cblock(b, p0, 0, np, B::cols(b)), Trans::no, a, Trans::no, T(1), wp);
    B::round_into_bf16(wp, rows_p);
  }
}

}  // namespace milora::detail
