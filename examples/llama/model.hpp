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
// This file reads top to bottom: the weights, the forward, the backward. Written once against the
// backend policy (gemm, axpy, ...) and LlamaKernels<Backend> (kernels.hpp): nothing here knows
// whether the numbers are on the CPU or a GPU. The base weights are frozen, so the backward
// computes input gradients through every layer and parameter gradients only for the adapters (or,
// in full training, for every weight). Shapes and formulas: docs/llama.md. The rest of the model
// has a header each:
//   projection.hpp       a block's weights: the seven projections, each with its optional adapter
//   model_adapters.hpp   adding adapters, and what the data-driven inits collect before them
//   activations.hpp      what the forward keeps for the backward, in the scalar or in bf16
//   pretrained.hpp       from_pretrained / save_pretrained (Hugging Face folders), random_model
//   non_finite.hpp       locating a NaN / Inf after a training step produced one
//   kv_cache.hpp         the key/value cache that forward_cached (generation) reads and extends
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

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "activations.hpp"
#include "config.hpp"
#include "kernels.hpp"
#include "kv_cache.hpp"
#include "milora/adapters.hpp"
#include "milora/core/checks.hpp"
#include "model_adapters.hpp"
#include "projection.hpp"

namespace llama {

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
  using Projection = llama::Projection<BE, Weights>;
  using Block = llama::Block<BE, Weights>;
  using AdapterT = typename Projection::AdapterT;
  /// What weight(name) returns: the weight itself, or with bf16 projections a copy in the scalar.
  using WeightResult = std::conditional_t<kNativeWeights, const matrix&, matrix>;
  /// Supplies the weight called `name` (transformers' name) with the given shape.
  using WeightSource = std::function<matrix(const std::string& name, Index rows, Index cols)>;

