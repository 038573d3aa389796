// The model-specific kernels of LLaMA, and where a backend plugs its own in.
//
// Everything in a LLaMA that is a matrix product goes through the backend policy's gemm (and the
// adapters). What is left are six small operations with their backward passes, which no BLAS has:
//
//   embed            out[i, :] = table[token_i, :]         (backward: scatter-add, full training only)
//   rmsnorm          y = w * x / sqrt(mean(x^2) + eps)                      (per row)
//   rope             rotate-half rotary embedding, in place                 (per row and head)
//   attention        causal grouped-query softmax(Q K^T / sqrt(d)) V         (per sequence and head)
//                    what the forward keeps for the backward ("saved") is the backend's choice:
//                    the probabilities on the CPU, one logsumexp per query row on CUDA (fused)
//   attention_cached the same for new queries against a key/value cache (generation; forward only),
//                    with rope_positions: rope at a given position per row
//   swiglu           out = silu(gate) * up
//   cross_entropy    mean over targets of logsumexp(logits) - logits[target], and dlogits
//
// A backend supplies them by specialising LlamaKernels<Backend> (kernels_cpu.hpp does it for
// EigenBackend). The model (model.hpp) is written once against this interface and never looks
// inside a matrix, which is what lets the same model run on the CPU and on a GPU.
//
// Conventions shared by all kernels: activations are (batch*seq) x features, row r holding token
// t = r % seq of sequence r / seq; a per-row vector (RMSNorm's 1/rms) is 1 x rows; backward kernels
// that feed the residual stream *accumulate* into their input gradient (dx += ...), all others
// overwrite. The formulas, with their derivation, are in docs/llama.md.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>

#include "milora/core/backend.hpp"
#include "milora/core/errors.hpp"

namespace llama {

using milora::Index;

/// A token id. int32, as in PyTorch's default embedding index and in llm.c.
using Token = std::int32_t;
/// Targets equal to this are skipped by the loss (PyTorch's CrossEntropyLoss ignore_index).
inline constexpr Token kIgnoreIndex = -100;

/// Specialised per backend (kernels_cpu.hpp: EigenBackend<float|double>).
template <class Backend>
struct LlamaKernels;

/// The checks every backend's embed and cross_entropy make on the host before any work, so that
/// bad ids get the same message on every backend: value_error naming the first token outside
/// [0, vocab) and its position.
inline void check_tokens(std::span<const Token> tokens, Index vocab) {
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw milora::value_error(milora::detail::concat("token ", tokens[i], " at position ", i,
                                                       " is outside the vocabulary of ", vocab));
}
/// The number of targets the loss averages over (those that are not kIgnoreIndex); value_error
/// naming the first one outside [0, vocab) and its row.
inline Index count_targets(std::span<const Token> targets, Index vocab) {
  Index count = 0;
  for (std::size_t i = 0; i < targets.size(); ++i) {
    const Token t = targets[i];
    if (t == kIgnoreIndex) continue;
    if (t < 0 || t >= vocab)
      throw milora::value_error(milora::detail::concat("target ", t, " at row ", i, " is outside the vocabulary of ", vocab));
    ++count;
  }
  return count;
}

/// The shape of one attention call.
struct AttentionShape {
  Index batch, seq, heads, kv_heads, head_dim;
  Index group() const { return heads / kv_heads; }  // query heads per key/value head
  // Packed rows (several examples in one row): per token, the position in its row where its
  // example starts; a token attends to [start, itself] only. Null: one sequence per row. Only
  // kernel sets with rope_segmented (the CPU's) take it.
  const std::int32_t* segment_start = nullptr;
};

/// The shape of one attention over a key/value cache (generation, kv_cache.hpp): `seq` new query
/// rows per sequence, at the cache's slots past .. past + seq - 1, against every key up to them.
/// Sequence b's slot t is row b * capacity + t of the caches (which hold rows already rotated by
/// rope). Sequence b starts at slot start[b] (a left-padded prompt of a batch): query slot t sees
/// the keys in slots [start[b], t], or only itself when t < start[b] (a padding slot, whose output
/// no real token reads).
struct CachedAttentionShape {
  Index batch, seq, heads, kv_heads, head_dim;
  Index capacity;  // cache rows per sequence
  Index past;      // slots filled before these queries
  Index group() const { return heads / kv_heads; }
};

/// A matrix's rows and columns (the attention's saved state is sized by the backend).
struct MatrixShape {
  Index rows, cols;
};

/// What model.hpp needs from LlamaKernels<B>; checked where the model is instantiated, so a
/// backend that forgets one kernel gets one error naming it.
template <class K, class B>
concept LlamaKernelSet = requires(milora::view_t<B> v, milora::const_view_t<B> c, std::span<const Token> tok,
                                  double d, Index i, const AttentionShape& shape, const CachedAttentionShape& cached) {
  K::embed(c, tok, v);
  K::rmsnorm_forward(c, c, d, v, v);
  K::rmsnorm_backward(c, c, c, c, v);
  K::rmsnorm_backward_weight(c, c, c, v);
  K::embed_backward(c, tok, v);
  K::rope(v, c, c, i, i, d);
  K::rope_positions(v, c, c, i, std::span<const std::int32_t>{});
  { K::attention_saved_shape(shape) } -> std::same_as<MatrixShape>;
  K::attention_forward(c, c, c, shape, v, v);
  K::attention_backward(c, c, c, c, c, c, shape, v, v, v);
  K::attention_cached(c, c, c, cached, std::span<const std::int32_t>{}, v);
  K::swiglu_forward(c, c, v);
  K::swiglu_backward(c, c, c, v, v);
  { K::cross_entropy(c, tok, d, v) } -> std::convertible_to<double>;
};

}  // namespace llama
