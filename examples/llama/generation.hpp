// Generating text with a Llama: the next-token choice (greedy, or a seeded draw after
// transformers' logits processors) and the loop that stops on EOS, a stop string or a length.
//
//   choose_next(logits, context, options, counter)          one token from one row of logits
//   generate(model, tokenizer, prompt ids, options)         the new tokens and text
//   generate_batch(model, tokenizer, prompts, options)      the same for several prompts at once
//
// The processors apply in transformers' order: the repetition penalty (a logit of a token already in
// the context is divided by the penalty when positive, multiplied when negative), then temperature,
// top-k (the k largest), top-p (the smallest set of the most likely tokens whose probability
// reaches p). The draw is number `counter` of milora's counter-based generator for `seed`, so a
// run is reproducible from the seed on any machine, and a prompt of a batch gets the tokens it gets
// alone (draw number k of every sequence is the seed's k-th).
//
// The model reads the prompts once (prefill) into a key/value cache (kv_cache.hpp), then one token
// per sequence per step; prompts of different lengths are left-padded, each sequence masked to its
// own tokens. Past the model's context (Llama::context_limit) each step reads the last
// context_limit tokens again, as a model without a cache does. kv_cache = false recomputes the
// whole context at every step instead: the reference the cache is tested and benchmarked against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <optional>
#include <utility>
#include <span>
#include <string>
#include <vector>

#include "data.hpp"
#include "kv_cache.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/random.hpp"
#include "non_finite.hpp"

namespace llama {

struct GenerationOptions {
  Index max_new_tokens = 64;
  double temperature = 0;           // 0: greedy (the largest logit, after the repetition penalty)
  Index top_k = 0;                  // 0: every token
  double top_p = 1;                 // 1: every token
  double repetition_penalty = 1;    // 1: none (transformers' RepetitionPenaltyLogitsProcessor)
  std::uint64_t seed = 0;
  std::vector<std::string> stop;    // the text ends before the first of these it produces
  bool stop_at_eos = true;          // the tokenizer's EOS ends generation (and is not part of the text)
  bool kv_cache = true;             // false: the whole context again at every step
  Index top_probs = 0;              // > 0: record each step's most likely tokens, softmax(logits) (before any processor)

