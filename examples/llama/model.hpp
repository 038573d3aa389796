// Llama<Backend, Weights>: the LLaMA architecture of Hugging Face's LlamaForCausalLM, with milora adapters on
// any of its linear layers, forward and hand-written backward (as llm.c does).
//
//   x = embed(tokens)
//   for each layer:                                     (pre-norm residual blocks)
//     a = rmsnorm(x) ; q, k, v = a Wq^T, a Wk^T, a Wv^T ; q, k = rope(q), rope(k)
//     x = x + attention(q, k, v) Wo^T                   (causal, grouped-query)
//     a = rmsnorm(x) ; x = x + (silu(a Wg^T) * (a Wu^T)) Wd^T
//   logits = rmsnorm(x) Wlm^T                           (Wlm = the embedding when tied)
//
// Written once against the backend policy (gemm, axpy, ...) and LlamaKernels<Backend> (kernels.hpp):
// nothing here knows whether the numbers are on the CPU or a GPU. The base weights are frozen, so the
// backward pass computes input gradients through every layer and parameter gradients only for the
// adapters: no memory is spent on weight gradients. Shapes and formulas: docs/llama.md.
//
// The init policy is an argument of add_adapters, not of the model: the adapters hold it as an
// AnyInit (milora/init/any.hpp), so one Llama<Backend> (and one Trainer of it) serves every policy
// and a program that picks the policy at run time compiles the model once per backend.
//
// Weights is the storage of the seven projections' frozen weights (milora/core/weight_storage.hpp):
// the backend's scalar (NativeWeights), or bf16 (Bf16Weights: half the memory, products of
// bf16-rounded operands accumulated in the scalar, as a bf16 model computes them). The embedding,
// the norms and the LM head, the adapters and their optimizer state stay in the scalar; the
// activations kept for the backward may be bf16 too (keep_activations_in_bf16). docs/llama.md,
// "bf16 frozen weights and saved activations".
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "config.hpp"
#include "kernels.hpp"
#include "milora/adapters.hpp"
#include "milora/calibration/input_statistics.hpp"
#include "milora/core/checks.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/host_matrix.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

namespace llama {

/// The linear layers of a LLaMA block, by the names PEFT's target_modules use.
/// A 1 x n row of ones.
template <milora::Backend BE>
milora::matrix_t<BE> ones(Index n) {
  return BE::from_host(1, n, std::vector<milora::scalar_t<BE>>(std::size_t(n), milora::scalar_t<BE>(1)));
}

namespace detail {
template <class BE, bool = milora::Bf16Backend<BE>>
struct Bf16MatrixOf {
  using type = typename BE::bf16_matrix;
};
template <class BE>
struct Bf16MatrixOf<BE, false> {
  using type = milora::matrix_t<BE>;  // never holds anything: keep_activations_in_bf16 refuses such a backend
};
}  // namespace detail

inline constexpr std::array<std::string_view, 7> kProjectionNames = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"};

template <milora::Backend BE, class Weights = milora::NativeWeights>
  requires milora::WeightStorage<Weights, BE>
class Llama {
 public:
  using backend = BE;
  using weight_storage = Weights;
  /// Whether the projections' weights are in the backend's scalar (else: full training and
  /// weight(name) by reference are not available).
  static constexpr bool kNativeWeights = std::is_same_v<Weights, milora::NativeWeights>;
  using K = LlamaKernels<BE>;
  static_assert(LlamaKernelSet<K, BE>, "LlamaKernels<Backend> must supply every kernel of kernels.hpp");
  using scalar = milora::scalar_t<BE>;
  using matrix = milora::matrix_t<BE>;
  using view = milora::view_t<BE>;
  using const_view = milora::const_view_t<BE>;
  /// The backend's bf16 matrix where it has one (for activations kept in bf16), else unused.
  using bf16_matrix = typename detail::Bf16MatrixOf<BE>::type;
  using AdapterT = milora::AnyAdapter<BE, Weights>;  // any init policy (add_adapters' argument)
  using Layer = milora::OwningLinear<BE, Weights>;    // a projection without adapter
  /// What weight(name) returns: the weight itself, or with bf16 projections a copy in the scalar.
  using WeightResult = std::conditional_t<kNativeWeights, const matrix&, matrix>;
  /// Supplies the weight called `name` (transformers' name) with the given shape.
  using WeightSource = std::function<matrix(const std::string& name, Index rows, Index cols)>;

  /// One linear layer of a block, with its adapter when it is a target.
  struct Projection {
    std::string module;  // "model.layers.0.self_attn.q_proj": the module path PEFT's keys use
    Layer linear = milora::owning_linear_from<Weights, BE>(BE::zeros(0, 0));
    std::optional<AdapterT> adapter;
    matrix h;     // x A^T of the last forward (tokens x rank), which the adapter's backward needs
    matrix grad;  // dL/dW in full training (enable_full_training) or collect_weight_gradients, else empty
    // Set only while collect_input_statistics runs: every input this layer sees is added to it.
    std::shared_ptr<milora::InputStatistics<BE>> observer;

