// Task accuracy (llama/tasks.hpp) and generation (llama/generation.hpp): the answer extraction and
// number comparison of GSM8K-style exact match, Wilson intervals against hand-computed values,
// acc / acc_norm on hand-built sets whose right answers are known, a choice's log-likelihood
// against the model's own cross-entropy, transformers' sampling processors against their
// definitions, reproducible draws, and stop strings.
#include <doctest/doctest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "../io/io_test_util.hpp"
#include "llama/generation.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "llama/tasks.hpp"

namespace {

using TaskBE = milora::EigenBackend<float>;
using TaskModel = llama::Llama<TaskBE>;

std::unique_ptr<TaskModel> tiny_golden_model() {
  return llama::from_pretrained<TaskModel>(milora::io::HFModel(std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny" / "model"));
}

}  // namespace

TEST_CASE("exact match: GSM8K's '#### n', the last number otherwise, numbers compared as numbers") {
  CHECK(llama::extract_answer("She pays 3 * 4 = 12 dollars.\n#### 12") == "12");
  CHECK(llama::extract_answer("#### 1,234\nmore text") == "1,234");
  CHECK(llama::extract_answer("The answer is 7, not 8.5 or -3.") == "-3");
  CHECK(llama::extract_answer("so 1,000.5 in all") == "1,000.5");
  CHECK(llama::extract_answer("  yes \n") == "yes");
  CHECK(llama::answers_match("1,234", "1234"));
  CHECK(llama::answers_match("$1234.", "1234.0"));
  CHECK(llama::answers_match("-3", "-3.00"));
  CHECK_FALSE(llama::answers_match("12", "13"));
  CHECK_FALSE(llama::answers_match("1.2.3", "1.2"));
  CHECK(llama::answers_match(" Paris ", "Paris"));
  CHECK_FALSE(llama::answers_match("paris", "Paris"));
  CHECK_FALSE(llama::parse_number("12a").has_value());
  CHECK_FALSE(llama::parse_number("-").has_value());
}

TEST_CASE("Proportion: lm-evaluation-harness's stderr and the Wilson 95% interval, checked by hand") {
  // 5 of 10: p = 0.5, stderr sqrt(0.25 / 9) = 1/6; Wilson: centre 0.5, half-width
  // z / (1 + z^2/10) * sqrt(0.025 + z^2/400) = 0.26340
  const auto half = llama::Proportion::of(5, 10);
  CHECK(half.value == 0.5);
  CHECK(half.stderr_ == doctest::Approx(1.0 / 6.0).epsilon(1e-12));
  CHECK(half.low == doctest::Approx(0.5 - 0.263402).epsilon(1e-5));
  CHECK(half.high == doctest::Approx(0.5 + 0.263402).epsilon(1e-5));
  // 0 of 10: the interval [0, z^2 / (n + z^2)] = [0, 0.27753], not empty
  const auto none = llama::Proportion::of(0, 10);
  CHECK(none.low == 0);
  CHECK(none.high == doctest::Approx(0.277533).epsilon(1e-5));
  const auto all = llama::Proportion::of(10, 10);
  CHECK(all.high == 1);
  CHECK(all.low == doctest::Approx(1 - 0.277533).epsilon(1e-5));
}

TEST_CASE("read_task: multiple choice and generation files, and bad records named by line") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "mc.jsonl", R"({"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}
{"query": "Sky:", "choices": ["blue", "green", "red"], "label": 0, "target_delimiter": ""}
)");
  const auto mc = llama::read_task(dir / "mc.jsonl");
  REQUIRE(mc.choice.size() == 2);
  CHECK(mc.choice[0].continuations == std::vector<std::string>{" 3", " 4"});
  CHECK(mc.choice[0].gold == 1);
  CHECK(mc.choice[1].continuations[2] == "red");
  milora_test::write_file(dir / "gen.jsonl", R"({"question": "Q: 6 * 7?\nA:", "answer": "6 * 7 = 42\n#### 42"}
)");
  const auto gen = llama::read_task(dir / "gen.jsonl");
  REQUIRE(gen.generation.size() == 1);
  CHECK(gen.generation[0].reference == "42");
  const auto refused = [&](const std::string& body, const char* message) {
    milora_test::write_file(dir / "bad.jsonl", body);
    CAPTURE(body);
    CHECK_THROWS_WITH_AS(llama::read_task(dir / "bad.jsonl"), doctest::Contains(message), milora::format_error);
  };
  refused("{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 1}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 2}\n",
          "bad.jsonl' line 2: \"answer\" (or \"label\", \"gold\") must be the index of a choice, 0 to 1");
  refused("{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n", "line 1: \"choices\" must be a list of at least two strings");
  refused("{\"choices\": [\"a\", \"b\"], \"answer\": 0}\n", "line 1: no \"question\"");
  refused("{\"question\": \"q\", \"answer\": \"1\"}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n",
          "line 2: multiple choice after generation examples");
  refused("not json\n", "line 1: not JSON");
}