  void validate() const {
    using milora::detail::concat;
    if (max_new_tokens < 0) throw milora::value_error(concat("max_new_tokens ", max_new_tokens, " must be >= 0"));
    if (!(temperature >= 0) || !std::isfinite(temperature)) throw milora::value_error(concat("temperature ", temperature, " must be >= 0"));
    if (top_k < 0) throw milora::value_error(concat("top_k ", top_k, " must be >= 0"));
    if (top_probs < 0) throw milora::value_error(concat("top_probs ", top_probs, " must be >= 0"));
    if (!(top_p > 0 && top_p <= 1)) throw milora::value_error(concat("top_p ", top_p, " must be in (0, 1]"));
    if (!(repetition_penalty > 0) || !std::isfinite(repetition_penalty))
      throw milora::value_error(concat("repetition_penalty ", repetition_penalty, " must be > 0"));
    for (const auto& s : stop)
      if (s.empty()) throw milora::value_error("a stop string is empty");
  }
};

/// The next token after `context` from its row of `logits` (see the header comment); draw number
/// `counter` of the seed's stream when sampling.
inline Token choose_next(std::span<const float> logits, std::span<const Token> context, const GenerationOptions& o, std::uint64_t counter) {
  const Index v = Index(logits.size());
  std::vector<double> z(logits.begin(), logits.end());
  if (o.repetition_penalty != 1) {
    std::vector<bool> seen(std::size_t(v), false);
    for (Token t : context)
      if (t >= 0 && t < v) seen[std::size_t(t)] = true;
    for (Index i = 0; i < v; ++i)
      if (seen[std::size_t(i)]) z[std::size_t(i)] = z[std::size_t(i)] > 0 ? z[std::size_t(i)] / o.repetition_penalty : z[std::size_t(i)] * o.repetition_penalty;
  }
  if (o.temperature <= 0) return Token(std::max_element(z.begin(), z.end()) - z.begin());  // the first of equal maxima
  std::vector<Index> order(static_cast<std::size_t>(v));
  for (Index i = 0; i < v; ++i) order[std::size_t(i)] = i;
  // descending by logit, ties by id: the same order on every standard library
  const auto before = [&](Index a, Index b) { return z[std::size_t(a)] > z[std::size_t(b)] || (z[std::size_t(a)] == z[std::size_t(b)] && a < b); };
  const Index k = o.top_k > 0 ? std::min(o.top_k, v) : v;
  std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
  std::vector<double> p(static_cast<std::size_t>(k));
  const double mx = z[std::size_t(order[0])];
  double sum = 0;
  for (Index i = 0; i < k; ++i) sum += p[std::size_t(i)] = std::exp((z[std::size_t(order[std::size_t(i)])] - mx) / o.temperature);
  Index keep = k;
  if (o.top_p < 1) {  // the most likely tokens until their probability reaches top_p (at least one)
    double cumulative = 0;
    for (keep = 0; keep < k;) {
      cumulative += p[std::size_t(keep)] / sum;
      ++keep;
      if (cumulative >= o.top_p) break;
    }
    sum = 0;
    for (Index i = 0; i < keep; ++i) sum += p[std::size_t(i)];
  }
  double u = milora::random::uniform01(o.seed, counter) * sum;
  for (Index i = 0; i < keep; ++i)
    if ((u -= p[std::size_t(i)]) <= 0) return Token(order[std::size_t(i)]);
  return Token(order[std::size_t(keep - 1)]);
}

struct Generated {
  std::vector<Token> tokens;  // the new tokens (without a final EOS)
  std::string text;           // their text, cut before a stop string
  std::string stopped_by;     // "eos", "stop", "length"
  /// With GenerationOptions::top_probs = k: per step (a final EOS included), the k most likely
  /// tokens and their probabilities under softmax(logits), most likely first (what llama.cpp's
  /// n_probs reports at temperature 1 with every filter off).
  std::vector<std::vector<std::pair<Token, double>>> top_probs;
};

/// The k most likely tokens of one row of logits with their softmax probabilities (in double).
inline std::vector<std::pair<Token, double>> most_likely(std::span<const float> logits, Index k) {
  const double top = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(double(x) - top);
  std::vector<Index> order(logits.size());
  std::iota(order.begin(), order.end(), Index(0));
  k = std::min<Index>(k, Index(logits.size()));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](Index a, Index b) {
    return logits[std::size_t(a)] > logits[std::size_t(b)] || (logits[std::size_t(a)] == logits[std::size_t(b)] && a < b);
  });
  std::vector<std::pair<Token, double>> out;
  for (Index i = 0; i < k; ++i) out.emplace_back(Token(order[std::size_t(i)]), std::exp(double(logits[std::size_t(order[std::size_t(i)])]) - top) / sum);
  return out;
}

/// The logits of each sequence's next token (row b of a batch x vocab host array), by the key/value
/// cache (prefill, then the one token each context grew by) or, with options.kv_cache false, by
/// recomputing each context: what generate_batch draws from, and what benchmarks/generate_bench
/// times.
template <class Model>
class NextTokenLogits {
 public:
  using BE = typename Model::backend;
  NextTokenLogits(Model& model, Index batch, Index longest_prompt, const GenerationOptions& o)
      : model_(model), use_cache_(o.kv_cache), limit_(model.context_limit()) {
    if (use_cache_) cache_.emplace(model.make_cache(batch, std::min(limit_, longest_prompt + o.max_new_tokens)));
  }

  /// The logits after every context (without the cache, the rows of `done` sequences are left as
  /// they were). Each context grew by one token since the last call, or this is the first call.
  const std::vector<float>& operator()(const std::vector<std::vector<Token>>& contexts, const std::vector<bool>& done) {
    const Index batch = Index(contexts.size()), vocab = model_.config().vocab_size;
    logits_.resize(std::size_t(batch * vocab));
    if (!use_cache_) {
      for (Index b = 0; b < batch; ++b)
        if (!done[std::size_t(b)]) {
          const auto window = last_tokens(contexts[std::size_t(b)], limit_);
          model_.forward(window, 1, Index(window.size()));
          store(BE::cblock(model_.logits(), Index(window.size()) - 1, 0, 1, vocab), b);
        }
      return logits_;
    }
    auto& cache = *cache_;
    if (cache.length() > 0 && cache.length() < cache.capacity()) {  // one new token per sequence
      std::vector<Token> next(static_cast<std::size_t>(batch));
      for (Index b = 0; b < batch; ++b) next[std::size_t(b)] = contexts[std::size_t(b)].back();
      store(model_.forward_cached(next, cache), 0);
      return logits_;
    }
    // prefill: every context's last tokens (at most the cache's slots), left-padded to the longest
    Index slots = 0;
    for (const auto& c : contexts) slots = std::max(slots, std::min(Index(c.size()), cache.capacity()));
    std::vector<Token> tokens(std::size_t(batch * slots), 0);
    std::vector<std::int32_t> starts(static_cast<std::size_t>(batch));
    for (Index b = 0; b < batch; ++b) {
      const auto window = last_tokens(contexts[std::size_t(b)], slots);
      starts[std::size_t(b)] = std::int32_t(slots - Index(window.size()));
      std::copy(window.begin(), window.end(), tokens.begin() + std::ptrdiff_t(b * slots + starts[std::size_t(b)]));
    }
    cache.reset(starts);
    store(model_.forward_cached(tokens, cache), 0);
    return logits_;
  }