    void forward(const_view x, view y) {
      if (observer) observer->observe(x);
      if (adapter) adapter->forward(x, y, h);
      else linear.forward(x, y);
    }
    /// dx = dy W' (+ the adapter's path); adapter gradients (or, in full training, dW += dy^T x)
    /// accumulate.
    void backward(const_view x, const_view dy, view dx) {
      if (adapter) {
        adapter->backward(x, h, dy, dx);
        return;
      }
      linear.backward_input(dy, dx);
      if (BE::rows(grad) != 0) BE::gemm(1, dy, milora::Trans::yes, x, milora::Trans::no, 1, grad);
    }
  };

  struct Block {
    matrix input_norm, post_attention_norm;  // 1 x hidden
    matrix d_input_norm, d_post_attention_norm;  // their gradients in full training
    Projection q, k, v, o, gate, up, down;
    std::array<Projection*, 7> projections() { return {&q, &k, &v, &o, &gate, &up, &down}; }
  };

  /// A model whose weights come from `source`, e.g. a Hugging Face folder (from_pretrained).
  Llama(const LlamaConfig& config, const WeightSource& source) : config_(config) {
    const auto weights = config.weights();
    for (const auto& spec : weights) weight_names_.push_back(spec.name);
    std::size_t w = 0;
    auto next = [&](const std::string& expected) {
      const auto& spec = weights.at(w++);
      if (spec.name != expected) throw milora::state_error("Llama: weight list out of order at " + spec.name);
      matrix m = source(spec.name, spec.rows, spec.cols);
      milora::detail::require_shape<BE>(m, spec.rows, spec.cols, spec.name.c_str());
      return m;
    };
    embed_ = next("model.embed_tokens.weight");
    for (Index l = 0; l < config.num_hidden_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      auto b = std::make_unique<Block>();
      auto proj = [&](Projection& pr, const std::string& module) {
        pr.module = p + module;
        pr.linear = milora::owning_linear_from<Weights, BE>(next(pr.module + ".weight"));
      };
      b->input_norm = next(p + "input_layernorm.weight");
      proj(b->q, "self_attn.q_proj");
      proj(b->k, "self_attn.k_proj");
      proj(b->v, "self_attn.v_proj");
      proj(b->o, "self_attn.o_proj");
      b->post_attention_norm = next(p + "post_attention_layernorm.weight");
      proj(b->gate, "mlp.gate_proj");
      proj(b->up, "mlp.up_proj");
      proj(b->down, "mlp.down_proj");
      blocks_.push_back(std::move(b));
    }
    final_norm_ = next("model.norm.weight");
    if (!config.tie_word_embeddings) lm_head_ = next("lm_head.weight");
  }

  Llama(const Llama&) = delete;  // adapters hold views of the weights: the model stays where it is
  Llama& operator=(const Llama&) = delete;

  /// Makes every base weight trainable (pre-training, or full fine-tuning as the reference the
  /// adapters are compared with): gradients are allocated for all of them and parameters() lists
  /// them under their transformers names. Not together with adapters.
  void enable_full_training() {
    if constexpr (!kNativeWeights)
      throw milora::state_error(milora::detail::concat("Llama::enable_full_training: the projections' weights are stored in ",
                                                       Weights::name, " (frozen); full training needs them in the backend's scalar"));
    if (num_adapters() != 0) throw milora::state_error("Llama::enable_full_training: the model has adapters");
    if (full_) return;
    auto zeros_like = [](const matrix& m) { return BE::zeros(BE::rows(m), BE::cols(m)); };
    d_embed_ = zeros_like(embed_);
    d_final_norm_ = zeros_like(final_norm_);
    if (!config_.tie_word_embeddings) d_lm_head_ = zeros_like(lm_head_);
    for (auto& b : blocks_) {
      b->d_input_norm = zeros_like(b->input_norm);
      b->d_post_attention_norm = zeros_like(b->post_attention_norm);
      for (Projection* p : b->projections()) p->grad = BE::zeros(p->linear.out_features(), p->linear.in_features());
    }
    full_ = true;
    act_ = Activations{};  // buffers sized before full training lack the gradients' (prepare)
  }
  bool full_training() const { return full_; }

  /// What an optimizer trains: every adapter's lora_A and lora_B, or in full training every weight
  /// (named as in the checkpoint, in config.weights() order).
  std::vector<milora::Parameter<BE>> parameters() {
    std::vector<milora::Parameter<BE>> out;
    if (!full_) {
      for (Projection* p : adapted())
        for (auto& param : p->adapter->parameters()) out.push_back(param);
      return out;
    }
    if constexpr (kNativeWeights) add_full_training_parameters(out);
    return out;
  }

 private:
  void add_full_training_parameters(std::vector<milora::Parameter<BE>>& out) {
    auto add = [&](matrix& w, matrix& g) { out.push_back({weight_names_[out.size()], w, g}); };
    add(embed_, d_embed_);
    for (auto& b : blocks_) {
      add(b->input_norm, b->d_input_norm);
      for (Projection* p : {&b->q, &b->k, &b->v, &b->o}) add(p->linear.weight(), p->grad);
      add(b->post_attention_norm, b->d_post_attention_norm);
      for (Projection* p : {&b->gate, &b->up, &b->down}) add(p->linear.weight(), p->grad);
    }
    add(final_norm_, d_final_norm_);
    if (!config_.tie_word_embeddings) add(lm_head_, d_lm_head_);
  }

