// The key/value cache of generation: each layer's keys (already rotated by rope) and values of the
// tokens a Llama has read, so that the next token costs one row through the model instead of the
// whole context again.
//
//   auto cache = model.make_cache(batch, capacity);   // capacity slots per sequence
//   cache.reset(starts);                               // where each sequence starts (left padding)
//   model.forward_cached(prompts, cache);              // prefill: batch x n tokens, n = prompt slots
//   model.forward_cached(next_tokens, cache);          // then one token per sequence at a time
//
// Sequence b's slot t is row b * capacity + t of every layer's key and value matrices. A batch of
// prompts of different lengths is left-padded: sequence b's tokens start at slot start[b]; its
// queries never see the padding slots (CachedAttentionShape), and its positions count from its
// start, as transformers' position_ids = cumsum(attention_mask) - 1 do. The cache also holds the
// working buffers of the steps that use it (one layer's activations of the new rows), sized for
// the last step, so a Llama can serve several caches and its training state is never touched.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels.hpp"
#include "milora/core/backend.hpp"
#include "milora/core/checks.hpp"
#include "milora/core/errors.hpp"

namespace llama {

template <milora::Backend BE>
class KvCache {
 public:
  using matrix = milora::matrix_t<BE>;

  /// The working set of one forward_cached step: one layer's activations of the new rows, the
  /// adapters' x A^T (rows x the largest rank), each sequence's last row through the final norm,
  /// and the logits (batch x vocab).
  struct Step {
    Index rows = -1;
    matrix x, xn, rstd, q, k, v, att, x_mid, gate, up, act, h, last, last_normed, last_rstd, logits;
    std::vector<std::int32_t> positions;  // each new row's position in its sequence (rope)
  };

  KvCache(Index layers, Index batch, Index capacity, Index kv_width) : batch_(batch), capacity_(capacity) {
    using milora::detail::concat;
    if (layers <= 0 || batch <= 0 || capacity <= 0 || kv_width <= 0)
      throw milora::value_error(concat("KvCache: layers ", layers, ", batch ", batch, ", capacity ", capacity, " and width ",
                                       kv_width, " must be positive"));
    for (Index l = 0; l < layers; ++l) {
      keys_.push_back(BE::zeros(batch * capacity, kv_width));
      values_.push_back(BE::zeros(batch * capacity, kv_width));
    }
    start_.assign(std::size_t(batch), 0);
  }

  Index layers() const { return Index(keys_.size()); }
  Index batch() const { return batch_; }
  /// Slots per sequence.
  Index capacity() const { return capacity_; }
  /// Slots filled (the same for every sequence of the batch).
  Index length() const { return length_; }
  /// Sequence b's first slot (0 unless its prompt was left-padded).
  std::span<const std::int32_t> starts() const { return start_; }

  /// Empties the cache; sequence b will start at slot starts[b] (none: every sequence at 0).
  /// value_error for a start outside [0, capacity) or a count other than batch(); the cache is
  /// unchanged then.
  void reset(std::span<const std::int32_t> starts = {}) {
    using milora::detail::concat;
    if (!starts.empty() && Index(starts.size()) != batch_)
      throw milora::value_error(concat("KvCache::reset: ", starts.size(), " starts for a batch of ", batch_));
    for (std::size_t b = 0; b < starts.size(); ++b)
      if (starts[b] < 0 || starts[b] >= capacity_)
        throw milora::value_error(concat("KvCache::reset: start ", starts[b], " of sequence ", b, " is outside [0, ",
                                         capacity_, ")"));
    if (starts.empty()) start_.assign(std::size_t(batch_), 0);
    else start_.assign(starts.begin(), starts.end());
    length_ = 0;
  }

  matrix& keys(Index layer) { return keys_.at(std::size_t(layer)); }
  matrix& values(Index layer) { return values_.at(std::size_t(layer)); }
  const matrix& keys(Index layer) const { return keys_.at(std::size_t(layer)); }
  const matrix& values(Index layer) const { return values_.at(std::size_t(layer)); }
  /// The attention shape of `seq` new rows per sequence after the filled slots.
  CachedAttentionShape attention_shape(Index seq, Index heads, Index kv_heads, Index head_dim) const {
    return {batch_, seq, heads, kv_heads, head_dim, capacity_, length_};
  }

  // For Llama::forward_cached: the step's buffers, and the slots it filled.
  Step& step() { return step_; }
  void advance(Index n) { length_ += n; }

 private:
  Index batch_, capacity_, length_ = 0;
  std::vector<std::int32_t> start_;
  std::vector<matrix> keys_, values_;
  Step step_;
};

}  // namespace llama
