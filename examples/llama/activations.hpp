// The activations a Llama keeps from forward to backward, and where they live.
//
// Per layer (LayerActivations): the input x, the normed inputs xn1 / xn2 with their 1/rms, q, k, v,
// the attention's output and what it saved (the CPU's probabilities, CUDA's logsumexp), x_mid
// after the attention half, and the MLP's gate, up and act. Two ways to keep them:
//   - in the scalar (the default): every layer's set, computed in place by the forward;
//   - in bf16 (keep_in_bf16): the forward computes each layer in one working set in the scalar,
//     then rounds what is tokens x features into that layer's saved set (stash); the backward
//     widens it back into the working set (unstash). The saved activations take about half the
//     memory; gradients then move at bf16 precision (docs/llama.md, "bf16 frozen weights and
//     saved activations"). What is one number per token (rstd1, rstd2) or the attention's own
//     saved state stays in the scalar and is swapped, not copied: on the CPU the probabilities are
//     as large as the rest of a layer's activations together.
#pragma once

#include <array>
#include <utility>
#include <vector>

#include "kernels.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/weight_storage.hpp"

namespace llama {

namespace detail {
template <class BE, bool = milora::Bf16Backend<BE>>
struct Bf16MatrixOf {
  using type = typename BE::bf16_matrix;
};
template <class BE>
struct Bf16MatrixOf<BE, false> {
  using type = milora::matrix_t<BE>;  // never holds anything: keep_in_bf16 refuses such a backend
};
}  // namespace detail

/// One layer's activations: what its backward reads.
template <milora::Backend BE>
struct LayerActivations {
  milora::matrix_t<BE> x, xn1, rstd1, q, k, v, att_saved, att, x_mid, xn2, rstd2, gate, up, act;
};

/// The sizes of a forward's activations.
struct ActivationShape {
  Index batch, seq, hidden, q_width, kv_width, intermediate, vocab, layers;
  MatrixShape attention_saved;
};

/// Every activation of the last forward that the backward reads: each layer's (in the scalar, or
/// in bf16 with one working set) and the final norm's and the head's.
template <milora::Backend BE>
class ActivationStore {
 public:
  using matrix = milora::matrix_t<BE>;
  using Layer = LayerActivations<BE>;
  using bf16_matrix = typename detail::Bf16MatrixOf<BE>::type;

  // What keep_in_bf16 rounds: the layer's activations of tokens x features; the others stay in
  // the scalar.
  static constexpr std::array<matrix Layer::*, 11> kRounded = {&Layer::x,     &Layer::xn1, &Layer::q,     &Layer::k,
                                                               &Layer::v,     &Layer::att, &Layer::x_mid, &Layer::xn2,
                                                               &Layer::gate, &Layer::up,  &Layer::act};
  static constexpr std::array<matrix Layer::*, 3> kKept = {&Layer::rstd1, &Layer::rstd2, &Layer::att_saved};

  ActivationStore() = default;

  // The activations after the last layer: the final norm's input, output and 1/rms, the logits.
  matrix x_final, xn_final, rstd_final, logits;
  std::vector<Token> tokens;  // the forward's tokens, for the embedding's backward (full training only)

  /// Keeps the saved activations in bf16 (on) or in the scalar (off). value_error on a backend
  /// without bf16 storage. Frees the buffers: the next forward allocates for the new form.
  void keep_in_bf16(bool on) {
    if constexpr (!milora::Bf16Backend<BE>)
      if (on) throw milora::value_error("Llama::keep_activations_in_bf16: this backend has no bf16 storage");
    if (on == bf16_) return;
    bf16_ = on;
    reset();
  }
  bool in_bf16() const { return bf16_; }

  /// Whether the buffers are sized for `batch` x `seq` (else allocate() must run before a forward).
  bool sized_for(Index batch, Index seq) const { return batch_ == batch && seq_ == seq; }
  /// Frees every buffer (a model that gained adapters or gradients sizes them anew).
  void reset() { *this = ActivationStore(bf16_); }

  /// Buffers for a forward of shape s.
  void allocate(const ActivationShape& s) {
    ActivationStore a(bf16_);
    a.batch_ = s.batch;
    a.seq_ = s.seq;
    const Index n = s.batch * s.seq;
    auto z = [](Index r, Index c) { return BE::zeros(r, c); };
    auto layer_buffers = [&] {
      return Layer{z(n, s.hidden), z(n, s.hidden), z(1, n), z(n, s.q_width), z(n, s.kv_width), z(n, s.kv_width),
                   z(s.attention_saved.rows, s.attention_saved.cols), z(n, s.q_width), z(n, s.hidden), z(n, s.hidden),
                   z(1, n), z(n, s.intermediate), z(n, s.intermediate), z(n, s.intermediate)};
    };
    if (!bf16_) {
      a.layers_.resize(std::size_t(s.layers));
      for (auto& l : a.layers_) l = layer_buffers();
    } else if constexpr (milora::Bf16Backend<BE>) {
      a.work_ = layer_buffers();
      a.x_next_ = z(n, s.hidden);
      a.saved_.resize(std::size_t(s.layers));
      for (auto& d : a.saved_) {
        for (auto m : kRounded) d.rounded.push_back(BE::to_bf16(a.work_.*m));
        for (auto m : kKept) d.kept.push_back(BE::clone(a.work_.*m));
      }
    }
    a.x_final = z(n, s.hidden);
    a.xn_final = z(n, s.hidden);
    a.rstd_final = z(1, n);
    a.logits = z(n, s.vocab);
    *this = std::move(a);
  }
  Index batch() const { return batch_; }