 public:
  /// Adds an adapter started by `init` (LoRA's KaimingUniform by default; MinorSVD<> for MiLoRA,
  /// ...) to every projection named in `targets` (q_proj, ..., down_proj), each with its own seed
  /// (config.seed + its index), in the model's layer order. Throws value_error for an unknown name
  /// or when adapters were already added, and whatever the policy throws, before touching any weight.
  template <class Init = milora::KaimingUniform>
    requires milora::InitPolicy<Init, BE>
  void add_adapters(const std::vector<std::string>& targets, const milora::AdapterConfig& config, const Init& init = Init{}) {
    add_adapters_with(targets, config, [&](const std::string&) { return milora::AnyInit<BE>(init); });
  }

  /// The same with a policy per projection: init_for(module path) -> a policy (or an AnyInit), e.g.
  /// a data-driven policy holding that projection's calibration statistics (collect_input_statistics).
  template <class InitFor>
    requires std::is_constructible_v<milora::AnyInit<BE>, std::invoke_result_t<InitFor&, const std::string&>>
  void add_adapters_with(const std::vector<std::string>& targets, const milora::AdapterConfig& config, InitFor&& init_for) {
    if (num_adapters() != 0) throw milora::state_error("Llama::add_adapters: the model already has adapters");
    if (full_) throw milora::state_error("Llama::add_adapters: the model is in full training");
    check_targets(targets, "Llama::add_adapters");
    for (auto& b : blocks_) {
      for (Projection* p : b->projections()) config.validate(p->linear.out_features(), p->linear.in_features());
    }
    // Two passes: every init first (an SVD that fails, e.g. on an all-zero weight, changes no
    // weight), then the adapters, whose constructors only write W' = W - s*B*A.
    std::vector<std::pair<Projection*, milora::AdapterConfig>> chosen;
    std::vector<milora::AdapterFactors<BE>> factors;
    std::vector<milora::AnyInit<BE>> inits;
    std::uint64_t seed = config.seed;
    for (auto& b : blocks_)
      for (Projection* p : b->projections()) {
        if (!targeted(*p, targets)) continue;
        milora::AdapterConfig c = config;
        c.seed = seed++;
        try {
          inits.emplace_back(init_for(p->module));
          factors.push_back(AdapterT::initial_factors(p->linear, c, inits.back()));
        } catch (const std::exception& e) {
          rethrow_with_context(e, p->module);
        }
        chosen.emplace_back(p, c);
      }
    for (std::size_t i = 0; i < chosen.size(); ++i)
      chosen[i].first->adapter.emplace(chosen[i].first->linear, chosen[i].second, std::move(factors[i]), inits[i]);
    act_ = Activations{};  // a forward before (calibration) sized buffers for a model without adapters
    adapter_config_ = config;
    targets_ = targets;
  }

  /// dL/dW of every projection named in `targets`, accumulated over the forward_backward calls
  /// that `run` makes (each adds grad_scale * its batch's gradient; grad_scale = 1/batches gives
  /// the mean): module path -> gradient, for LoRA-GA. Only those weights get a gradient (not the
  /// embedding, norms or the head); the model is left as it was, without adapters and gradients.
  /// Call it before add_adapters.
  template <class Run>
  std::map<std::string, std::shared_ptr<const matrix>> collect_weight_gradients(const std::vector<std::string>& targets,
                                                                                Run&& run) {
    if (num_adapters() != 0) throw milora::state_error("Llama::collect_weight_gradients: the model has adapters");
    if (full_) throw milora::state_error("Llama::collect_weight_gradients: the model is in full training");
    check_targets(targets, "Llama::collect_weight_gradients");
    struct Release {  // the gradients and their buffers go, whether run returns or throws
      Llama& m;
      ~Release() {
        for (auto& b : m.blocks_)
          for (Projection* p : b->projections()) p->grad = BE::zeros(0, 0);
        m.probing_ = false;
        m.act_ = Activations{};
      }
    } release{*this};
    for (auto& b : blocks_)
      for (Projection* p : b->projections())
        if (targeted(*p, targets)) p->grad = BE::zeros(p->linear.out_features(), p->linear.in_features());
    probing_ = true;
    act_ = Activations{};  // prepare() allocates the backward's buffers while probing
    run();
    std::map<std::string, std::shared_ptr<const matrix>> out;
    for (auto& b : blocks_)
      for (Projection* p : b->projections())
        if (BE::rows(p->grad) != 0) out[p->module] = std::make_shared<const matrix>(std::move(p->grad));
    return out;
  }

  /// The inputs of every projection named in `targets`, over the forward passes that `run` makes
  /// (e.g. a few batches of the fine-tuning data through forward()): module path -> statistics,
  /// for the data-driven init policies (CorDA, EVA). Projections that read the same input (q, k
  /// and v; gate and up) share one InputStatistics, observed once per forward. Call it before
  /// add_adapters: it calibrates the model as it is.
  template <class Run>
  std::map<std::string, std::shared_ptr<milora::InputStatistics<BE>>> collect_input_statistics(
      const std::vector<std::string>& targets, Run&& run) {
    check_targets(targets, "Llama::collect_input_statistics");
    std::map<std::string, std::shared_ptr<milora::InputStatistics<BE>>> out;
    for (auto& b : blocks_)
      for (const auto& group : {std::vector<Projection*>{&b->q, &b->k, &b->v}, {&b->o}, {&b->gate, &b->up}, {&b->down}}) {
        std::shared_ptr<milora::InputStatistics<BE>> stats;
        for (Projection* p : group) {
          if (!targeted(*p, targets)) continue;
          if (!stats) {
            stats = std::make_shared<milora::InputStatistics<BE>>(p->linear.in_features());
            p->observer = stats;  // the first of the group in forward order sees the shared input
          }
          out[p->module] = stats;
        }
      }
    struct Detach {  // the observers go, whether run returns or throws
      Llama& m;
      ~Detach() {
        for (auto& b : m.blocks_)
          for (Projection* p : b->projections()) p->observer.reset();
      }
    } detach{*this};
    run();
    return out;
  }