TEST_CASE("score_choices: acc takes the most likely choice, acc_norm the most likely per character (known answers)") {
  // log-likelihoods by hand: " a" -2 (per char -1), " bbbbbbbb" -4.5 (-0.5), " cc" -9 (-3)
  const std::map<std::string, double> ll = {{" a", -2.0}, {" bbbbbbbb", -4.5}, {" cc", -9.0}};
  const auto loglik = [&](const std::string&, const std::string& c) { return ll.at(c); };
  std::vector<llama::ChoiceExample> set = {{"q1", {" a", " bbbbbbbb", " cc"}, 0},   // acc right, acc_norm wrong
                                           {"q2", {" a", " bbbbbbbb", " cc"}, 1},   // acc wrong, acc_norm right
                                           {"q3", {" cc", " a"}, 1},                // both right
                                           {"q4", {" cc", " a"}, 0}};               // both wrong
  const auto s = llama::score_choices(set, loglik);
  CHECK(s.acc.hits == 2);
  CHECK(s.acc_norm.hits == 2);
  set.resize(1);
  CHECK(llama::score_choices(set, loglik).acc.value == 1.0);
  CHECK(llama::score_choices(set, loglik).acc_norm.value == 0.0);
  // generation: exact match of what a generator writes
  const std::vector<llama::GenerationExample> gen = {{"a", "42"}, {"b", "7"}, {"c", "x"}};
  const std::map<std::string, std::string> written = {{"a", "6 * 7 = 42."}, {"b", "#### 7.0"}, {"c", "#### y"}};
  const auto em = llama::score_generation(gen, [&](const std::string& p) { return written.at(p); });
  CHECK(em.hits == 2);
  CHECK(em.n == 3);
}