  // ---- the forward: layer l computes into layer(l) and writes its output into output(l) -----------
  Layer& layer(std::size_t l) { return bf16_ ? work_ : layers_[l]; }
  /// Where layer l's output goes: the next layer's input, x_final after the last layer.
  matrix& output(std::size_t l) {
    const bool last = l + 1 == layers();
    return last ? x_final : bf16_ ? x_next_ : layers_[l + 1].x;
  }
  /// Layer l's forward is done: with bf16, its activations are rounded into its saved set and its
  /// output becomes the working set's input.
  void after_forward(std::size_t l) {
    if (!bf16_) return;
    stash(l);
    if (l + 1 < layers()) std::swap(work_.x, x_next_);
  }

  // ---- the backward: layer l's activations as the forward left them ----------------------------
  Layer& for_backward(std::size_t l) {
    if (bf16_) unstash(l);
    return layer(l);
  }

  /// Layer l's activation `member` as the last forward left it (widened from bf16 if kept so).
  matrix kept(std::size_t l, matrix Layer::*member) const {
    if (!bf16_) return BE::clone(layers_[l].*member);
    if constexpr (milora::Bf16Backend<BE>) {
      for (std::size_t i = 0; i < kRounded.size(); ++i)
        if (kRounded[i] == member) return BE::from_bf16(saved_[l].rounded[i]);
    }
    throw milora::state_error("Llama: that activation is not kept");
  }

  /// Bytes of the activations kept from forward to backward for every layer (0 before a forward):
  /// what keep_in_bf16 halves.
  double saved_bytes() const {
    const double w = double(sizeof(milora::scalar_t<BE>));
    double bytes = 0;
    for (const auto& s : layers_)
      for (auto m : kRounded) bytes += w * double(milora::numel<BE>(s.*m));
    for (const auto& s : layers_)
      for (auto m : kKept) bytes += w * double(milora::numel<BE>(s.*m));
    if constexpr (milora::Bf16Backend<BE>)
      for (const auto& d : saved_) {
        for (const auto& r : d.rounded) bytes += 2.0 * double(BE::bf16_rows(r)) * double(BE::bf16_cols(r));
        for (const auto& k : d.kept) bytes += w * double(milora::numel<BE>(k));
      }
    return bytes;
  }

 private:
  struct SavedLayer {  // one layer's activations between forward and backward, in bf16
    std::vector<bf16_matrix> rounded;  // kRounded's, in bf16
    std::vector<matrix> kept;          // kKept's, in the scalar
  };

  explicit ActivationStore(bool bf16) : bf16_(bf16) {}
  std::size_t layers() const { return bf16_ ? saved_.size() : layers_.size(); }

  // The working buffers rounded into (stash) and widened back from (unstash) layer l's saved set.
  void stash(std::size_t l) {
    if constexpr (milora::Bf16Backend<BE>) {
      SavedLayer& d = saved_[l];
      for (std::size_t i = 0; i < kRounded.size(); ++i) BE::round_into_bf16(work_.*kRounded[i], d.rounded[i]);
      for (std::size_t i = 0; i < kKept.size(); ++i) std::swap(work_.*kKept[i], d.kept[i]);
    }
  }
  void unstash(std::size_t l) {
    if constexpr (milora::Bf16Backend<BE>) {
      SavedLayer& d = saved_[l];
      for (std::size_t i = 0; i < kRounded.size(); ++i) BE::from_bf16_into(d.rounded[i], work_.*kRounded[i]);
      for (std::size_t i = 0; i < kKept.size(); ++i) std::swap(d.kept[i], work_.*kKept[i]);
    }
  }

  bool bf16_ = false;
  Index batch_ = -1, seq_ = -1;
  std::vector<Layer> layers_;     // every layer's, in the scalar (empty with bf16)
  Layer work_;                    // with bf16: the one layer computing now
  matrix x_next_;                 // with bf16: the output of the layer computing now
  std::vector<SavedLayer> saved_;  // with bf16: every layer's
};

}  // namespace llama