  // ---- the weights ------------------------------------------------------------------------------
  /// A model whose weights come from `source`, in config.weights() order (from_pretrained: a
  /// Hugging Face folder).
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
      std::size_t k = 0;  // the projection's index in LlamaConfig::kProjections
      auto proj = [&](Projection& pr, const std::string& module) {
        pr.module = p + module;
        pr.linear = milora::owning_linear_from<Weights, BE>(next(pr.module + ".weight"));
        if (config.bias[k++]) pr.bias = next(pr.module + ".bias");
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

  const LlamaConfig& config() const { return config_; }
  Index num_layers() const { return Index(blocks_.size()); }
  Block& block(Index l) { return *blocks_.at(std::size_t(l)); }
  const matrix& embedding() const { return embed_; }
  const matrix& lm_head() const { return config_.tie_word_embeddings ? embed_ : lm_head_; }
  /// A base weight by its transformers name (the weight as the adapter sees it: W' for residual
  /// adapters, merged or not as the model is), in the backend's scalar: a reference, or with bf16
  /// projections a copy (a projection's weight widened, exactly). Throws for an unknown name.
  WeightResult weight(const std::string& name) {
    if (Projection* p = projection_of_weight(name)) {
      if constexpr (kNativeWeights) return p->linear.weight();
      else return BE::from_bf16(p->linear.weight());
    }
    matrix* m = bias_named(name);
    if (name == "model.embed_tokens.weight") m = &embed_;
    else if (name == "model.norm.weight") m = &final_norm_;
    else if (name == "lm_head.weight" && !config_.tie_word_embeddings) m = &lm_head_;
    for (auto& b : blocks_) {
      if (m != nullptr) break;
      if (name == b->prefix() + "input_layernorm.weight") m = &b->input_norm;
      else if (name == b->prefix() + "post_attention_layernorm.weight") m = &b->post_attention_norm;
    }
    if (m == nullptr) throw milora::value_error("Llama: no weight '" + name + "'");
    if constexpr (kNativeWeights) return *m;
    else return BE::clone(*m);
  }
  /// The projection whose weight is called `name` ("model.layers.0.self_attn.q_proj.weight"), or
  /// nullptr.
  Projection* projection_of_weight(const std::string& name) {
    for (auto& b : blocks_) {
      if (name.rfind(b->prefix(), 0) != 0) continue;
      for (Projection* p : b->projections())
        if (name == p->module + ".weight") return p;
    }
    return nullptr;
  }
  /// The bias called `name` ("model.layers.0.self_attn.q_proj.bias"), or nullptr.
  matrix* bias_named(const std::string& name) {
    constexpr std::string_view suffix = ".bias";
    if (name.size() <= suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return nullptr;
    for (auto& b : blocks_)
      if (name.rfind(b->prefix(), 0) == 0)
        for (Projection* p : b->projections())
          if (p->has_bias() && name == p->module + ".bias") return &p->bias;
    return nullptr;
  }
  /// Frozen parameters (every base weight, counting a tied embedding once).
  Index num_frozen() const {
    Index n = 0;
    for (const auto& w : config_.weights()) n += w.rows * w.cols;
    return n;
  }

  // ---- what trains: adapters (model_adapters.hpp), or every weight ------------------------------
  /// Adds an adapter started by `init` (LoRA's KaimingUniform by default; MinorSVD<> for MiLoRA,
  /// ...) to every projection named in `targets` (q_proj, ..., down_proj), each with its own seed
  /// (config.seed + its index), in the model's layer order. Throws value_error for an unknown name
  /// or state_error when adapters were already added, and whatever the policy throws, before
  /// touching any weight.
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
    if (full_) throw milora::state_error("Llama::add_adapters: the model is in full training");
    adapters_.add(targets, config, init_for);
    act_.reset();  // buffers sized before (a calibration forward) lack the adapters' activations
  }
  /// The inputs of every projection named in `targets` over the forward passes that `run` makes
  /// (e.g. a few batches of the fine-tuning data through forward()): module path -> statistics,
  /// for the data-driven init policies (CorDA, EVA). Call it before add_adapters.
  template <class Run>
  auto collect_input_statistics(const std::vector<std::string>& targets, Run&& run) {
    return adapters_.collect_input_statistics(targets, run);
  }
  /// dL/dW of every projection named in `targets`, accumulated over the forward_backward calls
  /// that `run` makes (each adds grad_scale * its batch's gradient; grad_scale = 1/batches gives
  /// the mean): module path -> gradient, for LoRA-GA. Call it before add_adapters; the model is
  /// left as it was, without adapters and gradients.
  template <class Run>
  auto collect_weight_gradients(const std::vector<std::string>& targets, Run&& run) {
    if (full_) throw milora::state_error("Llama::collect_weight_gradients: the model is in full training");
    act_.reset();  // prepare() allocates the backward's buffers while probing
    struct Reset {
      ActivationStore<BE>& act;
      ~Reset() { act.reset(); }
    } reset{act_};
    return adapters_.collect_weight_gradients(targets, run);
  }
  /// Every projection that has an adapter, in layer order (q, k, v, o, gate, up, down per layer).
  std::vector<Projection*> adapted() { return adapters_.adapted(); }
  Index num_adapters() const { return adapters_.count(); }
  Index num_trainable() const { return adapters_.num_trainable(); }
  const std::vector<std::string>& targets() const { return adapters_.targets(); }
  const milora::AdapterConfig& adapter_config() const { return adapters_.config(); }
  /// Folds every adapter into its weight (for generation), and back.
  void merge_adapters() { adapters_.merge(); }
  void unmerge_adapters() { adapters_.unmerge(); }

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
      for (Projection* p : b->projections()) {
        p->grad = BE::zeros(p->linear.out_features(), p->linear.in_features());
        if (p->has_bias()) p->bias_grad = BE::zeros(1, p->linear.out_features());
      }
    }
    full_ = true;
    act_.reset();  // buffers sized before full training lack the gradients' (prepare)
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
    if constexpr (kNativeWeights) {
      auto add = [&](matrix& w, matrix& g) { out.push_back({weight_names_[out.size()], w, g}); };
      auto add_projection = [&](Projection* p) {
        add(p->linear.weight(), p->grad);
        if (p->has_bias()) add(p->bias, p->bias_grad);
      };
      add(embed_, d_embed_);
      for (auto& b : blocks_) {
        add(b->input_norm, b->d_input_norm);
        for (Projection* p : {&b->q, &b->k, &b->v, &b->o}) add_projection(p);
        add(b->post_attention_norm, b->d_post_attention_norm);
        for (Projection* p : {&b->gate, &b->up, &b->down}) add_projection(p);
      }
      add(final_norm_, d_final_norm_);
      if (!config_.tie_word_embeddings) add(lm_head_, d_lm_head_);
    }
    return out;
  }
  void zero_grad() {
    for (auto& p : parameters()) BE::scale(p.grad, scalar(0));
  }

  // ---- the activations kept for the backward (activations.hpp) ----------------------------------
  /// Keeps what the backward needs of each layer's forward in bf16 (on) or in the scalar (off, the
  /// default). The forward computes in the scalar either way, so logits and loss are the same; the
  /// backward widens them back, so gradients move at bf16 precision. Memory: the saved activations
  /// take about half (saved_activation_bytes), plus one layer's working set. value_error on a
  /// backend without bf16 storage.
  void keep_activations_in_bf16(bool on) { act_.keep_in_bf16(on); }
  bool activations_in_bf16() const { return act_.in_bf16(); }
  /// Bytes of the activations kept from forward to backward (for the last batch shape; 0 before a
  /// forward): what keep_activations_in_bf16 halves.
  double saved_activation_bytes() const { return act_.saved_bytes(); }
  /// What the last forward kept (non_finite.hpp reads it to say where a NaN started).
  const ActivationStore<BE>& activations() const { return act_; }

  // ---- forward ----------------------------------------------------------------------------------
  /// Runs the model on `batch` sequences of `seq` tokens (row-major: sequence b is
  /// tokens[b*seq, (b+1)*seq)). Afterwards logits() is (batch*seq) x vocab. Throws for a token
  /// outside the vocabulary or a sequence longer than max_position_embeddings.
  /// `segment_start` (optional, one per token) packs several examples into a row: see
  /// AttentionShape::segment_start and set_segments.
  void forward(std::span<const Token> tokens, Index batch, Index seq, std::span<const std::int32_t> segment_start = {}) {
    prepare(tokens.size(), batch, seq);
    set_segments(segment_start, seq);
    ActivationStore<BE>& a = act_;
    if (full_) a.tokens.assign(tokens.begin(), tokens.end());  // the embedding's backward needs them
    K::embed(embed_, tokens, a.layer(0).x);
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      Block& b = *blocks_[l];
      LayerActivations<BE>& s = a.layer(l);
      matrix& x_out = a.output(l);
      // attention half: x_mid = x + attention(rope(q), rope(k), v) Wo^T
      K::rmsnorm_forward(s.x, b.input_norm, config_.rms_norm_eps, s.xn1, s.rstd1);
      b.q.forward(s.xn1, s.q);
      b.k.forward(s.xn1, s.k);
      b.v.forward(s.xn1, s.v);
      rope(s.q, seq, +1);
      rope(s.k, seq, +1);
      K::attention_forward(s.q, s.k, s.v, attention_, s.att, s.att_saved);
      b.o.forward(s.att, s.x_mid);
      BE::axpy(1, s.x, s.x_mid);
      // MLP half: x_out = x_mid + (silu(a Wg^T) * a Wu^T) Wd^T
      K::rmsnorm_forward(s.x_mid, b.post_attention_norm, config_.rms_norm_eps, s.xn2, s.rstd2);
      b.gate.forward(s.xn2, s.gate);
      b.up.forward(s.xn2, s.up);
      K::swiglu_forward(s.gate, s.up, s.act);
      b.down.forward(s.act, x_out);
      BE::axpy(1, s.x_mid, x_out);
      a.after_forward(l);  // with bf16 activations: rounded into layer l's saved set
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

  // ---- generation: forward over a key/value cache (kv_cache.hpp) ------------------------------------
  /// A cache for `batch` sequences of up to `capacity` tokens. value_error beyond
  /// max_position_embeddings or the sliding window.
  KvCache<BE> make_cache(Index batch, Index capacity) const {
    using milora::detail::concat;
    if (capacity > context_limit())
      throw milora::value_error(concat("Llama::make_cache: ", capacity, " slots exceed the model's context of ", context_limit(),
                                       " tokens (max_position_embeddings", config_.sliding_window ? " or sliding_window)" : ")"));
    return KvCache<BE>(num_layers(), batch, capacity, config_.num_key_value_heads * config_.head_dim);
  }
  /// The longest sequence forward and forward_cached take: max_position_embeddings, or the sliding
  /// window when shorter (full causal attention is the windowed one up to the window).
  Index context_limit() const {
    return config_.sliding_window ? std::min(config_.max_position_embeddings, *config_.sliding_window)
                                  : config_.max_position_embeddings;
  }

  /// Runs the model on the next n = tokens.size() / cache.batch() tokens of every sequence of
  /// `cache` (sequence b's are tokens[b*n, (b+1)*n)), their keys and values appended to the cache
  /// and their queries attending to everything cached before them; returns the logits of each
  /// sequence's last new token (batch x vocab, valid until the cache's next step). The same
  /// numbers as forward() on the whole sequence, without its cost: prefill with the prompt, then
  /// one token at a time. Adapters are applied merged or not; nothing the backward reads is
  /// touched. Throws (cache unchanged) for a token outside the vocabulary, a count that is not a
  /// multiple of the batch, or more tokens than the cache has slots left.
  const matrix& forward_cached(std::span<const Token> tokens, KvCache<BE>& cache) {
    using milora::detail::concat;
    const Index batch = cache.batch(), past = cache.length();
    const Index n = tokens.empty() ? 0 : Index(tokens.size()) / batch;
    if (n == 0 || n * batch != Index(tokens.size()))
      throw milora::shape_error(concat("Llama::forward_cached: ", tokens.size(), " tokens for a batch of ", batch, " sequences"));
    if (past + n > cache.capacity())
      throw milora::value_error(concat("Llama::forward_cached: ", past, " cached + ", n, " new tokens per sequence exceed the cache's ",
                                       cache.capacity(), " slots"));
    if (cache.capacity() > context_limit() || cache.layers() != num_layers() ||
        BE::cols(cache.keys(0)) != config_.num_key_value_heads * config_.head_dim)
      throw milora::shape_error("Llama::forward_cached: the cache was made for another model");
    check_tokens(tokens, config_.vocab_size);
    auto& w = cache.step();
    prepare_step(w, batch, n);
    const auto starts = cache.starts();
    for (Index r = 0; r < batch * n; ++r)  // padding slots (before the start) take position 0
      w.positions[std::size_t(r)] = std::int32_t(std::max<Index>(0, past + r % n - starts[std::size_t(r / n)]));
    build_rope_tables(cache.capacity());
    const auto shape = cache.attention_shape(n, config_.num_attention_heads, config_.num_key_value_heads, config_.head_dim);
    const Index ckv = BE::cols(w.k), c = config_.hidden_size;
    auto project = [&](Projection& p, const matrix& x, matrix& y) {
      if (p.adapter) p.forward(x, y, BE::block(w.h, 0, 0, batch * n, p.adapter->rank()));
      else p.forward(x, y);
    };
    K::embed(embed_, tokens, w.x);
    for (Index l = 0; l < num_layers(); ++l) {
      Block& b = *blocks_[std::size_t(l)];
      K::rmsnorm_forward(w.x, b.input_norm, config_.rms_norm_eps, w.xn, w.rstd);
      project(b.q, w.xn, w.q);
      project(b.k, w.xn, w.k);
      project(b.v, w.xn, w.v);
      K::rope_positions(w.q, rope_cos_, rope_sin_, config_.head_dim, w.positions);
      K::rope_positions(w.k, rope_cos_, rope_sin_, config_.head_dim, w.positions);
      for (Index s = 0; s < batch; ++s) {  // the new rows into their slots
        BE::copy(BE::cblock(w.k, s * n, 0, n, ckv), BE::block(cache.keys(l), s * cache.capacity() + past, 0, n, ckv));
        BE::copy(BE::cblock(w.v, s * n, 0, n, ckv), BE::block(cache.values(l), s * cache.capacity() + past, 0, n, ckv));
      }
      K::attention_cached(w.q, cache.keys(l), cache.values(l), shape, starts, w.att);
      project(b.o, w.att, w.x_mid);
      BE::axpy(1, w.x, w.x_mid);
      K::rmsnorm_forward(w.x_mid, b.post_attention_norm, config_.rms_norm_eps, w.xn, w.rstd);
      project(b.gate, w.xn, w.gate);
      project(b.up, w.xn, w.up);
      K::swiglu_forward(w.gate, w.up, w.act);
      project(b.down, w.act, w.x);  // x is free again: the next layer's input is x_mid + this
      BE::axpy(1, w.x_mid, w.x);
    }
    for (Index s = 0; s < batch; ++s) BE::copy(BE::cblock(w.x, s * n + n - 1, 0, 1, c), BE::block(w.last, s, 0, 1, c));
    K::rmsnorm_forward(w.last, final_norm_, config_.rms_norm_eps, w.last_normed, w.last_rstd);
    BE::gemm(1, w.last_normed, milora::Trans::no, lm_head(), milora::Trans::yes, 0, w.logits);
    cache.advance(n);
    return w.logits;
  }

  // ---- backward ---------------------------------------------------------------------------------
  /// forward, the loss against `targets`, and backward: adapter gradients accumulate
  /// grad_scale * d(mean loss)/d(parameter) (grad_scale = 1/accumulation steps). Returns the loss.
  double forward_backward(std::span<const Token> tokens, std::span<const Token> targets, Index batch, Index seq,
                          double grad_scale = 1.0, std::span<const std::int32_t> segment_start = {}) {
    if (num_adapters() == 0 && !full_ && !adapters_.probing())
      throw milora::state_error("Llama::forward_backward: the model has no adapters to train");
    if (targets.size() != tokens.size())
      throw milora::shape_error(milora::detail::concat("Llama::forward_backward: ", targets.size(), " targets for ",
                                                       tokens.size(), " tokens"));
    forward(tokens, batch, seq, segment_start);
    ActivationStore<BE>& a = act_;
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
      LayerActivations<BE>& s = a.for_backward(l);  // with bf16 activations: widened back
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
      K::attention_backward(g.datt, s.q, s.k, s.v, s.att, s.att_saved, attention_, g.dq, g.dk, g.dv);
      rope(g.dq, seq, -1);
      rope(g.dk, seq, -1);
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
  // The backward's working buffers: the gradients of the logits, the residual stream and each
  // layer's intermediate results, one layer at a time.
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
    if (config_.sliding_window && seq > *config_.sliding_window)
      throw milora::value_error(concat("Llama: sequence length ", seq, " exceeds the sliding window of ", *config_.sliding_window,
                                       " tokens (config.json's sliding_window); the reference model computes full causal "
                                       "attention, which is the windowed one only up to the window: use a shorter --seq"));
    if (act_.sized_for(batch, seq)) return;
    const Index n = batch * seq, c = config_.hidden_size, hd = config_.head_dim;
    const Index cq = config_.num_attention_heads * hd, ckv = config_.num_key_value_heads * hd;
    const Index inter = config_.intermediate_size, vocab = config_.vocab_size;
    attention_ = {batch, seq, config_.num_attention_heads, config_.num_key_value_heads, hd};
    act_.allocate({batch, seq, c, cq, ckv, inter, vocab, Index(blocks_.size()), K::attention_saved_shape(attention_)});
    auto z = [](Index r, Index cc) { return BE::zeros(r, cc); };
    if (num_adapters() != 0 || full_ || adapters_.probing())
      grads_ = {z(n, vocab), z(n, c), z(n, c), z(n, c), z(n, cq), z(n, cq), z(n, ckv), z(n, ckv), z(n, inter), z(n, inter),
                z(n, inter)};
    for (Projection* p : adapted()) p->h = z(n, p->adapter->rank());
    if (full_ && config_.has_bias()) {  // the bias gradients' column sums
      ones_ = BE::from_host(n, 1, std::vector<scalar>(std::size_t(n), scalar(1)));
      for (auto& b : blocks_)
        for (Projection* p : b->projections()) p->ones = &ones_;
    }
    build_rope_tables(seq);
  }

  // (Re)allocates a cache step's buffers for batch x n new rows.
  void prepare_step(typename KvCache<BE>::Step& w, Index batch, Index n) const {
    const Index rows = batch * n;
    Index rank = 0;  // adapters may have been added since the last step
    for (const auto& b : blocks_)
      for (const Projection* p : b->projections())
        if (p->adapter) rank = std::max(rank, p->adapter->rank());
    if (w.rows == rows && BE::rows(w.logits) == batch && BE::cols(w.h) >= rank) return;
    const Index c = config_.hidden_size, hd = config_.head_dim, inter = config_.intermediate_size;
    const Index cq = config_.num_attention_heads * hd, ckv = config_.num_key_value_heads * hd;
    auto z = [](Index r, Index cc) { return BE::zeros(r, cc); };
    w.x = z(rows, c), w.xn = z(rows, c), w.rstd = z(1, rows), w.q = z(rows, cq), w.k = z(rows, ckv), w.v = z(rows, ckv);
    w.att = z(rows, cq), w.x_mid = z(rows, c), w.gate = z(rows, inter), w.up = z(rows, inter), w.act = z(rows, inter);
    w.h = z(rows, rank), w.last = z(batch, c), w.last_normed = z(batch, c), w.last_rstd = z(1, batch);
    w.logits = z(batch, config_.vocab_size);
    w.positions.assign(std::size_t(rows), 0);
    w.rows = rows;
  }

  // Kernel sets that can mask packed rows have rope_segmented (the CPU's); the others refuse them.
  static constexpr bool kSegments = requires(view x, const_view c, const std::int32_t* st) { K::rope_segmented(x, c, c, Index{}, Index{}, 1.0, st); };

  void set_segments(std::span<const std::int32_t> segment_start, Index seq) {
    using milora::detail::concat;
    attention_.segment_start = nullptr;
    segment_start_.clear();
    if (segment_start.empty()) return;
    if constexpr (!kSegments) {
      throw milora::value_error("Llama: packed rows (several examples per row) are not implemented on this backend; pad them");
    } else {
      if (Index(segment_start.size()) != attention_.batch * seq)
        throw milora::shape_error(concat("Llama: ", segment_start.size(), " segment starts for ", attention_.batch * seq, " tokens"));
      // Each token's start is its own position (a new example) or the start of the token before it.
      for (std::size_t r = 0; r < segment_start.size(); ++r) {
        const Index t = Index(r) % seq, st = segment_start[r];
        if (!(st == t || (t > 0 && st == segment_start[r - 1])))
          throw milora::value_error(concat("Llama: segment start ", st, " of token ", r, " (position ", t,
                                           " in its row) is neither its own position nor the start of the token before it"));
      }
      segment_start_.assign(segment_start.begin(), segment_start.end());
      attention_.segment_start = segment_start_.data();
    }
  }
  template <class M>
  void rope(M& x, Index seq, double sign) {
    if constexpr (kSegments)
      if (attention_.segment_start) return K::rope_segmented(x, rope_cos_, rope_sin_, seq, config_.head_dim, sign, attention_.segment_start);
    K::rope(x, rope_cos_, rope_sin_, seq, config_.head_dim, sign);
  }

  // cos / sin of t * theta^(-2i/d) (with rope_scaling: LlamaConfig::rope_inv_freq), t < seq,
  // i < d/2: transformers' LlamaRotaryEmbedding (computed in double here and rounded once;
  // transformers computes the angle in float32).
  void build_rope_tables(Index seq) {
    if (BE::rows(rope_cos_) >= seq) return;
    const Index half = config_.head_dim / 2;
    std::vector<scalar> c(std::size_t(seq * half)), s(c.size());
    for (Index t = 0; t < seq; ++t)
      for (Index i = 0; i < half; ++i) {
        const double inv_freq = config_.rope_inv_freq(i);
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
  std::vector<std::string> weight_names_;  // config.weights() order: the names parameters() uses
  ModelAdapters<BE, Weights> adapters_{blocks_};
  matrix rope_cos_ = BE::zeros(0, 0), rope_sin_ = BE::zeros(0, 0);
  matrix ones_ = BE::zeros(0, 0);  // tokens x 1, for the bias gradients in full training
  AttentionShape attention_{};
  std::vector<std::int32_t> segment_start_;  // the forward's, kept for its backward
  ActivationStore<BE> act_;
  Gradients grads_;
};

}  // namespace llama