  // ---- what the model is -----------------------------------------------------------------------
  const LlamaConfig& config() const { return config_; }
  Index num_layers() const { return Index(blocks_.size()); }
  Block& block(Index l) { return *blocks_.at(std::size_t(l)); }
  const matrix& embedding() const { return embed_; }
  const matrix& lm_head() const { return config_.tie_word_embeddings ? embed_ : lm_head_; }
  const std::vector<std::string>& targets() const { return targets_; }
  /// A base weight by its transformers name (the weight as the adapter sees it: W' for residual
  /// adapters, merged or not as the model is), in the backend's scalar: a reference, or with bf16
  /// projections a copy (a projection's weight widened, exactly). Throws for an unknown name.
  WeightResult weight(const std::string& name) {
    if (Projection* p = projection_of_weight(name)) {
      if constexpr (kNativeWeights) return p->linear.weight();
      else return BE::from_bf16(p->linear.weight());
    }
    matrix* m = nullptr;
    if (name == "model.embed_tokens.weight") m = &embed_;
    else if (name == "model.norm.weight") m = &final_norm_;
    else if (name == "lm_head.weight" && !config_.tie_word_embeddings) m = &lm_head_;
    for (auto& b : blocks_) {
      if (m != nullptr) break;
      const std::string prefix = layer_prefix(*b);
      if (name == prefix + "input_layernorm.weight") m = &b->input_norm;
      else if (name == prefix + "post_attention_layernorm.weight") m = &b->post_attention_norm;
    }
    if (m == nullptr) throw milora::value_error("Llama: no weight '" + name + "'");
    if constexpr (kNativeWeights) return *m;
    else return BE::clone(*m);
  }
  /// The projection whose weight is called `name` ("model.layers.0.self_attn.q_proj.weight"), or
  /// nullptr.
  Projection* projection_of_weight(const std::string& name) {
    for (auto& b : blocks_) {
      if (name.rfind(layer_prefix(*b), 0) != 0) continue;
      for (Projection* p : b->projections())
        if (name == p->module + ".weight") return p;
    }
    return nullptr;
  }
  const milora::AdapterConfig& adapter_config() const { return adapter_config_; }

  /// Every projection that has an adapter, in layer order (q, k, v, o, gate, up, down per layer).
  std::vector<Projection*> adapted() {
    std::vector<Projection*> out;
    for (auto& b : blocks_)
      for (Projection* p : b->projections())
        if (p->adapter) out.push_back(p);
    return out;
  }
  Index num_adapters() { return Index(adapted().size()); }
  /// Trainable parameters: r * (in + out) per adapter (r * in where B is frozen).
  Index num_trainable() {
    Index n = 0;
    for (Projection* p : adapted()) n += p->adapter->num_trainable();
    return n;
  }
  /// Frozen parameters (every base weight, counting a tied embedding once).
  Index num_frozen() const {
    Index n = 0;
    for (const auto& w : config_.weights()) n += w.rows * w.cols;
    return n;
  }
  void zero_grad() {
    for (auto& p : parameters()) BE::scale(p.grad, scalar(0));
  }

  // ---- locating NaN / Inf (called when a training step produced one) --------------------------
  /// The first NaN or Inf in what the last forward computed from: every base weight, then every
  /// adapter factor, then the activations in the order the forward made them (the embedding
  /// output, each layer's attention half and output, the final norm, the logits); as "NAME holds
  /// VALUE at (row, col)", or empty when all are finite.
  std::string find_non_finite() {
    for (const auto& spec : config_.weights())
      if (auto m = non_finite_entry(weight(spec.name), spec.name); !m.empty()) return m;
    for (Projection* p : adapted())
      for (const auto& param : p->adapter->parameters())
        if (auto m = non_finite_entry(param.value, p->module + "." + std::string(param.name)); !m.empty()) return m;
    if (act_.batch < 0) return {};
    // in forward order, so the first hit names the layer where the overflow started
    const auto layer = [](std::size_t l) { return "model.layers." + std::to_string(l); };
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      if (auto m = non_finite_entry(kept(l, &LayerActivations::x), l == 0 ? std::string("the embedding output") : "the output of " + layer(l - 1));
          !m.empty())
        return m;
      if (auto m = non_finite_entry(kept(l, &LayerActivations::x_mid), "the attention half of " + layer(l)); !m.empty()) return m;
    }
    if (auto m = non_finite_entry(act_.x_final, "the output of " + layer(blocks_.size() - 1) + " (the last layer)"); !m.empty())
      return m;
    return non_finite_entry(act_.logits, "the logits");
  }
  /// The first trainable parameter whose gradient holds NaN or Inf, as find_non_finite names it.
  std::string find_non_finite_gradient() {
    if (full_) {
      for (const auto& p : parameters())
        if (auto m = non_finite_entry(p.grad, "the gradient of " + std::string(p.name)); !m.empty()) return m;
      return {};
    }
    for (Projection* p : adapted())
      for (const auto& param : p->adapter->parameters())
        if (auto m = non_finite_entry(param.grad, "the gradient of " + p->module + "." + std::string(param.name)); !m.empty())
          return m;
    return {};
  }
  /// Folds every adapter into its weight (for generation), and back.
  void merge_adapters() {
    for (Projection* p : adapted()) p->adapter->merge();
  }
  void unmerge_adapters() {
    for (Projection* p : adapted()) p->adapter->unmerge();
  }

