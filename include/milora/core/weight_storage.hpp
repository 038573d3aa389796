// WeightStorage: how an adapter's frozen weight W' is stored, and the four things the adapter does
// with it: read it for the init policy, multiply by it (forward y = x W'^T, backward dx = dy W'), and
// add a rank-r product to it (PiSSA/MiLoRA's residual, merge, unmerge).
//
//   NativeWeights  W' in the backend's scalar (float or double): the default, exact to that scalar.
//   Bf16Weights    W' in bfloat16, half of float's memory: what LLaMA fine-tuning stores its frozen
//                  weights in. The adapter's A and B, their gradients and the optimizer state stay in
//                  the backend's scalar; only the frozen weight is bf16.
//
// A bf16 frozen product is computed as a bf16 model computes it (torch's bf16 matmul, cuBLAS's
// tensor cores): both operands rounded to bf16, products accumulated in the backend's scalar. So
// y = round(x) W'^T exactly up to summation order, on every backend, and the rounding of x is part
// of the contract rather than an accident of one backend (the CPU backend could multiply unrounded
// x, the GPU's tensor cores cannot). Adding a product to a bf16 weight rounds once per entry:
// W' <- round(W' + s B A). The contract W' + s B0 A0 = W then holds to bf16 precision (relative
// 2^-8 per entry of W'), no longer to float rounding, and merge followed by unmerge returns W' to
// within one bf16 rounding rather than exactly. docs/math.md, "bf16 frozen weights", derives both.
//
// A backend opts in to Bf16Weights by being a Bf16Backend (milora/core/backend.hpp).
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "milora/core/backend.hpp"

namespace milora {

/// The frozen weight in the backend's own scalar: the adapter's default.
struct NativeWeights {
  static constexpr std::string_view name = "native";
  template <ProductBackend B> using view = view_t<B>;
  template <ProductBackend B> using const_view = const_view_t<B>;

  template <ProductBackend B> static Index rows(const_view<B> w) { return B::rows(w); }
  template <ProductBackend B> static Index cols(const_view<B> w) { return B::cols(w); }
  /// W for the init policies, in the backend's scalar: the weight itself, no copy.
  template <ProductBackend B> static const_view<B> widened(const_view<B> w) { return w; }
  /// c = alpha op(x) op(w) + beta c.
  template <ProductBackend B>
  static void product(scalar_t<B> alpha, const_view_t<B> x, Trans tx, const_view<B> w, Trans tw, scalar_t<B> beta,
                      view_t<B> c) {
    B::gemm(alpha, x, tx, w, tw, beta, c);
  }
  /// w += alpha b a (b: out x r, a: r x in).
  template <ProductBackend B>
  static void add_product(scalar_t<B> alpha, const_view_t<B> b, const_view_t<B> a, view<B> w) {
    B::gemm(alpha, b, Trans::no, a, Trans::no, scalar_t<B>(1), w);
  }
};

/// The frozen weight in bfloat16 (the backend must be a Bf16Backend).
struct Bf16Weights {
  static constexpr std::string_view name = "bf16";
  template <Bf16Backend B> using view = typename B::bf16_view;
  template <Bf16Backend B> using const_view = typename B::bf16_const_view;

  template <Bf16Backend B> static Index rows(const_view<B> w) { return B::bf16_rows(w); }
  template <Bf16Backend B> static Index cols(const_view<B> w) { return B::bf16_cols(w); }
  /// W for the init policies: widened to the backend's scalar (exact), one temporary per layer.
  template <Bf16Backend B> static matrix_t<B> widened(const_view<B> w) { return B::from_bf16(w); }
  /// c = alpha op(round(x)) op(w) + beta c, accumulated in the backend's scalar.
  template <Bf16Backend B>
  static void product(scalar_t<B> alpha, const_view_t<B> x, Trans tx, const_view<B> w, Trans tw, scalar_t<B> beta,
                      view_t<B> c) {
    B::gemm_bf16(alpha, x, tx, w, tw, beta, c);
  }
  /// w = round(w + alpha b a).
  template <Bf16Backend B>
  static void add_product(scalar_t<B> alpha, const_view_t<B> b, const_view_t<B> a, view<B> w) {
    B::add_product_to_bf16(alpha, b, a, w);
  }
};

/// A storage policy usable with backend B: NativeWeights always, Bf16Weights on a Bf16Backend, or a
/// user's own type with the same members.
template <class W, class B>
concept WeightStorage =
    ProductBackend<B> &&
    requires {
      typename W::template view<B>;
      typename W::template const_view<B>;
      { W::name } -> std::convertible_to<std::string_view>;
    } &&
    std::convertible_to<typename W::template view<B>, typename W::template const_view<B>> &&
    std::copy_constructible<typename W::template view<B>> &&
    requires(typename W::template view<B> w, typename W::template const_view<B> cw, const_view_t<B> x, view_t<B> c,
             scalar_t<B> a) {
      { W::template rows<B>(cw) } -> std::convertible_to<Index>;
      { W::template cols<B>(cw) } -> std::convertible_to<Index>;
      { W::template widened<B>(cw) };
      W::template product<B>(a, x, Trans::no, cw, Trans::yes, a, c);
      W::template add_product<B>(a, x, x, w);
    };

}  // namespace milora