 private:
  static std::span<const Token> last_tokens(const std::vector<Token>& c, Index n) {
    const std::size_t k = std::min(c.size(), std::size_t(n));
    return {c.data() + c.size() - k, k};
  }
  // Rows of logits (on the device) into the host array from row `first` on.
  void store(milora::const_view_t<BE> rows, Index first) {
    const auto host = BE::to_host(rows);
    std::transform(host.begin(), host.end(), logits_.begin() + std::ptrdiff_t(first * BE::cols(rows)),
                   [](auto x) { return float(x); });
  }

  Model& model_;
  bool use_cache_;
  Index limit_;
  std::optional<KvCache<BE>> cache_;
  std::vector<float> logits_;
};

/// Continues each prompt (token ids) with `model`; see the header comment. Result b is what
/// generate(model, tokenizer, prompts[b], options) returns.
template <class Model>
std::vector<Generated> generate_batch(Model& model, const Tokenizer& tokenizer, std::vector<std::vector<Token>> prompts,
                                      const GenerationOptions& o) {
  o.validate();
  if (prompts.empty()) throw milora::value_error("no prompts to continue");
  Index longest = 0;
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty()) throw milora::value_error(milora::detail::concat("prompt ", b, " encodes to no tokens"));
    longest = std::max(longest, Index(prompts[b].size()));
  }
  const Index batch = Index(prompts.size()), vocab = model.config().vocab_size;
  const auto eos = tokenizer.eos_id();
  std::vector<Generated> out(prompts.size());
  std::vector<bool> done(prompts.size(), false);
  for (auto& g : out) g.stopped_by = "length";
  auto& contexts = prompts;
  NextTokenLogits<Model> next_logits(model, batch, longest, o);
  for (Index i = 0; i < o.max_new_tokens && std::find(done.begin(), done.end(), false) != done.end(); ++i) {
    const auto& logits = next_logits(contexts, done);
    for (Index b = 0; b < batch; ++b) {
      auto& context = contexts[std::size_t(b)];
      if (done[std::size_t(b)]) {  // keeps the batch's slots aligned; its logits are not read
        context.push_back(context.back());
        continue;
      }
      const std::span<const float> row(logits.data() + b * vocab, std::size_t(vocab));
      if (!std::all_of(row.begin(), row.end(), [](float x) { return std::isfinite(x); })) {
        const auto where = o.kv_cache ? std::string() : find_non_finite(model);
        throw milora::numerical_error(milora::detail::concat("the logits of new token ", i, batch > 1 ? " of prompt " + std::to_string(b) : "",
                                                             " are not finite", where.empty() ? "" : "; first: " + where));
      }
      const Token next = choose_next(row, context, o, std::uint64_t(i));
      context.push_back(next);
      Generated& g = out[std::size_t(b)];
      if (o.top_probs > 0) g.top_probs.push_back(most_likely(row, o.top_probs));
      if (o.stop_at_eos && eos && next == *eos) {
        g.stopped_by = "eos";
        done[std::size_t(b)] = true;
        continue;
      }
      g.tokens.push_back(next);
      if (!o.stop.empty()) {
        const std::string text = tokenizer.decode(g.tokens);
        std::size_t cut = std::string::npos;
        for (const auto& s : o.stop) cut = std::min(cut, text.find(s));
        if (cut != std::string::npos) {
          g.text = text.substr(0, cut);
          g.stopped_by = "stop";
          done[std::size_t(b)] = true;
        }
      }
    }
  }
  for (std::size_t b = 0; b < out.size(); ++b)
    if (out[b].stopped_by != "stop") out[b].text = tokenizer.decode(out[b].tokens);
  return out;
}

/// Continues `prompt` (token ids) with `model`; see the header comment.
template <class Model>
Generated generate(Model& model, const Tokenizer& tokenizer, std::vector<Token> prompt, const GenerationOptions& o) {
  if (prompt.empty()) throw milora::value_error("the prompt encodes to no tokens");
  return std::move(generate_batch(model, tokenizer, {std::move(prompt)}, o).front());
}

}  // namespace llama
