// The fine-tuning task of compare_inits: write four random letters backwards, "kqzb=bzqk\n", 10
// tokens per problem in the byte vocabulary. It is nothing like the pre-training corpus (English
// fortunes), so what the adapters learn and what the model forgets can be told apart, and a small
// model can learn it in minutes: it is a matter of attending at the right offsets (docs/demo.md says
// why not arithmetic).
#pragma once

#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "llama/kernels.hpp"

namespace compare {

using llama::Index;
using llama::Token;

inline constexpr Index kProblemLength = 10;  // "abcd=dcba\n"
inline constexpr Index kPromptLength = 5;    // "abcd="
inline constexpr Index kAnswerLength = 5;    // "dcba\n"

/// Problem (a, b) is a four-letter word: a in [0, 676) gives its first two letters, b the last two.
inline std::string problem_text(int a, int b) {
  const std::string w = {char('a' + a / 26), char('a' + a % 26), char('a' + b / 26), char('a' + b % 26)};
  return w + "=" + std::string(w.rbegin(), w.rend()) + "\n";
}

struct ReversalTask {
  std::vector<std::pair<int, int>> train, test;

  /// `n_test` problems fixed by the task (the same for every seed), `n_train` others drawn with
  /// `seed`, none of them a test problem.
  static ReversalTask make(std::size_t n_train, std::size_t n_test, unsigned seed) {
    ReversalTask t;
    std::mt19937 test_gen(12345);
    std::uniform_int_distribution<int> d(0, 26 * 26 - 1);
    std::set<std::pair<int, int>> seen;
    while (t.test.size() < n_test) {
      const std::pair<int, int> p{d(test_gen), d(test_gen)};
      if (seen.insert(p).second) t.test.push_back(p);
    }
    std::mt19937 gen(seed);
    while (t.train.size() < n_train) {
      const std::pair<int, int> p{d(gen), d(gen)};
      if (!seen.count(p)) t.train.push_back(p);  // never train on a test problem
    }
    return t;
  }

  static std::vector<Token> tokens(const std::vector<std::pair<int, int>>& problems) {
    std::vector<Token> out;
    for (const auto& [a, b] : problems)
      for (char c : problem_text(a, b)) out.push_back(Token(static_cast<unsigned char>(c)));
    return out;
  }
};

/// Mean loss on the answer tokens of the test problems and the share answered exactly by greedy
/// decoding, each problem on its own (no preceding context).
template <class Model>
std::pair<double, double> task_metrics(Model& model, const std::vector<std::pair<int, int>>& problems) {
  const Index n = Index(problems.size());
  std::vector<Token> in, tg;
  for (const auto& [a, b] : problems) {
    const std::string s = problem_text(a, b);
    for (Index i = 0; i + 1 < kProblemLength; ++i) {
      in.push_back(Token(static_cast<unsigned char>(s[std::size_t(i)])));
      // only the answer is scored: positions from the '=' on predict "dcba\n"
      tg.push_back(i + 1 >= kPromptLength ? Token(static_cast<unsigned char>(s[std::size_t(i + 1)])) : llama::kIgnoreIndex);
    }
  }
  model.forward(in, n, kProblemLength - 1);
  const double loss = model.loss(tg);
  // greedy: feed the prompt, append the argmax for each answer letter
  std::vector<std::vector<Token>> ctx(static_cast<std::size_t>(n));
  for (Index p = 0; p < n; ++p) ctx[std::size_t(p)].assign(in.begin() + p * (kProblemLength - 1), in.begin() + p * (kProblemLength - 1) + kPromptLength);
  for (Index step = 0; step < kAnswerLength - 1; ++step) {
    const Index len = kPromptLength + step;
    std::vector<Token> batch;
    for (const auto& c : ctx) batch.insert(batch.end(), c.begin(), c.end());
    model.forward(batch, n, len);
    const auto& logits = model.logits();
    const Index v = model.config().vocab_size;
    for (Index p = 0; p < n; ++p) {
      const auto* row = logits.data() + (p * len + len - 1) * v;
      ctx[std::size_t(p)].push_back(Token(std::max_element(row, row + v) - row));
    }
  }
  Index correct = 0;
  for (Index p = 0; p < n; ++p) {
    const auto& [a, b] = problems[std::size_t(p)];
    const std::string want = problem_text(a, b).substr(kPromptLength, kAnswerLength - 1);
    std::string got;
    for (Index i = 0; i < kAnswerLength - 1; ++i) got += char(ctx[std::size_t(p)][std::size_t(kPromptLength + i)]);
    correct += got == want;
  }
  return {loss, double(correct) / double(n)};
}

}  // namespace compare
