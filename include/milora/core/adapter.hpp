// Adapter<Backend, Init, Weights>: a low-rank adapter beside a frozen linear layer.
//
//   y = x W'^T (+ b) + s * (x A^T) B^T          x: tokens x in, y: tokens x out
//
// W' is the layer's own weight, viewed in place: W for LoRA, W - s*B0*A0 for PiSSA / MiLoRA (the
// init policy decides). A (r x in) and B (out x r) are the trainable parameters, s = alpha/r (or
// alpha/sqrt(r) with rsLoRA). The formulas and shapes are derived in docs/math.md.
//
// Weights says how W' is stored (milora/core/weight_storage.hpp): in the backend's scalar
// (NativeWeights, the default) or in bf16 (Bf16Weights: the layer is e.g. a Bf16Linear); A, B and
// their gradients are always in the backend's scalar.
//
// Activations are passed in explicitly, like llm.c's layer_forward/layer_backward pairs: forward
// writes h = x A^T for the caller to keep, backward takes it back. The adapter holds no per-batch
// state, so one adapter serves many micro-batches and threads.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "milora/core/backend.hpp"
#include "milora/core/checks.hpp"
#include "milora/core/config.hpp"
#include "milora/core/init_policy.hpp"
#include "milora/core/linear_layer.hpp"
#include "milora/core/parameter.hpp"
#include "milora/core/weight_storage.hpp"

namespace milora {

// The backend parameter is BE (not B) because B() is the adapter's up-projection, as in the papers.
template <ProductBackend BE, class Init, class Weights = NativeWeights>
  requires InitPolicy<Init, BE> && WeightStorage<Weights, BE>
class Adapter {
 public:
  using backend = BE;
  using init_policy = Init;
  using weight_storage = Weights;
  using scalar = scalar_t<BE>;
  using matrix = matrix_t<BE>;
  using view = view_t<BE>;
  using const_view = const_view_t<BE>;
  using weight_view = typename Weights::template view<BE>;
  using weight_const_view = typename Weights::template const_view<BE>;

  /// Wraps `layer` (kept by reference through a view of its weight: it must outlive the adapter),
  /// initialises A and B with `init`, and for residual policies replaces the layer's weight by
  /// W - s*B*A. Throws shape_error / value_error, leaving the layer untouched, if the config does
  /// not fit the layer or the weight holds NaN/Inf.
  template <StoredLinearLayer<BE, Weights> L>
  Adapter(L& layer, const AdapterConfig& config, const Init& init = Init{})
      : Adapter(Prepared{layer.weight(), validated_factors(layer, config, init)}, layer_bias(layer),
                config, init) {}

  /// The same with factors computed beforehand by initial_factors(layer, config, init): a caller
  /// that wraps many layers (a whole model) computes every init first, so that one that fails
  /// changes no weight. Throws shape_error / value_error, leaving the layer untouched, if `factors`
  /// do not fit the layer or hold NaN/Inf.
  template <StoredLinearLayer<BE, Weights> L>
  Adapter(L& layer, const AdapterConfig& config, AdapterFactors<BE> factors, const Init& init = Init{})
      : Adapter(Prepared{layer.weight(), checked_factors(layer, config, std::move(factors))}, layer_bias(layer), config,
                init) {}

  /// What the constructor would initialise A and B to for `layer`, without touching it: the
  /// config and layer checked, then `init`'s factors (checked for shape and NaN/Inf).
  template <StoredLinearLayer<BE, Weights> L>
  static AdapterFactors<BE> initial_factors(L& layer, const AdapterConfig& config, const Init& init = Init{}) {
    return validated_factors(layer, config, init);
  }

  Adapter(const Adapter&) = delete;             // two adapters on one weight would double-merge
  Adapter& operator=(const Adapter&) = delete;
  Adapter(Adapter&&) = default;
  Adapter& operator=(Adapter&&) = delete;       // a view's assignment would copy weight *values*

  // ---- shape and hyperparameters -------------------------------------------------------------
  Index rank() const { return config_.rank; }
  Index in_features() const { return Weights::template cols<BE>(weight_); }
  Index out_features() const { return Weights::template rows<BE>(weight_); }
  double scale() const { return scale_; }
  const AdapterConfig& config() const { return config_; }
  const Init& init() const { return init_; }
  bool merged() const { return merged_; }
  /// Whether the init took s*B0*A0 out of the base (PiSSA, MiLoRA, OLoRA): the frozen weight is then
  /// W' = W - s*B0*A0, and an export for the original W needs the initial factors too.
  bool residual() const { return residual_; }
  /// The frozen weight as the adapter sees it: W' unmerged, W' + s*B*A merged.
  weight_const_view weight() const { return weight_; }

