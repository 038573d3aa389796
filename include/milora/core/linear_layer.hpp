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
//
// With Bf16Weights, weight() converts to the backend's bf16_view instead (Bf16Linear below).
#pragma once

#include <concepts>
#include <utility>

#include "milora/core/backend.hpp"
#include "milora/core/weight_storage.hpp"

namespace milora {

/// A layer whose weight is stored as W says (milora/core/weight_storage.hpp): what an
/// Adapter<B, Init, W> wraps.
template <class L, class B, class W>
concept StoredLinearLayer = WeightStorage<W, B> && requires(L& layer) {
  { layer.weight() } -> std::convertible_to<typename W::template view<B>>;
  { layer.in_features() } -> std::convertible_to<Index>;
  { layer.out_features() } -> std::convertible_to<Index>;
};

template <class L, class B, class W>
concept StoredLinearLayerWithBias = StoredLinearLayer<L, B, W> && requires(L& layer) {
  { layer.bias() } -> std::convertible_to<const_view_t<B>>;
};

/// A layer with its weight in the backend's scalar (the default storage).
template <class L, class B>
concept LinearLayer = StoredLinearLayer<L, B, NativeWeights>;

template <class L, class B>
concept LinearLayerWithBias = StoredLinearLayerWithBias<L, B, NativeWeights>;

/// A plain linear layer y = x W^T + b that owns its weight (and optional bias): the baseline the
/// adapters are measured against, and a convenient layer for examples and tests.
template <ProductBackend B>
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

/// A linear layer y = x W^T + b with W stored in bf16 (half of float's memory) and the bias in the
/// backend's scalar. Products follow milora/core/weight_storage.hpp: round(x) W^T, accumulated in
/// the backend's scalar. An adapter wraps it as Adapter<B, Init, Bf16Weights> (e.g. MiLoRA<B,
/// ExactSVD, Bf16Weights>), and PiSSA / MiLoRA write their residual into the bf16 weight.
template <Bf16Backend B>
class Bf16Linear {
 public:
  using matrix = matrix_t<B>;
  using bf16_matrix = typename B::bf16_matrix;

  explicit Bf16Linear(bf16_matrix weight, matrix bias = B::zeros(0, 0))
      : weight_(std::move(weight)), bias_(std::move(bias)) {
    const Index b = numel<B>(bias_);
    if (b != 0 && b != out_features())
      throw shape_error(detail::concat("Bf16Linear: bias has ", b, " values for ", out_features(), " outputs"));
  }
  /// A layer with `weight` (in the backend's scalar) rounded to bf16, to nearest even.
  static Bf16Linear rounded(const_view_t<B> weight, matrix bias = B::zeros(0, 0)) {
    return Bf16Linear(B::to_bf16(weight), std::move(bias));
  }

  bf16_matrix& weight() { return weight_; }
  const bf16_matrix& weight() const { return weight_; }
  const matrix& bias() const { return bias_; }
  Index in_features() const { return B::bf16_cols(weight_); }
  Index out_features() const { return B::bf16_rows(weight_); }

  /// y = round(x) W^T + b.
  void forward(const_view_t<B> x, view_t<B> y) const {
    B::gemm_bf16(1, x, Trans::no, weight_, Trans::yes, 0, y);
    if (numel<B>(bias_) != 0) B::add_row_broadcast(y, bias_);
  }
  /// dx = round(dy) W.
  void backward_input(const_view_t<B> dy, view_t<B> dx) const {
    B::gemm_bf16(1, dy, Trans::no, weight_, Trans::no, 0, dx);
  }

 private:
  bf16_matrix weight_;
  matrix bias_;
};

/// Adapts a weight that lives elsewhere (another framework's tensor, a memory-mapped checkpoint)
/// in place: holds only views, so PiSSA / MiLoRA write the residual straight into that memory.
/// WeightRef<B, Bf16Weights> does the same for a bf16 tensor (a view of the backend's bf16_view type).
template <ProductBackend B, class Weights = NativeWeights>
  requires WeightStorage<Weights, B>
class WeightRef {
 public:
  using weight_view = typename Weights::template view<B>;
  explicit WeightRef(weight_view weight) : weight_(weight), bias_(no_bias()) {}
  WeightRef(weight_view weight, const_view_t<B> bias) : weight_(weight), bias_(bias) {}

  weight_view weight() { return weight_; }
  /// The bias, or an empty (0 x 0) matrix when the layer has none.
  const_view_t<B> bias() const { return bias_; }
  Index in_features() const { return Weights::template cols<B>(weight_); }
  Index out_features() const { return Weights::template rows<B>(weight_); }

 private:
  static const matrix_t<B>& no_bias() {
    static const matrix_t<B> none = B::zeros(0, 0);
    return none;
  }
  weight_view weight_;
  const_view_t<B> bias_;
};

namespace detail {
template <ProductBackend B, class Weights>
struct owning_linear;
template <ProductBackend B>
struct owning_linear<B, NativeWeights> {
  using type = Linear<B>;
  static type from(matrix_t<B> w) { return type(std::move(w)); }
};
template <Bf16Backend B>
struct owning_linear<B, Bf16Weights> {
  using type = Bf16Linear<B>;
  static type from(matrix_t<B> w) { return type::rounded(w); }
};
}  // namespace detail

/// The layer that owns a weight stored as `Weights` says: Linear<B> for NativeWeights, Bf16Linear<B>
/// for Bf16Weights. For code written once over the storage (a model whose storage is a parameter).
template <ProductBackend B, class Weights>
using OwningLinear = typename detail::owning_linear<B, Weights>::type;

/// An OwningLinear<B, Weights> holding `w` (a weight in the backend's scalar), rounded to bf16 for
/// Bf16Weights.
template <class Weights, ProductBackend B>
OwningLinear<B, Weights> owning_linear_from(matrix_t<B> w) {
  return detail::owning_linear<B, Weights>::from(std::move(w));
}

}  // namespace milora
