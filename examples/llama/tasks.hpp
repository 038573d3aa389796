// Task accuracy, as the MiLoRA paper compares methods: multiple choice scored by log-likelihood (the
// commonsense suite: ARC, PIQA, BoolQ, HellaSwag, ...) and generation scored by exact match
// (GSM8K, MATH), each with a 95% interval.
//
// A task file is JSON lines, one example per line, all of one kind:
//   multiple choice  {"question": "...", "choices": ["...", ...], "answer": 2}
//                    ("query" / "prompt" / "context" for the question, "label" / "gold" for the
//                    index; "target_delimiter" (default " ") goes between question and choice)
//   generation       {"question": "...", "answer": "... #### 42"}
//                    (GSM8K's form: the reference answer is what follows "####", or the whole text)
//
// Multiple choice follows lm-evaluation-harness: the log-likelihood of each choice's tokens given the
// question (the choice encoded as the tail of encode(question + delimiter + choice) after
// encode(question)), `acc` takes the largest, `acc_norm` the largest per character of the choice.
// Generation is greedy up to --max-new-tokens or a stop string (default: a blank line); the answer
// is what follows the last "####" in the output, or else its last number (lm-eval's GSM8K
// "flexible-extract"); answers are compared as numbers when both are ("1,234" = "1234.0"), else as
// text with spaces trimmed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data.hpp"
#include "milora/core/errors.hpp"
#include "milora/io/json.hpp"

