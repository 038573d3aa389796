// The main demo (examples/compare_inits): its subspace analysis on matrices with a known answer, its
// perplexity against milora-eval's, and the whole pipeline in miniature (tiny model, few steps, one
// seed): every output file produced and well-formed, the pre-trained model cached.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "../io/io_test_util.hpp"
#include "compare_inits/paired.hpp"
#include "compare_inits/subspace.hpp"
#include "compare_inits/task.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "llama_test_util.hpp"

using BE = milora::EigenBackend<double>;
using milora::Index;

TEST_CASE("subspace_stats: updates along W's top / bottom singular directions, and a mix, give the known shares") {
  const Index m = 9, n = 7, r = 2;
  // W0 = U diag(sigma) V^T with random orthonormal U (m x n) and V (n x n), sigma = 7, 6, ..., 1
  const auto U = BE::qr(llama_test::randn<BE>(m, n, 1)).Q, V = BE::qr(llama_test::randn<BE>(n, n, 2)).Q;
  BE::matrix S = BE::zeros(n, n);
  for (Index i = 0; i < n; ++i) S(i, i) = double(n - i);
  const BE::matrix W0 = U * S * V.transpose();
  auto outer = [&](Index i) -> BE::matrix { return U.col(i) * V.col(i).transpose(); };
  // along the top direction: all energy in the top-r subspace, sigma_1 grows by 0.5 (k = 1), u_1 unchanged
  auto st = compare::subspace_stats<BE>(W0, W0 + 0.5 * outer(0), r, 1);
  CHECK(st.top_energy == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(st.bottom_energy == doctest::Approx(0.0).scale(1).epsilon(1e-12));
  CHECK(st.sigma_shift == doctest::Approx(0.5 / 7).epsilon(1e-12));
  CHECK(st.vector_shift == doctest::Approx(0.0).scale(1).epsilon(1e-12));
  // along the smallest: all energy in the bottom-r subspace, the top-2 spectrum untouched
  st = compare::subspace_stats<BE>(W0, W0 + 0.3 * outer(n - 1), r, 2);
  CHECK(st.bottom_energy == doctest::Approx(1.0).epsilon(1e-12));
  CHECK(st.top_energy == doctest::Approx(0.0).scale(1).epsilon(1e-12));
  CHECK(st.sigma_shift == doctest::Approx(0.0).scale(1).epsilon(1e-12));
  // a mix 3 u1 v1^T + 4 u7 v7^T + 12 u4 v4^T: shares 9/169 top, 16/169 bottom
  st = compare::subspace_stats<BE>(W0, W0 + 3 * outer(0) + 4 * outer(n - 1) + 12 * outer(3), r, 1);
  CHECK(st.top_energy == doctest::Approx(9.0 / 169).epsilon(1e-12));
  CHECK(st.bottom_energy == doctest::Approx(16.0 / 169).epsilon(1e-12));
}

TEST_CASE("the reversal task: fixed test problems, disjoint seeded training problems, answer-only metrics") {
  const auto a = compare::ReversalTask::make(300, 50, 1), b = compare::ReversalTask::make(300, 50, 2);
  CHECK(a.test == b.test);
  CHECK(a.train != b.train);
  for (const auto& p : a.train) CHECK(std::find(a.test.begin(), a.test.end(), p) == a.test.end());
  CHECK(compare::problem_text(1, 27) == "abbb=bbba\n");
  CHECK(compare::problem_text(26 * 10 + 16, 25) == "kqaz=zaqk\n");
  CHECK(compare::ReversalTask::tokens({{1, 2}}).size() == 10);
  // a model that cannot know the answer scores ~0 % and a loss near ln(256) on the 4 answer tokens
  using Model = llama::Llama<milora::EigenBackend<float>>;
  auto cfg = llama_test::tiny_config();
  cfg.vocab_size = 256;
  auto model = llama::random_model<Model>(cfg, 3, 0.02);
  const auto [loss, acc] = compare::task_metrics(*model, a.test);
  CHECK(loss == doctest::Approx(std::log(256.0)).epsilon(0.02));
  CHECK(acc < 0.05);
}

namespace {

std::vector<std::vector<std::string>> read_csv(const std::filesystem::path& p) {
  std::vector<std::vector<std::string>> rows;
  std::stringstream in(milora_test::read_file(p));
  for (std::string line; std::getline(in, line);) {
    std::vector<std::string> f;
    std::stringstream ls(line);
    for (std::string x; std::getline(ls, x, ',');) f.push_back(x);
    rows.push_back(f);
  }
  return rows;
}

int run(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace

TEST_CASE("paired_difference: the per-seed difference against the baseline with a Student-t 95% interval, by hand") {
  // differences 1, 2, 3: mean 2, sample std 1, t(2) = 4.303: half-width 4.303 / sqrt(3) = 2.4843
  auto d = compare::paired_difference({11, 12, 13}, {10, 10, 10});
  CHECK(d.mean == doctest::Approx(2));
  CHECK(d.low == doctest::Approx(2 - 2.48434).epsilon(1e-5));
  CHECK(d.high == doctest::Approx(2 + 2.48434).epsilon(1e-5));
  CHECK_FALSE(d.resolved());
  // differences 1.0, 1.1, 0.9 with baselines far apart: the seeds' spread cancels, [0.7516, 1.2484]
  d = compare::paired_difference({3.0, 21.1, 7.9}, {2.0, 20.0, 7.0});
  CHECK(d.low == doctest::Approx(1 - 0.248434).epsilon(1e-5));
  CHECK(d.resolved());
  d = compare::paired_difference({1.0}, {2.0});  // one seed: a difference, no interval
  CHECK(d.mean == -1);
  CHECK_FALSE(d.resolved());
  CHECK(compare::t_quantile_975(1) == 12.706);
  CHECK(compare::t_quantile_975(100) == 1.96);
  CHECK_THROWS_AS(compare::paired_difference({1.0}, {1.0, 2.0}), milora::value_error);
}

TEST_CASE("compare_inits in miniature: every output, well-formed, the cached model is reused, perplexity agrees with milora-eval") {
  milora_test::ScratchDir dir;
  std::string corpus;
  for (int i = 0; i < 120; ++i) corpus += "A fortune a day keeps the bugs away. Number " + std::to_string(i * 37 % 101) + ".\n%\n";
  milora_test::write_file(dir / "corpus.txt", corpus);
  const std::string common = std::string(MILORA_DEMO) + " --corpus " + (dir / "corpus.txt").string() +
                             " --pretrain-steps 30 --pretrain-hidden 32 --pretrain-layers 1 --steps 12 --rank 2 --batch 4"
                             " --seq 24 --eval-batches 100";
  const std::string args = common + " --seeds 1 --out " + (dir / "out").string();
  REQUIRE(run(args + " --task reversal > " + (dir / "stdout.txt").string() + " 2> " + (dir / "stderr.txt").string()) == 0);
  const auto out = dir / "out";
  for (const char* f : {"summary.md", "results.csv", "curves.csv", "pretrained/config.json", "pretrained/model.safetensors"})
    CHECK_MESSAGE(std::filesystem::exists(out / f), f);
  const auto results = read_csv(out / "results.csv");
  REQUIRE(results.size() == 5);  // header + full, lora, pissa, milora
  REQUIRE(results[0].size() == 16);
  CHECK(results[0][5] == "task_loss_before");
  std::vector<std::string> methods;
  for (std::size_t i = 1; i < results.size(); ++i) {
    REQUIRE(results[i].size() == 16);
    methods.push_back(results[i][0]);
    for (std::size_t c = 2; c < 16; ++c) CHECK(std::isfinite(std::stod(results[i][c])));
    CHECK(results[i][5] == results[1][5]);  // the pre-trained model's task loss: one value
    const double top = std::stod(results[i][11]), bottom = std::stod(results[i][12]);
    CHECK(top >= 0);
    CHECK(bottom >= 0);
    CHECK(top + bottom <= 1 + 1e-9);
    CHECK(std::stod(results[i][7]) >= 0);  // accuracy
    CHECK(std::stod(results[i][7]) <= 1);
  }
  CHECK(methods == std::vector<std::string>{"full", "lora", "pissa", "milora"});
  CHECK(std::stol(results[1][3]) > 10 * std::stol(results[2][3]));  // full trains far more parameters than LoRA
  CHECK(results[2][3] == results[3][3]);                            // LoRA, PiSSA, MiLoRA: the same count
  CHECK(read_csv(out / "curves.csv").size() == 1 + 4 * 2);          // steps 10 and 12, four methods
  const std::string summary = milora_test::read_file(out / "summary.md");
  for (const char* m : {"| full |", "| lora |", "| pissa |", "| milora |"}) CHECK_MESSAGE(summary.find(m) != std::string::npos, m);
  if (run("command -v gnuplot > /dev/null 2>&1") == 0)
    for (const char* png : {"loss_curves.png", "learning_vs_forgetting.png", "subspace_energy.png"}) {
      CAPTURE(png);
      const std::string bytes = milora_test::read_file(out / png);
      CHECK(bytes.substr(0, 8) == "\x89PNG\r\n\x1a\n");
    }

  // the perplexity before fine-tuning is the pre-trained model's on the corpus's last 10 %, as milora-eval computes it
  milora_test::write_file(dir / "heldout.txt", corpus.substr(corpus.size() * 9 / 10));
  REQUIRE(run(std::string(MILORA_TOOL_DIR) + "/milora-eval --model " + (out / "pretrained").string() + " --data " +
              (dir / "heldout.txt").string() + " --seq 128 --batch 8 > " + (dir / "eval.txt").string() + " 2>/dev/null") == 0);
  const auto eval = nlohmann::json::parse(milora_test::read_file(dir / "eval.txt"));
  CHECK(std::stod(results[1][8]) == doctest::Approx(eval["perplexity"].get<double>()).epsilon(1e-5));

  // a second run reuses the cached pre-trained model
  REQUIRE(run(args + " --task reversal --methods lora > /dev/null 2> " + (dir / "stderr2.txt").string()) == 0);
  CHECK(milora_test::read_file(dir / "stderr2.txt").find("using the cached pre-trained model") != std::string::npos);

  // a text task (the default kind): held-out loss before and after, no accuracy, and seeds that
  // read the data from different places, so their runs differ
  std::string task;
  for (int i = 0; i < 150; ++i) task += "Ein Spruch am Tag, Nummer " + std::to_string(i * 53 % 97) + ", vertreibt die Fehler.\n%\n";
  milora_test::write_file(dir / "task.txt", task);
  REQUIRE(run(common + " --model " + (out / "pretrained").string() + " --task " + (dir / "task.txt").string() +
              " --methods lora --seeds 2 --out " + (dir / "text").string() +
              " > /dev/null 2> " + (dir / "stderr3.txt").string()) == 0);
  const auto text = read_csv(dir / "text" / "results.csv");
  REQUIRE(text.size() == 3);
  CHECK(text[1][7] == "-1");                // no accuracy for a text task
  CHECK(text[1][6] != text[2][6]);          // seeds 0 and 1 trained on different batches
  milora_test::write_file(dir / "task_heldout.txt", task.substr(task.size() * 9 / 10));
  REQUIRE(run(std::string(MILORA_TOOL_DIR) + "/milora-eval --model " + (out / "pretrained").string() + " --data " +
              (dir / "task_heldout.txt").string() + " --seq 24 --batch 8 > " + (dir / "eval2.txt").string() + " 2>/dev/null") == 0);
  const auto eval2 = nlohmann::json::parse(milora_test::read_file(dir / "eval2.txt"));
  CHECK(std::stod(text[1][5]) == doctest::Approx(eval2["loss"].get<double>()).epsilon(1e-5));
  // a JSON-lines task (prompt/completion): the answers learned and scored, the held-out loss the
  // same as milora-eval's on the file's last 10 % of examples, each seed its own order
  std::string jsonl, heldout;
  for (int i = 0; i < 60; ++i) {
    const std::string line = "{\"prompt\": \"Nummer " + std::to_string(i * 53 % 97) + ": \", \"completion\": \"" +
                             std::to_string(i * 53 % 97 + 1) + "\"}\n";
    jsonl += line;
    if (i >= 54) heldout += line;
  }
  milora_test::write_file(dir / "task.jsonl", jsonl);
  milora_test::write_file(dir / "heldout.jsonl", heldout);
  REQUIRE(run(common + " --model " + (out / "pretrained").string() + " --task " + (dir / "task.jsonl").string() +
              " --methods milora --seeds 2 --out " + (dir / "jsonl").string() + " > /dev/null 2> " + (dir / "stderr4.txt").string()) == 0);
  const auto examples = read_csv(dir / "jsonl" / "results.csv");
  REQUIRE(examples.size() == 3);
  CHECK(examples[1][6] != examples[2][6]);  // two seeds, two orders
  REQUIRE(run(std::string(MILORA_TOOL_DIR) + "/milora-eval --model " + (out / "pretrained").string() + " --data " +
              (dir / "heldout.jsonl").string() + " --seq 24 --batch 8 > " + (dir / "eval3.txt").string() + " 2>/dev/null") == 0);
  const auto eval3 = nlohmann::json::parse(milora_test::read_file(dir / "eval3.txt"));
  CHECK(std::stod(examples[1][5]) == doctest::Approx(eval3["loss"].get<double>()).epsilon(1e-5));
  // --eval-task: every run scored on a multiple-choice task's accuracy, and each method against LoRA
  // seed by seed in the summary
  std::string mc;
  for (int i = 0; i < 6; ++i)
    mc += "{\"question\": \"Nummer " + std::to_string(i) + "\", \"choices\": [\"eins\", \"zwei\", \"drei\"], \"answer\": " +
          std::to_string(i % 3) + "}\n";
  milora_test::write_file(dir / "mc.jsonl", mc);
  REQUIRE(run(common + " --model " + (out / "pretrained").string() + " --task " + (dir / "task.txt").string() +
              " --methods lora,milora --seeds 2 --eval-task " + (dir / "mc.jsonl").string() + " --out " + (dir / "eval").string() +
              " > /dev/null 2> " + (dir / "stderr7.txt").string()) == 0);
  const auto scored = read_csv(dir / "eval" / "results.csv");
  REQUIRE(scored.size() == 5);
  for (std::size_t i = 1; i < 5; ++i) {
    const double acc = std::stod(scored[i][15]);
    CHECK(acc >= 0);
    CHECK(acc <= 1);
    CHECK(std::abs(acc * 6 - std::round(acc * 6)) < 1e-4);  // hits of 6 (the CSV has 6 digits)
  }
  const std::string eval_summary = milora_test::read_file(dir / "eval" / "summary.md");
  CHECK(eval_summary.find("eval-task accuracy") != std::string::npos);
  CHECK(eval_summary.find("Paired differences against LoRA") != std::string::npos);
  const auto milora_row = eval_summary.find("\n| milora | ", eval_summary.find("Paired differences"));
  REQUIRE(milora_row != std::string::npos);
  const std::string row = eval_summary.substr(milora_row, eval_summary.find('\n', milora_row + 1) - milora_row);
  CHECK((row.find("resolved") != std::string::npos));  // "resolved" or "not resolved", per column
  CHECK(std::count(row.begin(), row.end(), '|') == 5);  // method + task loss, ppl, eval-task accuracy
  // the opt-in policies run through the same pipeline; an unknown method is refused before pre-training
  REQUIRE(run(common + " --model " + (out / "pretrained").string() + " --task " + (dir / "task.txt").string() +
              " --methods olora,orthogonal,corda-kpm,eva,lora-ga --seeds 1 --out " + (dir / "more").string() + " > /dev/null 2> " +
              (dir / "stderr5.txt").string()) == 0);
  const auto more = read_csv(dir / "more" / "results.csv");
  REQUIRE(more.size() == 6);
  CHECK(more[1][0] == "olora");
  CHECK(more[2][0] == "orthogonal");
  CHECK(more[3][0] == "corda-kpm");  // calibrated on the task's training data
  CHECK(more[4][0] == "eva");
  CHECK(more[5][0] == "lora-ga");  // from the task's mean gradient
  for (std::size_t i = 1; i < 6; ++i) {
    CHECK(std::stod(more[i][6]) < std::stod(more[i][5]));  // learned something of the task
    CHECK(std::stod(more[i][11]) + std::stod(more[i][12]) <= 1 + 1e-9);
  }
  REQUIRE(run(common + " --methods lora,dora --seeds 1 --out " + (dir / "bad").string() + " > /dev/null 2> " +
              (dir / "stderr6.txt").string()) != 0);
  CHECK(milora_test::read_file(dir / "stderr6.txt").find("unknown method 'dora'") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "bad" / "pretrained"));  // refused before pre-training
  const std::string missing = dir.path.string() + "/no-such-task";
  REQUIRE(run(common + " --seeds 1 --task " + missing + " --out " + (dir / "text").string() + " > /dev/null 2> " + (dir / "stderr4.txt").string()) != 0);
  CHECK(milora_test::read_file(dir / "stderr4.txt").find("task '" + missing + "' does not exist") != std::string::npos);
}