  // ---- the activations kept for the backward -----------------------------------------------------
  /// Keeps what the backward needs of each layer's forward in bf16 (on) or in the scalar (off, the
  /// default). The forward computes in the scalar either way (in one layer's working buffers, then
  /// rounds that layer's activations of tokens x features into its saved set), so logits and loss
  /// are the same; the backward widens them back, so gradients move at bf16 precision. Memory: the
  /// saved activations take about half (saved_activation_bytes), plus one layer's working set.
  /// value_error on a backend without bf16 storage.
  void keep_activations_in_bf16(bool on) {
    if constexpr (!milora::Bf16Backend<BE>)
      if (on) throw milora::value_error("Llama::keep_activations_in_bf16: this backend has no bf16 storage");
    if (on == bf16_activations_) return;
    bf16_activations_ = on;
    act_ = Activations{};  // the next forward allocates for the new form
  }
  bool activations_in_bf16() const { return bf16_activations_; }
  /// Bytes of the activations kept from forward to backward for every layer (for the last batch
  /// shape; 0 before a forward): what keep_activations_in_bf16 halves.
  double saved_activation_bytes() const {
    const double w = double(sizeof(scalar));
    double bytes = 0;
    for (const auto& s : act_.layers)
      for (auto m : kRounded) bytes += w * double(milora::numel<BE>(s.*m));
    for (const auto& s : act_.layers)
      for (auto m : kKept) bytes += w * double(milora::numel<BE>(s.*m));
    if constexpr (milora::Bf16Backend<BE>)
      for (const auto& d : act_.saved) {
        for (const auto& r : d.rounded) bytes += 2.0 * double(BE::bf16_rows(r)) * double(BE::bf16_cols(r));
        for (const auto& k : d.kept) bytes += w * double(milora::numel<BE>(k));
      }
    return bytes;
  }