TEST_CASE("continuation_loglik: the sum of the choice tokens' log-probabilities, as the model's own cross-entropy computes it") {
  auto model = tiny_golden_model();
  const auto tokenizer = llama::Tokenizer::for_model(std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny" / "model", 256);
  for (const auto& [context, choice] : std::vector<std::pair<std::string, std::string>>{{"The sky is", " blue"}, {"2 + 2 = ", "4"}}) {
    CAPTURE(context);
    const double ll = llama::continuation_loglik(*model, tokenizer, context, choice);
    // independently: the whole text through forward + loss, targets ignored except the choice's bytes
    std::string ctx = context, cont = choice;
    while (!ctx.empty() && ctx.back() == ' ') cont.insert(cont.begin(), ' '), ctx.pop_back();  // lm-eval's space move
    const auto whole = tokenizer.encode(ctx + cont);
    const std::vector<llama::Token> in(whole.begin(), whole.end() - 1);
    std::vector<llama::Token> targets(whole.begin() + 1, whole.end());
    for (std::size_t i = 0; i + cont.size() < targets.size(); ++i) targets[i] = llama::kIgnoreIndex;
    model->forward(in, 1, llama::Index(in.size()));
    const double mean = model->loss(targets);
    CHECK(ll == doctest::Approx(-mean * double(cont.size())).epsilon(1e-5));
    CHECK(ll < 0);
  }
  CHECK_THROWS_WITH_AS(llama::continuation_loglik(*model, tokenizer, "", "x"), doctest::Contains("encodes to no tokens"), milora::value_error);
}

TEST_CASE("choose_next: greedy, repetition penalty, top-k, top-p as transformers defines them, draws reproducible from the seed") {
  const std::vector<float> logits = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  llama::GenerationOptions o;
  CHECK(llama::choose_next(logits, {}, o, 0) == 0);
  // the penalty divides a seen positive logit and multiplies a seen negative one
  const std::vector<float> signed_logits = {2.0f, 1.5f, -1.0f};
  o.repetition_penalty = 2.0;
  const std::vector<llama::Token> seen = {0};
  CHECK(llama::choose_next(signed_logits, seen, o, 0) == 1);  // 2 / 2 = 1 < 1.5
  const std::vector<float> negative = {-1.0f, -1.5f};
  CHECK(llama::choose_next(negative, seen, o, 0) == 1);       // -1 * 2 = -2 < -1.5
  o = {};
  o.temperature = 1;
  o.seed = 7;
  // frequencies of 20000 draws (one counter each) within 4 standard errors of the probabilities
  auto frequencies = [&](const llama::GenerationOptions& opt) {
    std::vector<double> f(4, 0);
    for (std::uint64_t k = 0; k < 20000; ++k) f[std::size_t(llama::choose_next(logits, {}, opt, k))] += 1.0 / 20000;
    return f;
  };
  const auto all = frequencies(o);
  for (int i = 0; i < 4; ++i) {
    const double p = std::vector<double>{0.4, 0.3, 0.2, 0.1}[std::size_t(i)];
    CHECK(std::abs(all[std::size_t(i)] - p) < 4 * std::sqrt(p * (1 - p) / 20000));
  }
  // top_p 0.5: the most likely tokens until 0.5 is reached: {0.4, 0.3}, renormalised to 4/7, 3/7
  // (transformers removes the tokens whose ascending cumulative probability is <= 1 - top_p: 0.1, 0.2)
  o.top_p = 0.5;
  const auto nucleus = frequencies(o);
  CHECK(nucleus[2] == 0);
  CHECK(nucleus[3] == 0);
  CHECK(std::abs(nucleus[0] - 4.0 / 7) < 4 * std::sqrt(4.0 / 7 * 3.0 / 7 / 20000));
  o.top_p = 1;
  o.top_k = 2;
  CHECK(frequencies(o)[2] == 0);
  // the same seed and counter give the same token; another seed a different sequence
  o.top_k = 0;
  std::vector<llama::Token> a, b, c;
  for (std::uint64_t k = 0; k < 64; ++k) {
    a.push_back(llama::choose_next(logits, {}, o, k));
    b.push_back(llama::choose_next(logits, {}, o, k));
    o.seed = 8;
    c.push_back(llama::choose_next(logits, {}, o, k));
    o.seed = 7;
  }
  CHECK(a == b);
  CHECK(a != c);
  o.top_p = 0;
  CHECK_THROWS_WITH_AS(o.validate(), "top_p 0 must be in (0, 1]", milora::value_error);
}

TEST_CASE("generate: greedy is deterministic, sampling is reproducible from the seed, a stop string cuts the text") {
  auto model = tiny_golden_model();
  const auto tokenizer = llama::Tokenizer::for_model(std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny" / "model", 256);
  llama::GenerationOptions o;
  o.max_new_tokens = 12;
  const auto prompt = tokenizer.encode("low rank");
  const auto greedy = llama::generate(*model, tokenizer, prompt, o);
  CHECK(greedy.tokens.size() == 12);
  CHECK(greedy.stopped_by == "length");
  CHECK(llama::generate(*model, tokenizer, prompt, o).tokens == greedy.tokens);
  // each greedy token is the argmax of the model's logits at its position (full recomputation)
  std::vector<llama::Token> all = prompt;
  all.insert(all.end(), greedy.tokens.begin(), greedy.tokens.end());
  model->forward(std::span<const llama::Token>(all.data(), all.size() - 1), 1, llama::Index(all.size() - 1));
  const auto logits = TaskBE::to_host(model->logits());
  for (std::size_t t = prompt.size() - 1; t + 1 < all.size(); ++t) {
    const float* row = logits.data() + t * 256;
    CHECK(all[t + 1] == llama::Token(std::max_element(row, row + 256) - row));
  }
  // the text stops before the first occurrence of a stop string taken from the greedy text
  const std::string stop = greedy.text.substr(5, 2);
  o.stop = {stop};
  const auto cut = llama::generate(*model, tokenizer, prompt, o);
  CHECK(cut.stopped_by == "stop");
  CHECK(cut.text == greedy.text.substr(0, greedy.text.find(stop)));
  o.stop.clear();
  o.temperature = 1.0;
  o.top_p = 0.9;
  o.seed = 3;
  const auto s1 = llama::generate(*model, tokenizer, prompt, o), s2 = llama::generate(*model, tokenizer, prompt, o);
  CHECK(s1.tokens == s2.tokens);
  o.seed = 4;
  CHECK(llama::generate(*model, tokenizer, prompt, o).tokens != s1.tokens);
}