  // ---- parameters ----------------------------------------------------------------------------
  const matrix& A() const { return A_; }
  const matrix& B() const { return B_; }
  matrix& A() { return A_; }
  matrix& B() { return B_; }
  const matrix& grad_A() const { return dA_; }
  const matrix& grad_B() const { return dB_; }
  /// Whether B is fixed by the init policy (MiCA): only A trains, and grad_B stays zero.
  bool frozen_B() const { return frozen_B_; }
  /// The trainable factors with their gradients, for an optimizer: {lora_A, lora_B}, or {lora_A}
  /// when B is frozen.
  std::vector<Parameter<backend>> parameters() {
    std::vector<Parameter<backend>> p{{"lora_A", A_, dA_}};
    if (!frozen_B_) p.push_back({"lora_B", B_, dB_});
    return p;
  }
  /// r * (in + out): what a LoRA of this rank trains; r * in with B frozen.
  Index num_trainable() const { return rank() * (in_features() + (frozen_B_ ? 0 : out_features())); }
  void zero_grad() {
    BE::scale(dA_, scalar(0));
    BE::scale(dB_, scalar(0));
  }

  // ---- forward / backward --------------------------------------------------------------------
  /// y = x W'^T + b + s (x A^T) B^T. Writes y (tokens x out) and h = x A^T (tokens x r), which
  /// backward needs. When merged, y = x (W' + s B A)^T + b and h is left alone.
  void forward(const_view x, view y, view h) const {
    const Index t = check_input(x);
    detail::require_shape<BE>(y, t, out_features(), "forward: output y");
    if (!merged_) detail::require_shape<BE>(h, t, rank(), "forward: activation h");
    Weights::template product<BE>(1, x, Trans::no, weight_, Trans::yes, 0, y);
    if (bias_) BE::add_row_broadcast(y, *bias_);
    if (merged_) return;
    BE::gemm(1, x, Trans::no, A_, Trans::yes, 0, h);
    BE::gemm(scalar(scale_), h, Trans::no, B_, Trans::yes, 1, y);
  }

  /// Convenience: returns y, allocating y and h.
  matrix forward(const_view x) const {
    const Index t = check_input(x);
    matrix y = BE::zeros(t, out_features());
    matrix h = BE::zeros(merged_ ? 0 : t, merged_ ? 0 : rank());
    forward(x, y, h);
    return y;
  }

  /// Accumulates dA += dh^T x and dB += s dy^T h (dh = s dy B; not dB when B is frozen), as
  /// PyTorch accumulates .grad, and writes dx = dy W' + dh A. x and h are what forward saw and
  /// wrote; dy is dL/dy.
  void backward(const_view x, const_view h, const_view dy, view dx) {
    const Index t = check_backward(x, h, dy);
    detail::require_shape<BE>(dx, t, in_features(), "backward: input gradient dx");
    matrix dh = backward_params(x, h, dy);
    Weights::template product<BE>(1, dy, Trans::no, weight_, Trans::no, 0, dx);
    BE::gemm(1, dh, Trans::no, A_, Trans::no, 1, dx);
  }

  /// As above for the first adapted layer of a network, where nobody needs dx.
  void backward(const_view x, const_view h, const_view dy) {
    check_backward(x, h, dy);
    backward_params(x, h, dy);
  }

  // ---- merge ---------------------------------------------------------------------------------
  /// W' <- W' + s*B*A: inference at the plain layer's cost. Training needs unmerge() first.
  void merge() {
    if (merged_) throw state_error("Adapter::merge: already merged");
    Weights::template add_product<BE>(scalar(scale_), B_, A_, weight_);
    merged_ = true;
  }
  /// W' <- W' - s*B*A, the inverse of merge() (up to rounding: one bf16 rounding with Bf16Weights).
  void unmerge() {
    if (!merged_) throw state_error("Adapter::unmerge: not merged");
    Weights::template add_product<BE>(scalar(-scale_), B_, A_, weight_);
    merged_ = false;
  }