  // ---- forward / backward ----------------------------------------------------------------------
  /// Runs the model on `batch` sequences of `seq` tokens (row-major: sequence b is
  /// tokens[b*seq, (b+1)*seq)). Afterwards logits() is (batch*seq) x vocab. Throws for a token
  /// outside the vocabulary or a sequence longer than max_position_embeddings.
  void forward(std::span<const Token> tokens, Index batch, Index seq) {
    prepare(tokens.size(), batch, seq);
    Activations& a = act_;
    if (full_) a.tokens.assign(tokens.begin(), tokens.end());  // the embedding's backward needs them
    // With activations kept in bf16, every layer computes in one set of working buffers (a.work)
    // and then rounds what its backward needs into a.saved[l].
    const bool b16 = bf16_activations_;
    K::embed(embed_, tokens, b16 ? a.work.x : a.layers[0].x);
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      Block& b = *blocks_[l];
      LayerActivations& s = b16 ? a.work : a.layers[l];
      matrix& x_out = l + 1 == blocks_.size() ? a.x_final : b16 ? a.x_next : a.layers[l + 1].x;
      // attention half: x_mid = x + attention(rope(q), rope(k), v) Wo^T
      K::rmsnorm_forward(s.x, b.input_norm, config_.rms_norm_eps, s.xn1, s.rstd1);
      b.q.forward(s.xn1, s.q);
      b.k.forward(s.xn1, s.k);
      b.v.forward(s.xn1, s.v);
      K::rope(s.q, rope_cos_, rope_sin_, seq, config_.head_dim, +1);
      K::rope(s.k, rope_cos_, rope_sin_, seq, config_.head_dim, +1);
      K::attention_forward(s.q, s.k, s.v, a.shape, s.att, s.att_saved);
      b.o.forward(s.att, s.x_mid);
      BE::axpy(1, s.x, s.x_mid);
      // MLP half: x_out = x_mid + (silu(a Wg^T) * a Wu^T) Wd^T
      K::rmsnorm_forward(s.x_mid, b.post_attention_norm, config_.rms_norm_eps, s.xn2, s.rstd2);
      b.gate.forward(s.xn2, s.gate);
      b.up.forward(s.xn2, s.up);
      K::swiglu_forward(s.gate, s.up, s.act);
      b.down.forward(s.act, x_out);
      BE::axpy(1, s.x_mid, x_out);
      if (b16) {
        stash(l);
        if (l + 1 < blocks_.size()) std::swap(a.work.x, a.x_next);  // the next layer's input
      }
    }
    K::rmsnorm_forward(a.x_final, final_norm_, config_.rms_norm_eps, a.xn_final, a.rstd_final);
    BE::gemm(1, a.xn_final, milora::Trans::no, lm_head(), milora::Trans::yes, 0, a.logits);
  }

  /// (batch*seq) x vocab logits of the last forward.
  const matrix& logits() const { return act_.logits; }

  /// Mean cross-entropy of the last forward's logits against `targets` (kIgnoreIndex skipped).
  double loss(std::span<const Token> targets) {
    matrix none = BE::zeros(0, 0);
    return K::cross_entropy(act_.logits, targets, 1.0, none);
  }

  /// forward, the loss against `targets`, and backward: adapter gradients accumulate
  /// grad_scale * d(mean loss)/d(parameter) (grad_scale = 1/accumulation steps). Returns the loss.
  double forward_backward(std::span<const Token> tokens, std::span<const Token> targets, Index batch, Index seq,
                          double grad_scale = 1.0) {
    if (num_adapters() == 0 && !full_ && !probing_)
      throw milora::state_error("Llama::forward_backward: the model has no adapters to train");
    if (targets.size() != tokens.size())
      throw milora::shape_error(milora::detail::concat("Llama::forward_backward: ", targets.size(), " targets for ",
                                                       tokens.size(), " tokens"));
    forward(tokens, batch, seq);
    Activations& a = act_;
    Gradients& g = grads_;
    const double loss = K::cross_entropy(a.logits, targets, grad_scale, g.dlogits);
    // logits = xn W^T  =>  dxn = dlogits W ; then the final norm's backward starts the residual gradient
    BE::gemm(1, g.dlogits, milora::Trans::no, lm_head(), milora::Trans::no, 0, g.dxn);
    if (full_) {  // dWlm += dlogits^T xn (into the embedding's gradient when tied)
      BE::gemm(1, g.dlogits, milora::Trans::yes, a.xn_final, milora::Trans::no, 1,
               config_.tie_word_embeddings ? d_embed_ : d_lm_head_);
      K::rmsnorm_backward_weight(g.dxn, a.x_final, a.rstd_final, d_final_norm_);
    }
    BE::scale(g.dres, 0);
    K::rmsnorm_backward(g.dxn, a.x_final, final_norm_, a.rstd_final, g.dres);
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      Block& b = *blocks_[l];
      if (bf16_activations_) unstash(l);
      LayerActivations& s = bf16_activations_ ? a.work : a.layers[l];
      // MLP half (dres is dL/dx_out; the residual passes it to x_mid unchanged)
      b.down.backward(s.act, g.dres, g.dact);
      K::swiglu_backward(g.dact, s.gate, s.up, g.dgate, g.dup);
      b.gate.backward(s.xn2, g.dgate, g.dxn);
      b.up.backward(s.xn2, g.dup, g.dtmp);
      BE::axpy(1, g.dtmp, g.dxn);
      if (full_) K::rmsnorm_backward_weight(g.dxn, s.x_mid, s.rstd2, b.d_post_attention_norm);
      K::rmsnorm_backward(g.dxn, s.x_mid, b.post_attention_norm, s.rstd2, g.dres);
      // attention half
      b.o.backward(s.att, g.dres, g.datt);
      K::attention_backward(g.datt, s.q, s.k, s.v, s.att, s.att_saved, a.shape, g.dq, g.dk, g.dv);
      K::rope(g.dq, rope_cos_, rope_sin_, seq, config_.head_dim, -1);
      K::rope(g.dk, rope_cos_, rope_sin_, seq, config_.head_dim, -1);
      b.q.backward(s.xn1, g.dq, g.dxn);
      b.k.backward(s.xn1, g.dk, g.dtmp);
      BE::axpy(1, g.dtmp, g.dxn);
      b.v.backward(s.xn1, g.dv, g.dtmp);
      BE::axpy(1, g.dtmp, g.dxn);
      if (full_) K::rmsnorm_backward_weight(g.dxn, s.x, s.rstd1, b.d_input_norm);
      if (l > 0 || full_) K::rmsnorm_backward(g.dxn, s.x, b.input_norm, s.rstd1, g.dres);  // (a frozen embedding needs no dx)
    }
    if (full_) K::embed_backward(g.dres, a.tokens, d_embed_);
    return loss;
  }

 private:
  static std::string layer_prefix(const Block& b) { return b.q.module.substr(0, b.q.module.rfind("self_attn")); }

  static void check_targets(const std::vector<std::string>& targets, const char* who) {
    if (targets.empty()) throw milora::value_error(std::string(who) + ": no target modules");
    for (const auto& t : targets)
      if (std::find(kProjectionNames.begin(), kProjectionNames.end(), t) == kProjectionNames.end())
        throw milora::value_error(std::string(who) + ": '" + t +
                                  "' is not a LLaMA projection (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)");
  }
  // Whether the projection's name (q_proj, ...) is one of `targets`.
  static bool targeted(const Projection& p, const std::vector<std::string>& targets) {
    const std::string_view name = std::string_view(p.module).substr(p.module.rfind('.') + 1);
    return std::find(targets.begin(), targets.end(), name) != targets.end();
  }

  // The same exception type, its message prefixed with the module it came from.
  [[noreturn]] static void rethrow_with_context(const std::exception& e, const std::string& module) {
    const std::string what = module + ": " + e.what();
    if (dynamic_cast<const milora::shape_error*>(&e)) throw milora::shape_error(what);
    if (dynamic_cast<const milora::value_error*>(&e)) throw milora::value_error(what);
    if (dynamic_cast<const milora::numerical_error*>(&e)) throw milora::numerical_error(what);
    throw;
  }

  static std::string non_finite_entry(const_view m, const std::string& name) {
    const auto host = milora::io::to_host_matrix<BE>(m);
    for (Index i = 0; i < host.rows; ++i)
      for (Index j = 0; j < host.cols; ++j)
        if (const auto x = host(i, j); !std::isfinite(x)) return milora::detail::concat(name, " holds ", x, " at (", i, ", ", j, ")");
    return {};
  }

  struct LayerActivations {
    matrix x, xn1, rstd1, q, k, v, att_saved, att, x_mid, xn2, rstd2, gate, up, act;
  };
  // What keep_activations_in_bf16 rounds: the layer's activations of tokens x features; the
  // others (rstd1, rstd2: one number per token; att_saved: the attention's own) stay in the scalar.
  static constexpr std::array<matrix LayerActivations::*, 11> kRounded = {
      &LayerActivations::x,     &LayerActivations::xn1, &LayerActivations::q,    &LayerActivations::k,
      &LayerActivations::v,     &LayerActivations::att, &LayerActivations::x_mid, &LayerActivations::xn2,
      &LayerActivations::gate, &LayerActivations::up,  &LayerActivations::act};
  static constexpr std::array<matrix LayerActivations::*, 3> kKept = {&LayerActivations::rstd1, &LayerActivations::rstd2,
                                                                     &LayerActivations::att_saved};
  struct SavedLayer {  // one layer's activations between forward and backward, with keep_activations_in_bf16
    std::vector<bf16_matrix> rounded;  // kRounded's, in bf16
    std::vector<matrix> kept;          // kKept's, in the scalar
  };
  struct Activations {
    Index batch = -1, seq = -1;
    AttentionShape shape{};
    std::vector<LayerActivations> layers;  // every layer's, in the scalar (empty with bf16 activations)
    LayerActivations work;                 // with bf16 activations: the one layer computing now
    matrix x_next;                         // with bf16 activations: the output of the layer computing now
    std::vector<SavedLayer> saved;         // with bf16 activations: every layer's
    matrix x_final, xn_final, rstd_final, logits;
    std::vector<Token> tokens;  // full training only
  };

  // The working buffers of layer l's forward, rounded into (stash) and widened back from (unstash)
  // its saved activations. kKept's are swapped, not copied (every layer's have one shape): the
  // attention's probabilities on the CPU are as large as the rest together.
  void stash(std::size_t l) {
    if constexpr (milora::Bf16Backend<BE>) {
      SavedLayer& d = act_.saved[l];
      for (std::size_t i = 0; i < kRounded.size(); ++i) BE::round_into_bf16(act_.work.*kRounded[i], d.rounded[i]);
      for (std::size_t i = 0; i < kKept.size(); ++i) std::swap(act_.work.*kKept[i], d.kept[i]);
    }
  }
  void unstash(std::size_t l) {
    if constexpr (milora::Bf16Backend<BE>) {
      SavedLayer& d = act_.saved[l];
      for (std::size_t i = 0; i < kRounded.size(); ++i) BE::from_bf16_into(d.rounded[i], act_.work.*kRounded[i]);
      for (std::size_t i = 0; i < kKept.size(); ++i) std::swap(d.kept[i], act_.work.*kKept[i]);
    }
  }
  // Layer l's activation `member` as the last forward left it (widened from bf16 if kept so).
  matrix kept(std::size_t l, matrix LayerActivations::*member) const {
    if (!bf16_activations_) return BE::clone(act_.layers[l].*member);
    if constexpr (milora::Bf16Backend<BE>) {
      for (std::size_t i = 0; i < kRounded.size(); ++i)
        if (kRounded[i] == member) return BE::from_bf16(act_.saved[l].rounded[i]);
    }
    throw milora::state_error("Llama: that activation is not kept");
  }
  struct Gradients {
    matrix dlogits, dxn, dres, dtmp, datt, dq, dk, dv, dact, dgate, dup;
  };

  // Checks the call and (re)allocates activations when the batch shape changes.
  void prepare(std::size_t num_tokens, Index batch, Index seq) {
    using milora::detail::concat;
    if (batch <= 0 || seq <= 0) throw milora::value_error(concat("Llama: batch ", batch, " and seq ", seq, " must be positive"));
    if (Index(num_tokens) != batch * seq)
      throw milora::shape_error(concat("Llama: ", num_tokens, " tokens for batch ", batch, " x seq ", seq));
    if (seq > config_.max_position_embeddings)
      throw milora::value_error(concat("Llama: sequence length ", seq, " exceeds max_position_embeddings ",
                                       config_.max_position_embeddings));
    if (act_.batch == batch && act_.seq == seq) return;
    const Index n = batch * seq, c = config_.hidden_size, hd = config_.head_dim;
    const Index cq = config_.num_attention_heads * hd, ckv = config_.num_key_value_heads * hd;
    const Index inter = config_.intermediate_size, vocab = config_.vocab_size;
    auto z = [](Index r, Index cc) { return BE::zeros(r, cc); };
    Activations a;
    a.batch = batch;
    a.seq = seq;
    a.shape = {batch, seq, config_.num_attention_heads, config_.num_key_value_heads, hd};
    const MatrixShape saved = K::attention_saved_shape(a.shape);
    auto layer_buffers = [&] {
      return LayerActivations{z(n, c), z(n, c), z(1, n), z(n, cq), z(n, ckv), z(n, ckv), z(saved.rows, saved.cols),
                              z(n, cq), z(n, c), z(n, c), z(1, n), z(n, inter), z(n, inter), z(n, inter)};
    };
    if (!bf16_activations_) {
      a.layers.resize(blocks_.size());
      for (auto& s : a.layers) s = layer_buffers();
    } else if constexpr (milora::Bf16Backend<BE>) {
      a.work = layer_buffers();
      a.x_next = z(n, c);
      a.saved.resize(blocks_.size());
      for (auto& d : a.saved) {
        for (auto m : kRounded) d.rounded.push_back(BE::to_bf16(a.work.*m));
        for (auto m : kKept) d.kept.push_back(BE::clone(a.work.*m));
      }
    }
    a.x_final = z(n, c);
    a.xn_final = z(n, c);
    a.rstd_final = z(1, n);
    a.logits = z(n, vocab);
    if (num_adapters() != 0 || full_ || probing_)
      grads_ = {z(n, vocab), z(n, c), z(n, c), z(n, c), z(n, cq), z(n, cq), z(n, ckv), z(n, ckv), z(n, inter), z(n, inter),
                z(n, inter)};
    for (Projection* p : adapted()) p->h = z(n, p->adapter->rank());
    act_ = std::move(a);
    build_rope_tables(seq);
  }

  // cos / sin of t * theta^(-2i/d), t < seq, i < d/2: transformers' LlamaRotaryEmbedding (computed
  // in double here and rounded once; transformers computes the angle in float32).
  void build_rope_tables(Index seq) {
    if (BE::rows(rope_cos_) >= seq) return;
    const Index half = config_.head_dim / 2;
    std::vector<scalar> c(std::size_t(seq * half)), s(c.size());
    for (Index t = 0; t < seq; ++t)
      for (Index i = 0; i < half; ++i) {
        const double inv_freq = 1.0 / std::pow(config_.rope_theta, double(2 * i) / double(config_.head_dim));
        c[std::size_t(t * half + i)] = scalar(std::cos(double(t) * inv_freq));
        s[std::size_t(t * half + i)] = scalar(std::sin(double(t) * inv_freq));
      }
    rope_cos_ = BE::from_host(seq, half, c);
    rope_sin_ = BE::from_host(seq, half, s);
  }

  LlamaConfig config_;
  matrix embed_, final_norm_, lm_head_;
  std::vector<std::unique_ptr<Block>> blocks_;
  matrix d_embed_, d_final_norm_, d_lm_head_;  // full training only
  bool full_ = false;
  bool probing_ = false;  // collect_weight_gradients is running: targeted weights get dL/dW
  bool bf16_activations_ = false;  // keep_activations_in_bf16
  std::vector<std::string> weight_names_;     // config.weights() order: the names parameters() uses
  milora::AdapterConfig adapter_config_{};
  std::vector<std::string> targets_;
  matrix rope_cos_ = BE::zeros(0, 0), rope_sin_ = BE::zeros(0, 0);
  Activations act_;
  Gradients grads_;
};

