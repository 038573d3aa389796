// Generating text with a Llama: the next-token choice (greedy, or a seeded draw after
// transformers' logits processors) and the loop that stops on EOS, a stop string or a length.
//
//   choose_next(logits, context, options, counter)   one token from one row of logits
//   generate(model, tokenizer, prompt ids, options)  the new tokens and text
//
// The processors apply in transformers' order: the repetition penalty (a logit of a token already in
// the context is divided by the penalty when positive, multiplied when negative), then temperature,
// top-k (the k largest), top-p (the smallest set of the most likely tokens whose probability
// reaches p). The draw is number `counter` of milora's counter-based generator for `seed`, so a
// run is reproducible from the seed on any machine. Each step runs the model on the whole context
// (the last max_position_embeddings tokens).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "data.hpp"
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

  void validate() const {
    using milora::detail::concat;
    if (max_new_tokens < 0) throw milora::value_error(concat("max_new_tokens ", max_new_tokens, " must be >= 0"));
    if (!(temperature >= 0) || !std::isfinite(temperature)) throw milora::value_error(concat("temperature ", temperature, " must be >= 0"));
    if (top_k < 0) throw milora::value_error(concat("top_k ", top_k, " must be >= 0"));
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
};

/// Continues `prompt` (token ids) with `model`; see the header comment.
template <class Model>
Generated generate(Model& model, const Tokenizer& tokenizer, std::vector<Token> prompt, const GenerationOptions& o) {
  using BE = typename Model::backend;
  o.validate();
  if (prompt.empty()) throw milora::value_error("the prompt encodes to no tokens");
  const auto& cfg = model.config();
  const auto eos = tokenizer.eos_id();
  Generated out;
  out.stopped_by = "length";
  std::vector<Token>& context = prompt;
  for (Index i = 0; i < o.max_new_tokens; ++i) {
    const Index n = std::min<Index>(Index(context.size()), cfg.max_position_embeddings);
    const std::span<const Token> window(context.data() + context.size() - std::size_t(n), std::size_t(n));
    model.forward(window, 1, n);
    // Only the last position's logits come to the host (on a GPU the rest stay there).
    const std::vector<float> last = BE::to_host(BE::cblock(model.logits(), n - 1, 0, 1, cfg.vocab_size));
    if (!std::all_of(last.begin(), last.end(), [](float x) { return std::isfinite(x); })) {
      const auto where = find_non_finite(model);
      throw milora::numerical_error(milora::detail::concat("the logits of new token ", i, " are not finite", where.empty() ? "" : "; first: " + where));
    }
    const Token next = choose_next(last, context, o, std::uint64_t(i));
    if (o.stop_at_eos && eos && next == *eos) {
      out.stopped_by = "eos";
      break;
    }
    context.push_back(next);
    out.tokens.push_back(next);
    if (!o.stop.empty()) {
      const std::string text = tokenizer.decode(out.tokens);
      std::size_t cut = std::string::npos;
      for (const auto& s : o.stop) cut = std::min(cut, text.find(s));
      if (cut != std::string::npos) {
        out.text = text.substr(0, cut);
        out.stopped_by = "stop";
        return out;
      }
    }
  }
  out.text = tokenizer.decode(out.tokens);
  return out;
}

}  // namespace llama