namespace llama {

struct ChoiceExample {
  std::string context;
  std::vector<std::string> continuations;  // the delimiter and the choice
  std::size_t gold = 0;
};

struct GenerationExample {
  std::string prompt;
  std::string reference;  // the answer to match (after "####" when the file's answer has one)
};

struct TaskSet {
  std::vector<ChoiceExample> choice;
  std::vector<GenerationExample> generation;
  bool multiple_choice() const { return !choice.empty(); }
  std::size_t size() const { return choice.size() + generation.size(); }
};

/// `s` without leading and trailing white space.
inline std::string trimmed(const std::string& s, const char* space = " \t\r\n") {
  const auto a = s.find_first_not_of(space);
  return a == std::string::npos ? std::string() : s.substr(a, s.find_last_not_of(space) - a + 1);
}

/// The number in `s` as a double, if `s` is one: an optional sign, digits with optional thousands
/// commas, an optional fraction; "$" and a trailing "." are dropped (GSM8K writes "$1,234." at times).
inline std::optional<double> parse_number(std::string s) {
  s = trimmed(s);
  std::erase(s, '$');
  std::erase(s, ',');
  if (!s.empty() && s.back() == '.') s.pop_back();
  if (s.empty()) return std::nullopt;
  std::size_t i = s[0] == '-' || s[0] == '+' ? 1 : 0, digits = 0, dots = 0;
  for (std::size_t k = i; k < s.size(); ++k) {
    if (std::isdigit(static_cast<unsigned char>(s[k]))) ++digits;
    else if (s[k] == '.' && dots == 0) ++dots;
    else return std::nullopt;
  }
  if (digits == 0) return std::nullopt;
  return std::stod(s);
}

/// The answer a generated text gives: what follows its last "####" (to the end of that line), else
/// its last number (digits with commas, a sign and a fraction), else the whole text trimmed.
inline std::string extract_answer(const std::string& text) {
  if (const auto at = text.rfind("####"); at != std::string::npos) {
    const std::string rest = text.substr(at + 4);
    return trimmed(rest.substr(0, rest.find('\n')), " \t\r");
  }
  std::string last;
  for (std::size_t i = 0; i < text.size();) {
    const bool sign = (text[i] == '-') && i + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[i + 1]));
    if (!sign && !std::isdigit(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    std::size_t j = i + 1;
    while (j < text.size() && (std::isdigit(static_cast<unsigned char>(text[j])) ||
                               ((text[j] == ',' || text[j] == '.') && j + 1 < text.size() && std::isdigit(static_cast<unsigned char>(text[j + 1])))))
      ++j;
    last = text.substr(i, j - i);
    i = j;
  }
  return last.empty() ? trimmed(text) : last;
}

/// Whether a generated answer matches the reference: as numbers when both parse (exactly: GSM8K's
/// answers are integers, and 0.1 + 0.2 is not a test of arithmetic here), else as trimmed text.
inline bool answers_match(const std::string& got, const std::string& reference) {
  const auto a = parse_number(got), b = parse_number(reference);
  if (a && b) return *a == *b;
  return trimmed(got) == trimmed(reference);
}

/// Reads a task file (see the header comment); `path` and the line number name a bad record.
inline TaskSet read_task(const std::filesystem::path& path) {
  using milora::detail::concat;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw milora::io_error(concat("cannot open '", path.string(), "'"));
  TaskSet set;
  std::string line;
  for (std::size_t no = 1; std::getline(in, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = concat("'", path.string(), "' line ", no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw milora::format_error(concat(where, ": not JSON (", e.what(), ")"));
    }
    if (!j.is_object()) throw milora::format_error(where + ": not a JSON object");
    const auto text = [&](std::initializer_list<const char*> keys) -> std::optional<std::string> {
      for (const char* k : keys)
        if (j.contains(k)) {
          if (!j[k].is_string()) throw milora::format_error(concat(where, ": \"", k, "\" is not a string"));
          return j[k].get<std::string>();
        }
      return std::nullopt;
    };
    const auto question = text({"question", "query", "prompt", "context"});
    if (!question) throw milora::format_error(where + ": no \"question\" (or \"query\", \"prompt\", \"context\")");
    if (j.contains("choices")) {
      if (!set.generation.empty()) throw milora::format_error(where + ": multiple choice after generation examples; one kind per file");
      const auto& c = j["choices"];
      if (!c.is_array() || c.size() < 2) throw milora::format_error(where + ": \"choices\" must be a list of at least two strings");
      ChoiceExample ex;
      ex.context = *question;
      const std::string delimiter = text({"target_delimiter"}).value_or(" ");
      for (const auto& choice : c) {
        if (!choice.is_string()) throw milora::format_error(where + ": a choice is not a string");
        ex.continuations.push_back(delimiter + choice.get<std::string>());
      }
      const char* key = j.contains("answer") ? "answer" : j.contains("label") ? "label" : j.contains("gold") ? "gold" : nullptr;
      if (key == nullptr || !j[key].is_number_integer() || j[key].get<long long>() < 0 || j[key].get<std::size_t>() >= c.size())
        throw milora::format_error(concat(where, ": \"answer\" (or \"label\", \"gold\") must be the index of a choice, 0 to ", c.size() - 1));
      ex.gold = j[key].get<std::size_t>();
      set.choice.push_back(std::move(ex));
    } else {
      if (!set.choice.empty()) throw milora::format_error(where + ": a generation example after multiple-choice ones; one kind per file");
      const auto answer = text({"answer", "target"});
      if (!answer) throw milora::format_error(where + ": no \"choices\" and no \"answer\" string");
      const auto at = answer->rfind("####");
      set.generation.push_back({*question, at == std::string::npos ? *answer : extract_answer(*answer)});
    }
  }
  if (set.size() == 0) throw milora::value_error(concat("'", path.string(), "' has no examples"));
  return set;
}

/// A proportion k / n with its standard error sqrt(p (1 - p) / (n - 1)) (lm-evaluation-harness's)
/// and the Wilson score 95% interval (which stays inside [0, 1] and is not empty at p = 0 or 1).
struct Proportion {
  double value = 0, stderr_ = 0, low = 0, high = 0;
  std::size_t hits = 0, n = 0;
  static Proportion of(std::size_t hits, std::size_t n) {
    Proportion p;
    p.hits = hits;
    p.n = n;
    if (n == 0) return p;
    const double x = double(hits) / double(n), z = 1.959963984540054, nn = double(n);
    p.value = x;
    p.stderr_ = n > 1 ? std::sqrt(x * (1 - x) / (nn - 1)) : 0.0;
    const double centre = (x + z * z / (2 * nn)) / (1 + z * z / nn);
    const double half = z / (1 + z * z / nn) * std::sqrt(x * (1 - x) / nn + z * z / (4 * nn * nn));
    p.low = hits == 0 ? 0.0 : std::max(0.0, centre - half);  // exactly 0 and 1 at the ends, as the formula says
    p.high = hits == n ? 1.0 : std::min(1.0, centre + half);
    return p;
  }
  nlohmann::json json() const { return {{"value", value}, {"stderr", stderr_}, {"ci95", {low, high}}, {"hits", hits}, {"n", n}}; }
};

/// The log-likelihood of a continuation given its context: sum of log p(token), and its length.
using LogLikelihood = std::function<double(const std::string& context, const std::string& continuation)>;

struct ChoiceScores {
  Proportion acc, acc_norm;
};

/// acc and acc_norm of `examples` with `loglik` (log-likelihood per choice; acc_norm divides it by
/// the choice's length in characters, UTF-8 code points, as lm-evaluation-harness does). Ties go to
/// the first choice, as argmax does.
inline ChoiceScores score_choices(const std::vector<ChoiceExample>& examples, const LogLikelihood& loglik) {
  std::size_t hits = 0, hits_norm = 0;
  for (const auto& ex : examples) {
    std::size_t best = 0, best_norm = 0;
    double top = -INFINITY, top_norm = -INFINITY;
    for (std::size_t c = 0; c < ex.continuations.size(); ++c) {
      const std::string& cont = ex.continuations[c];
      const double ll = loglik(ex.context, cont);
      const auto chars = std::count_if(cont.begin(), cont.end(), [](char ch) { return (static_cast<unsigned char>(ch) & 0xC0) != 0x80; });
      const double norm = ll / double(std::max<std::ptrdiff_t>(1, chars));
      if (ll > top) top = ll, best = c;
      if (norm > top_norm) top_norm = norm, best_norm = c;
    }
    hits += best == ex.gold;
    hits_norm += best_norm == ex.gold;
  }
  return {Proportion::of(hits, examples.size()), Proportion::of(hits_norm, examples.size())};
}

/// Exact match of `generate(prompt)` (the generated text) against each reference.
inline Proportion score_generation(const std::vector<GenerationExample>& examples,
                                   const std::function<std::string(const std::string&)>& generate) {
  std::size_t hits = 0;
  for (const auto& ex : examples) hits += answers_match(extract_answer(generate(ex.prompt)), ex.reference);
  return Proportion::of(hits, examples.size());
}

/// The continuation's tokens, lm-evaluation-harness's way: encode(context + continuation) after the
/// tokens of encode(context) (a context's trailing spaces move to the continuation first, so a
/// space is not split from the word it belongs to). Returns {context tokens, continuation tokens}.
inline std::pair<std::vector<Token>, std::vector<Token>> encode_pair(const Tokenizer& tokenizer, std::string context,
                                                                     std::string continuation) {
  const auto kept = context.find_last_not_of(' ');
  const std::size_t spaces = kept == std::string::npos ? context.size() : context.size() - kept - 1;
  continuation = context.substr(context.size() - spaces) + continuation;
  context.resize(context.size() - spaces);
  const auto whole = tokenizer.encode(context + continuation);
  auto ctx = tokenizer.encode(context);
  if (ctx.size() > whole.size() || !std::equal(ctx.begin(), ctx.end(), whole.begin())) {
    // the context's last token merged with the continuation's first: the shared prefix is the context
    std::size_t common = 0;
    while (common < ctx.size() && common < whole.size() && ctx[common] == whole[common]) ++common;
    ctx.resize(common);
  }
  return {ctx, std::vector<Token>(whole.begin() + std::ptrdiff_t(ctx.size()), whole.end())};
}

/// sum log p(continuation token | everything before it) under `model` (one sequence; the context is
/// cut from the left to fit max_position_embeddings).
template <class Model>
double continuation_loglik(Model& model, const Tokenizer& tokenizer, const std::string& context, const std::string& continuation) {
  using BE = typename Model::backend;
  auto [ctx, cont] = encode_pair(tokenizer, context, continuation);
  if (cont.empty()) throw milora::value_error("a choice encodes to no tokens: '" + continuation + "'");
  if (ctx.empty()) throw milora::value_error("the question '" + context + "' encodes to no tokens: nothing to condition a choice on");
  const Index limit = model.config().max_position_embeddings + 1;
  if (Index(cont.size()) >= limit)
    throw milora::value_error(milora::detail::concat("a choice of ", cont.size(), " tokens does not fit max_position_embeddings ", limit - 1));
  std::vector<Token> seq = ctx;
  seq.insert(seq.end(), cont.begin(), cont.end());
  if (Index(seq.size()) > limit) seq.erase(seq.begin(), seq.end() - limit);
  const Index n = Index(seq.size()) - 1;
  model.forward(std::span<const Token>(seq.data(), std::size_t(n)), 1, n);
  const Index vocab = model.config().vocab_size, first = n - Index(cont.size());
  const auto logits = BE::to_host(BE::cblock(model.logits(), first, 0, Index(cont.size()), vocab));
  double total = 0;
  for (std::size_t t = 0; t < cont.size(); ++t) {
    const auto* row = logits.data() + t * std::size_t(vocab);
    double mx = row[0];
    for (Index v = 1; v < vocab; ++v) mx = std::max(mx, double(row[v]));
    double sum = 0;
    for (Index v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - mx);
    total += double(row[cont[t]]) - mx - std::log(sum);
  }
  return total;
}

}  // namespace llama