/// A model with the weights of a Hugging Face folder (config.json + safetensors), checked against
/// the config before anything is loaded; weights are converted to the backend's scalar.
template <class Model>
std::unique_ptr<Model> from_pretrained(const milora::io::HFModel& hf) {
  using BE = typename Model::backend;
  const LlamaConfig config = LlamaConfig::from_model(hf);
  config.check(hf);
  return std::make_unique<Model>(config, [&](const std::string& name, Index, Index) {
    return milora::io::to_backend<BE>(hf.load<typename Model::scalar>(name));
  });
}

/// Writes `model`'s base weights (adapters merged or not, as they are) as a Hugging Face folder:
/// config.json and model.safetensors (F32), which from_pretrained and transformers read.
template <class Model>
void save_pretrained(Model& model, const std::filesystem::path& dir) {
  using BE = typename Model::backend;
  std::filesystem::create_directories(dir);
  milora::io::SafetensorsWriter w;
  w.set_metadata({{"format", "pt"}});
  const auto specs = model.config().weights();
  for (const auto& spec : specs) {
    const auto& m = model.weight(spec.name);
    if (spec.rows == 1) w.add(spec.name, milora::io::to_host_matrix<BE>(m), milora::io::DType::F32, std::vector<std::int64_t>{spec.cols});
    else w.add(spec.name, milora::io::to_host_matrix<BE>(m), milora::io::DType::F32);
  }
  w.write(dir / milora::io::kModelFile);
  milora::io::write_json_file(dir / "config.json", config_json(model.config()));
}

/// A model with transformers' initialisation (normal(0, initializer_range) weights, unit norms),
/// each weight drawn from its own stream of `seed`: for tests, benchmarks and pre-training.
template <class Model>
std::unique_ptr<Model> random_model(const LlamaConfig& config, std::uint64_t seed, double initializer_range = 0.02) {
  using BE = typename Model::backend;
  std::uint64_t stream = seed;
  return std::make_unique<Model>(config, [&](const std::string& name, Index rows, Index cols) {
    auto m = BE::zeros(rows, cols);
    if (name.find("norm") != std::string::npos) BE::add_row_broadcast(m, ones<BE>(cols));
    else BE::fill_normal(m, 0.0, initializer_range, stream);
    ++stream;
    return m;
  });
}

}  // namespace llama