 private:
  template <StoredLinearLayer<BE, Weights> L>
  static AdapterFactors<BE> validated_factors(L& layer, const AdapterConfig& config, const Init& init) {
    const Index out = layer.out_features(), in = layer.in_features();
    const weight_const_view stored = layer.weight();
    const Index wr = Weights::template rows<BE>(stored), wc = Weights::template cols<BE>(stored);
    if (wr != out || wc != in)
      throw shape_error(detail::concat("layer weight is ", detail::shape_str(wr, wc), ", expected ",
                                       detail::shape_str(out, in)));
    config.validate(out, in);
    if constexpr (StoredLinearLayerWithBias<L, BE, Weights>) {
      const Index nb = numel<BE>(layer.bias());
      if (nb != 0 && nb != out)
        throw shape_error(detail::concat("layer bias has ", nb, " values for ", out, " outputs"));
    }
    // The init policies see W in the backend's scalar (a widened copy when W' is stored in bf16).
    const auto widened = Weights::template widened<BE>(stored);
    const const_view w = widened;
    detail::require_finite<BE>(w, "layer weight");
    return checked_factors(layer, config, init.template initialize<BE>(w, config));
  }
  template <StoredLinearLayer<BE, Weights> L>
  static AdapterFactors<BE> checked_factors(L& layer, const AdapterConfig& config, AdapterFactors<BE> f) {
    detail::require_shape<BE>(f.A, config.rank, layer.in_features(), "init policy's A");
    detail::require_shape<BE>(f.B, layer.out_features(), config.rank, "init policy's B");
    detail::require_finite<BE>(f.A, "init policy's A");
    detail::require_finite<BE>(f.B, "init policy's B");
    if constexpr (requires { { Init::residual } -> std::convertible_to<bool>; })
      if (f.residual != Init::residual)
        throw state_error(detail::concat("init policy '", Init::name, "' declares residual = ", Init::residual ? "true" : "false",
                                         " but its factors say ", f.residual ? "true" : "false"));
    return f;
  }

  // Everything that can throw happens here, before any member (or the layer) is touched.
  struct Prepared {
    weight_view weight;
    AdapterFactors<BE> factors;
  };
  template <StoredLinearLayer<BE, Weights> L>
  static std::optional<const_view> layer_bias(L& layer) {
    if constexpr (StoredLinearLayerWithBias<L, BE, Weights>) {
      const_view b = layer.bias();
      if (numel<BE>(b) != 0) return b;
    }
    return std::nullopt;
  }

  // What the adapter keeps of its policy: a policy that holds calibration data (CorDA, EVA: an
  // in x in matrix per layer) offers retained(), a copy without it, so the data can be freed.
  static Init retained_copy(const Init& init) {
    if constexpr (requires { { init.retained() } -> std::same_as<Init>; }) return init.retained();
    else return init;
  }

  Adapter(Prepared p, std::optional<const_view> bias, const AdapterConfig& config, const Init& init)
      : config_(config),
        init_(retained_copy(init)),
        scale_(config.scale()),
        weight_(p.weight),
        bias_(std::move(bias)),
        A_(std::move(p.factors.A)),
        B_(std::move(p.factors.B)),
        dA_(BE::zeros(config.rank, Weights::template cols<BE>(p.weight))),
        dB_(BE::zeros(Weights::template rows<BE>(p.weight), config.rank)),
        residual_(p.factors.residual),
        frozen_B_(p.factors.frozen_B) {
    // The only write to the layer: W' = W - s*B*A from the factors actually produced, so that
    // W' + s*B*A = W up to one rounding, however accurate the init policy's triplets were.
    if (p.factors.residual) Weights::template add_product<BE>(scalar(-scale_), B_, A_, weight_);
  }

  Index check_input(const_view x) const {
    if (BE::cols(x) != in_features())
      throw shape_error(detail::concat("adapter input x is ", detail::shape_str(BE::rows(x), BE::cols(x)),
                                       " but in_features = ", in_features()));
    return BE::rows(x);
  }

  Index check_backward(const_view x, const_view h, const_view dy) const {
    if (merged_) throw state_error("Adapter::backward: adapter is merged; call unmerge() to train");
    const Index t = check_input(x);
    detail::require_shape<BE>(h, t, rank(), "backward: activation h");
    detail::require_shape<BE>(dy, t, out_features(), "backward: output gradient dy");
    return t;
  }

  // dB += s dy^T h (unless B is frozen); dh = s dy B; dA += dh^T x. Returns dh for dx.
  matrix backward_params(const_view x, const_view h, const_view dy) {
    const auto s = scalar(scale_);
    if (!frozen_B_) BE::gemm(s, dy, Trans::yes, h, Trans::no, 1, dB_);
    matrix dh = BE::zeros(BE::rows(x), rank());
    BE::gemm(s, dy, Trans::no, B_, Trans::no, 0, dh);
    BE::gemm(1, dh, Trans::yes, x, Trans::no, 1, dA_);
    return dh;
  }

  AdapterConfig config_;
  Init init_;
  double scale_;
  weight_view weight_;
  std::optional<const_view> bias_;
  matrix A_, B_, dA_, dB_;
  bool residual_;
  bool frozen_B_;
  bool merged_ = false;
};

}  // namespace milora
