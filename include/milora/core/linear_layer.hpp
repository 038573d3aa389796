// LinearLayer: anything with a weight an adapter can wrap, plus the two layers milora ships.
//
// The adapter never copies the weight. It keeps a view of it, because PiSSA and MiLoRA must
// replace W by the residual W' = W - s*B*A inside the user's own layer, and because a 4096 x 11008
// weight is too big to duplicate per layer. Any type works if it has:
//
//   weight()        -> something convertible to Backend::view, out x in, row-major (mutable)
//   in_features()   -> Index
//   out_features()  -> Index
//   bias()          -> optional member: convertible to Backend::const_view, out values, or empty
//                      (0 values) when the layer has none
#pragma once

#include <concepts>
#include <utility>

#include "milora/core/backend.hpp"

namespace milora {

template <class L, class B>
concept LinearLayer = Backend<B> && requires(L& layer) {
  { layer.weight() } -> std::convertible_to<view_t<B>>;
  { layer.in_features() } -> std::convertible_to<Index>;
  { layer.out_features() } -> std::convertible_to<Index>;
};

template <class L, class B>
concept LinearLayerWithBias = LinearLayer<L, B> && requires(L& layer) {
  { layer.bias() } -> std::convertible_to<const_view_t<B>>;
};

/// A plain linear layer y = x W^T + b that owns its weight (and optional bias): the baseline the
/// adapters are measured against, and a convenient layer for examples and tests.
template <Backend B>
class Linear {
 public:
  using matrix = matrix_t<B>;

  /// Zero weight, no bias.
  Linear(Index out_features, Index in_features)
      : weight_(B::zeros(out_features, in_features)), bias_(B::zeros(0, 0)) {}
  explicit Linear(matrix weight, matrix bias = B::zeros(0, 0))
      : weight_(std::move(weight)), bias_(std::move(bias)) {
    const Index b = numel<B>(bias_);
    if (b != 0 && b != out_features())
      throw shape_error(detail::concat("Linear: bias has ", b, " values for ", out_features(),
                                       " outputs"));
  }

  matrix& weight() { return weight_; }
  const matrix& weight() const { return weight_; }
  const matrix& bias() const { return bias_; }
  Index in_features() const { return B::cols(weight_); }
  Index out_features() const { return B::rows(weight_); }

  /// y = x W^T + b, x tokens x in, y tokens x out.
  void forward(const_view_t<B> x, view_t<B> y) const {
    B::gemm(1, x, Trans::no, weight_, Trans::yes, 0, y);
    if (numel<B>(bias_) != 0) B::add_row_broadcast(y, bias_);
  }
  /// dx = dy W (the frozen layer's only gradient).
  void backward_input(const_view_t<B> dy, view_t<B> dx) const {
    B::gemm(1, dy, Trans::no, weight_, Trans::no, 0, dx);
  }

 private:
  matrix weight_;
  matrix bias_;
};

/// Adapts a weight that lives elsewhere (another framework's tensor, a memory-mapped checkpoint)
/// in place: holds only views, so PiSSA / MiLoRA write the residual straight into that memory.
template <Backend B>
class WeightRef {
 public:
  explicit WeightRef(view_t<B> weight) : weight_(weight), bias_(no_bias()) {}
  WeightRef(view_t<B> weight, const_view_t<B> bias) : weight_(weight), bias_(bias) {}

  view_t<B> weight() { return weight_; }
  /// The bias, or an empty (0 x 0) matrix when the layer has none.
  const_view_t<B> bias() const { return bias_; }
  Index in_features() const { return B::cols(weight_); }
  Index out_features() const { return B::rows(weight_); }

 private:
  static const matrix_t<B>& no_bias() {
    static const matrix_t<B> none = B::zeros(0, 0);
    return none;
  }
  view_t<B> weight_;
  const_view_t<B> bias_;
};

}  // namespace milora
