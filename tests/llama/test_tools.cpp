// milora-finetune, milora-eval and milora-generate end to end on the committed tiny LLaMA
// (tests/data/llama_tiny/model, byte-level vocabulary): a MiLoRA run with checkpoints, a resumed run
// that ends on the same numbers, evaluation of the checkpoint on the original model that matches
// the trainer's held-out loss, generation, and errors as one line with a non-zero exit.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <Eigen/Dense>
#include <nlohmann/json.hpp>

#include "../io/io_test_util.hpp"
#include "llama/calibration.hpp"
#include "llama/data.hpp"
#include "llama/generation.hpp"
#include "llama/tasks.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "milora/init/registry.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/peft.hpp"
#include "milora/version.hpp"

namespace {

const std::filesystem::path kModel = std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny" / "model";

struct Result {
  int status;
  std::string out, err;
  nlohmann::json last_json() const {  // the machine-readable last line
    const auto end = out.find_last_not_of('\n');
    const auto start = out.rfind('\n', end);
    return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1, end - (start == std::string::npos ? 0 : start + 1) + 1));
  }
};

Result run(const std::string& tool, const std::string& args, const milora_test::ScratchDir& dir) {
  const auto out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string cmd = std::string(MILORA_TOOL_DIR) + "/" + tool + " " + args + " > " + out.string() + " 2> " + err.string();
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, milora_test::read_file(out), milora_test::read_file(err)};
}

std::string text(int words) {
  static const char* w[] = {"low", "rank", "adapters", "train", "the", "minor", "singular", "subspace", "of", "each", "weight"};
  std::string s;
  for (int i = 0; i < words; ++i) s += std::string(w[(i * 7 + i / 3) % 11]) + (i % 13 == 12 ? ".\n" : " ");
  return s;
}

}  // namespace

TEST_CASE("milora-finetune / -eval / -generate: train, checkpoint, resume bit for bit, evaluate, generate") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", text(600));
  const std::string common = "--model " + kModel.string() + " --data " + (dir / "train.txt").string() +
                             " --method milora --rank 4 --steps 8 --lr 5e-3 --batch 2 --seq 32 --warmup 2 --save-every 4 --quiet";
  auto r = run("milora-finetune", common + " --out " + (dir / "run").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const auto full = r.last_json();
  CHECK(full["steps"] == 8);
  for (const char* ck : {"run/checkpoint-4/adapter_model.safetensors", "run/checkpoint-8/plain_lora/adapter_config.json",
                         "run/checkpoint-8/trainer_state.json"})
    CHECK_MESSAGE(std::filesystem::exists(dir / ck), ck);

  // the same run again from checkpoint-4 ends on exactly the same losses
  r = run("milora-finetune", common + " --out " + (dir / "run").string() + " --resume " + (dir / "run/checkpoint-4").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.err.find("resumed from") != std::string::npos);
  CHECK(r.last_json()["train_loss"] == full["train_loss"]);
  CHECK(r.last_json()["val_loss"] == full["val_loss"]);

  // evaluating the checkpoint (through plain_lora, on the original model) on the held-out tail
  // gives the trainer's held-out loss; the base model alone does worse
  const std::string train = milora_test::read_file(dir / "train.txt");
  const std::size_t n_val = std::size_t(double(train.size()) * 0.1);
  milora_test::write_file(dir / "val.txt", train.substr(train.size() - n_val));
  r = run("milora-eval", "--model " + kModel.string() + " --adapter " + (dir / "run/checkpoint-8").string() + " --data " +
                             (dir / "val.txt").string() + " --seq 32 --batch 2",
          dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const double adapted = r.last_json()["loss"];
  CHECK(adapted == doctest::Approx(full["val_loss"].get<double>()).epsilon(1e-5));
  r = run("milora-eval", "--model " + kModel.string() + " --data " + (dir / "val.txt").string() + " --seq 32 --batch 2", dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.last_json()["loss"].get<double>() > adapted + 0.1);

  // greedy generation is deterministic and continues the prompt
  const std::string gen = "--model " + kModel.string() + " --adapter " + (dir / "run/checkpoint-8").string() +
                          " --prompt 'low rank' --max-new-tokens 12";
  r = run("milora-generate", gen, dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out.rfind("low rank", 0) == 0);
  CHECK(r.out.size() >= 8 + 12);
  CHECK(run("milora-generate", gen, dir).out == r.out);
  // recomputing the context per token gives the same text; two prompts in one batch, each as alone
  CHECK(run("milora-generate", gen + " --no-kv-cache", dir).out == r.out);
  const auto other = run("milora-generate", gen + " --prompt 'sub space of'", dir);  // --prompt 'low rank' first
  REQUIRE_MESSAGE(other.status == 0, other.err);
  const auto alone = run("milora-generate", "--model " + kModel.string() + " --adapter " + (dir / "run/checkpoint-8").string() +
                                                " --prompt 'sub space of' --max-new-tokens 12", dir);
  CHECK(other.out == r.out + alone.out);
}

// milora-eval --task on hand-built multiple-choice sets whose right answers are known: each choice's
// log-likelihood computed here through the model's own forward and cross-entropy (not the tool's
// code), the gold set to the most likely choice (acc must be 1) or to the least likely (acc 0); and a
// generation set scored by exact match.
TEST_CASE("milora-eval --task: accuracy with a 95% interval on known answers, multiple choice and generation") {
  milora_test::ScratchDir dir;
  using BE = milora::EigenBackend<float>;
  auto model = llama::from_pretrained<llama::Llama<BE>>(milora::io::HFModel(kModel));
  const auto loglik = [&](const std::string& context, const std::string& choice) {  // bytes: one token each
    const std::string whole = context + choice;
    std::vector<llama::Token> in, targets;
    for (std::size_t i = 0; i + 1 < whole.size(); ++i) {
      in.push_back(static_cast<unsigned char>(whole[i]));
      targets.push_back(i + 1 >= context.size() ? llama::Token(static_cast<unsigned char>(whole[i + 1])) : llama::kIgnoreIndex);
    }
    model->forward(in, 1, llama::Index(in.size()));
    return -model->loss(targets) * double(choice.size());
  };
  const std::vector<std::string> questions = {"low rank", "the minor", "singular values of", "adapters train"};
  const std::vector<std::string> choices = {"ab", "rank", "zq"};
  std::string best, worst;
  for (const auto& q : questions) {
    std::vector<double> ll;
    for (const auto& c : choices) ll.push_back(loglik(q, " " + c));
    const auto hi = std::max_element(ll.begin(), ll.end()) - ll.begin(), lo = std::min_element(ll.begin(), ll.end()) - ll.begin();
    best += nlohmann::json{{"question", q}, {"choices", choices}, {"answer", hi}}.dump() + "\n";
    worst += nlohmann::json{{"question", q}, {"choices", choices}, {"answer", lo}}.dump() + "\n";
  }
  milora_test::write_file(dir / "best.jsonl", best);
  milora_test::write_file(dir / "worst.jsonl", worst);
  auto r = run("milora-eval", "--model " + kModel.string() + " --task " + (dir / "best.jsonl").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  auto j = r.last_json();
  CHECK(j["examples"] == 4);
  CHECK(j["acc"]["value"] == 1.0);
  CHECK(j["acc"]["hits"] == 4);
  CHECK(j["acc"]["ci95"][0].get<double>() == doctest::Approx(0.5101).epsilon(1e-3));  // Wilson, 4 of 4
  CHECK(j["acc"]["ci95"][1] == 1.0);
  CHECK(j.contains("acc_norm"));
  r = run("milora-eval", "--model " + kModel.string() + " --task " + (dir / "worst.jsonl").string() + " --limit 3", dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  j = r.last_json();
  CHECK(j["examples"] == 3);
  CHECK(j["acc"]["value"] == 0.0);

  // generation: the tool's exact-match count is the one of the model's greedy answers computed here
  milora_test::write_file(dir / "gen.jsonl", R"({"question": "low rank", "answer": "#### 1"}
{"question": "the minor", "answer": "#### 2"}
)");
  r = run("milora-eval", "--model " + kModel.string() + " --task " + (dir / "gen.jsonl").string() + " --max-new-tokens 4", dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  j = r.last_json();
  CHECK(j["examples"] == 2);
  CHECK(j["exact_match"]["n"] == 2);
  const auto tokenizer = llama::Tokenizer::for_model(kModel, 256);
  std::size_t hits = 0;
  for (const auto& [q, ref] : std::vector<std::pair<std::string, std::string>>{{"low rank", "1"}, {"the minor", "2"}}) {
    const auto text = llama::generate(*model, tokenizer, tokenizer.encode(q), {.max_new_tokens = 4, .stop = {"\n\n"}}).text;
    hits += llama::answers_match(llama::extract_answer(text), ref);
  }
  CHECK(j["exact_match"]["hits"] == hits);
  r = run("milora-eval", "--model " + kModel.string() + " --task " + (dir / "gen.jsonl").string() + " --data " + (dir / "gen.jsonl").string(), dir);
  CHECK(r.status != 0);
}

// Every tool on every config family (tests/data: LLaMA-3.2 with rope_scaling and tied embeddings,
// Qwen2 with q/k/v biases, Mistral with a sliding window, LLaMA with every bias): fine-tune MiLoRA
// a few steps, evaluate the checkpoint (its held-out loss), generate, merge the plain-LoRA form
// into the original model (the merged folder evaluates to the same loss, its biases and config kept),
// and milora-init + milora-convert give the same plain LoRA form the trainer wrote.
TEST_CASE("every tool works on every config family: finetune, eval, generate, init, convert, merge") {
  const std::string targets = "q_proj,k_proj,v_proj,o_proj,up_proj,down_proj";
  for (const std::string name : {"llama32_tiny", "qwen2_tiny", "mistral_tiny", "llama_bias_tiny"}) {
    CAPTURE(name);
    milora_test::ScratchDir dir;
    const auto model = std::filesystem::path(MILORA_TEST_DATA) / name / "model";
    milora_test::write_file(dir / "train.txt", text(400));
    const std::string train = milora_test::read_file(dir / "train.txt");
    milora_test::write_file(dir / "val.txt", train.substr(train.size() - std::size_t(double(train.size()) * 0.1)));
    auto r = run("milora-finetune", "--model " + model.string() + " --data " + (dir / "train.txt").string() +
                                        " --method milora --rank 2 --alpha 4 --targets " + targets + " --steps 4 --lr 5e-3 --batch 2 --seq 16 --quiet --out " +
                                        (dir / "run").string(),
                 dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const auto result = r.last_json();
    const auto ckpt = dir / "run" / "checkpoint-4";
    r = run("milora-eval", "--model " + model.string() + " --adapter " + ckpt.string() + " --data " + (dir / "val.txt").string() +
                               " --seq 16 --batch 2",
            dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const double adapted = r.last_json()["loss"];
    CHECK(adapted == doctest::Approx(result["val_loss"].get<double>()).epsilon(1e-5));

    r = run("milora-generate", "--model " + model.string() + " --adapter " + ckpt.string() + " --prompt 'low rank' --max-new-tokens 6", dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.out.rfind("low rank", 0) == 0);

    r = run("milora-merge", "--model " + model.string() + " --adapter " + (ckpt / "plain_lora").string() + " --out " + (dir / "merged").string(), dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    r = run("milora-eval", "--model " + (dir / "merged").string() + " --data " + (dir / "val.txt").string() + " --seq 16 --batch 2", dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.last_json()["loss"].get<double>() == doctest::Approx(adapted).epsilon(1e-5));
    const milora::io::HFModel original(model), merged(dir / "merged");
    CHECK(merged.config() == original.config());
    for (const auto& t : original.tensor_names())
      if (t.ends_with(".bias")) CHECK(merged.load<float>(t).data == original.load<float>(t).data);

    // milora-init writes the start the trainer used (same seed): converting the trained adapter
    // against it gives the trainer's own plain-LoRA export
    r = run("milora-init", "--model " + model.string() + " --method milora --rank 2 --alpha 4 --targets " + targets + " --out " +
                               (dir / "init").string(),
            dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    r = run("milora-convert", "--initial " + (dir / "init").string() + " --trained " + ckpt.string() + " --out " + (dir / "plain").string(), dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const auto mine = milora::io::load_peft_adapter<float>(dir / "plain"), trainers = milora::io::load_peft_adapter<float>(ckpt / "plain_lora");
    REQUIRE(mine.modules.size() == trainers.modules.size());
    double worst = 0;
    for (const auto& [module, f] : trainers.modules) {
      const auto& g = mine.modules.at(module);
      for (std::size_t i = 0; i < f.A.data.size(); ++i) worst = std::max(worst, double(std::abs(f.A.data[i] - g.A.data[i])));
      for (std::size_t i = 0; i < f.B.data.size(); ++i) worst = std::max(worst, double(std::abs(f.B.data[i] - g.B.data[i])));
    }
    CHECK(worst < 1e-5);
  }
  // Mistral's window: a sequence longer than it is refused, naming it
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", text(400));
  const auto r = run("milora-finetune", "--model " + (std::filesystem::path(MILORA_TEST_DATA) / "mistral_tiny" / "model").string() +
                                            " --data " + (dir / "train.txt").string() + " --rank 2 --steps 1 --batch 1 --seq 64 --quiet --out " +
                                            (dir / "run").string(),
                     dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("exceeds the sliding window of 32 tokens") != std::string::npos);
}

// --dtype bf16: the frozen projections in bf16, everything the run saves in float32 as before. The
// run is its own (resumes bit for bit in bf16, refuses to resume as float32), and its checkpoint is
// an ordinary PEFT folder: milora-eval on the original float32 model gives its held-out loss to
// bf16 precision (2e-2, the bf16 tolerance of docs/cuda.md), as does the float32 run of the same settings, and
// milora-eval / milora-generate --dtype bf16 (the model in bf16, the adapter merged into it) run.
TEST_CASE("milora-finetune --dtype bf16: trains as float32 does to 2e-2, resumes bit for bit, refuses a float32 resume, "
          "its checkpoint evaluates on the float32 model") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", text(600));
  const std::string common = "--model " + kModel.string() + " --data " + (dir / "train.txt").string() +
                             " --method milora --rank 4 --steps 6 --lr 5e-3 --batch 2 --seq 32 --save-every 3 --quiet";
  auto r = run("milora-finetune", common + " --dtype bf16 --out " + (dir / "bf16").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const auto bf16 = r.last_json();
  r = run("milora-finetune", common + " --out " + (dir / "f32").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const auto f32 = r.last_json();
  const double v16 = bf16["val_loss"], v32 = f32["val_loss"];
  CAPTURE(v16);
  CAPTURE(v32);
  CHECK(std::abs(v16 - v32) <= 2e-2 * v32);
  CHECK(v16 != v32);  // bf16 did happen

  r = run("milora-finetune", common + " --dtype bf16 --out " + (dir / "bf16").string() + " --resume " +
                             (dir / "bf16/checkpoint-3").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.last_json()["val_loss"] == bf16["val_loss"]);
  r = run("milora-finetune", common + " --out " + (dir / "bf16").string() + " --resume " + (dir / "bf16/checkpoint-3").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("is from another run") != std::string::npos);

  const std::string train = milora_test::read_file(dir / "train.txt");
  milora_test::write_file(dir / "val.txt", train.substr(train.size() - std::size_t(double(train.size()) * 0.1)));
  r = run("milora-eval", "--model " + kModel.string() + " --adapter " + (dir / "bf16/checkpoint-6").string() + " --data " +
                             (dir / "val.txt").string() + " --seq 32 --batch 2",
          dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const double eval32 = r.last_json()["loss"];
  CHECK(std::abs(eval32 - v16) <= 2e-2 * v16);
  // and on the model in bf16 (--dtype bf16 of milora-eval: the adapter merged into bf16 weights)
  r = run("milora-eval", "--model " + kModel.string() + " --adapter " + (dir / "bf16/checkpoint-6").string() + " --data " +
                             (dir / "val.txt").string() + " --seq 32 --batch 2 --dtype bf16",
          dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const double eval16 = r.last_json()["loss"];
  CHECK(std::abs(eval16 - v16) <= 2e-2 * v16);
  CHECK(eval16 != eval32);
  r = run("milora-generate", "--model " + kModel.string() + " --adapter " + (dir / "bf16/checkpoint-6").string() +
                                 " --prompt 'low rank' --max-new-tokens 6 --dtype bf16",
          dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out.rfind("low rank", 0) == 0);
}

// The checkpoint's plain_lora export exists exactly for the methods whose init changed the base
// (OLoRA does, orthogonal and MiCA do not), and milora-eval of the checkpoint on the original model gives
// the trainer's held-out loss for both: the export is right whichever way the init went.
TEST_CASE("milora-finetune --method olora / orthogonal / mica / corda-kpm / corda-ipm / eva / lora-ga: train, checkpoint, resume, "
          "evaluate on "
          "the original model") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", text(600));
  const std::string train = milora_test::read_file(dir / "train.txt");
  milora_test::write_file(dir / "val.txt", train.substr(train.size() - std::size_t(double(train.size()) * 0.1)));
  for (const char* method : {"olora", "orthogonal", "mica", "corda-kpm", "corda-ipm", "eva", "lora-ga"}) {
    CAPTURE(method);
    const auto out = dir / method;
    const std::string common = "--model " + kModel.string() + " --data " + (dir / "train.txt").string() + " --method " +
                               method + " --rank 4 --steps 6 --lr 5e-3 --batch 2 --seq 32 --save-every 3 --quiet --out " +
                               out.string();
    auto r = run("milora-finetune", common, dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const auto result = r.last_json();
    // resuming from step 3 ends on the same numbers (MiCA's optimizer state holds lora_A only)
    r = run("milora-finetune", common + " --resume " + (out / "checkpoint-3").string(), dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.last_json()["val_loss"] == result["val_loss"]);
    const bool residual = std::string(method) == "olora" || std::string(method) == "lora-ga" || std::string(method).starts_with("corda");
    CHECK(std::filesystem::exists(out / "checkpoint-6" / "plain_lora") == residual);
    r = run("milora-eval", "--model " + kModel.string() + " --adapter " + (out / "checkpoint-6").string() + " --data " +
                               (dir / "val.txt").string() + " --seq 32 --batch 2",
            dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    CHECK(r.last_json()["loss"].get<double>() == doctest::Approx(result["val_loss"].get<double>()).epsilon(1e-5));
    if (std::string(method) == "mica") {  // B was frozen: after 6 AdamW steps still orthonormal, A trained
      const auto a = milora::io::load_peft_adapter<float>(out / "checkpoint-6");
      for (const auto& [module, f] : a.modules) {
        CAPTURE(module);
        Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> b(f.B.data.data(), f.B.rows, f.B.cols);
        CHECK((b.transpose() * b - Eigen::MatrixXf::Identity(f.B.cols, f.B.cols)).norm() <= 1e-5f);
        CHECK(Eigen::Map<const Eigen::VectorXf>(f.A.data.data(), Eigen::Index(f.A.data.size())).norm() > 0);
      }
    }
  }
}

TEST_CASE("milora-init --method corda-kpm / eva / lora-ga with --calibration-data on a LLaMA folder: the factors the model "
          "computes, W' + s*B*A = W in the files, and --calibration-data required / refused with one error line") {
  using BE = milora::EigenBackend<float>;
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto mat = [](const milora::io::HostMatrix<float>& m) { return Mat(Eigen::Map<const Mat>(m.data.data(), m.rows, m.cols)); };
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "cal.txt", text(400));
  const milora::io::HFModel base(kModel);
  for (const char* method : {"corda-kpm", "eva", "lora-ga"}) {
    CAPTURE(method);
    const auto out = dir / method;
    auto r = run("milora-init", "--model " + kModel.string() + " --method " + method + " --rank 2 --alpha 4 --targets q_proj,down_proj" +
                                    " --calibration-data " + (dir / "cal.txt").string() + " --calibration-batches 2 --batch 2 --seq 16 --out " +
                                    out.string(),
                 dir);
    REQUIRE_MESSAGE(r.status == 0, r.err);
    const auto adapter = milora::io::load_peft_adapter<float>(out);
    CHECK(adapter.metadata.at("milora.method") == method);
    CHECK(adapter.metadata.at("milora.calibration").find("2 batches of 2 x 16 tokens") != std::string::npos);
    REQUIRE(adapter.modules.size() == 2 * std::size_t(base.config()["num_hidden_layers"].get<int>()));
    const bool residual = std::string(method) != "eva";
    CHECK(std::filesystem::exists(out / "residual") == residual);

    // The same model, calibrated here on the same tokens, gives the same factors (the tool's wiring:
    // module names, alpha, batches), and the files keep the contract W' + s*B*A = W.
    auto check_against = [&]<class Init>() {
      auto model = llama::from_pretrained<llama::Llama<BE>>(milora::io::HFModel(kModel));
      const auto tokens = llama::load_tokens(dir / "cal.txt", llama::Tokenizer::for_model(kModel, model->config().vocab_size),
                                             model->config().vocab_size);
      llama::add_adapters_calibrated<Init>(*model, {"q_proj", "down_proj"}, {.rank = 2, .alpha = 4}, tokens, 2, 16, 2);
      for (auto* p : model->adapted()) {
        CAPTURE(p->module);
        const auto& f = adapter.modules.at(p->module);
        CHECK((mat(f.A) - p->adapter->A()).norm() <= 1e-6f * std::max(1.0f, p->adapter->A().norm()));
        CHECK((mat(f.B) - p->adapter->B()).norm() <= 1e-6f * std::max(1.0f, p->adapter->B().norm()));
        const Mat w = mat(base.load<float>(p->module + ".weight"));
        const Mat w1 = residual ? mat(milora::io::HFModel(out / "residual").load<float>(p->module + ".weight")) : w;
        CHECK((w1 + 2.0f * mat(f.B) * mat(f.A) - w).norm() <= 1e-5f * w.norm());  // s = alpha / r = 2
      }
    };
    if (std::string(method) == "corda-kpm") check_against.operator()<milora::ContextOrientedSVD<BE>>();
    else if (std::string(method) == "eva") check_against.operator()<milora::ActivationPCA<BE>>();
    else check_against.operator()<milora::GradientApproximation<BE>>();
  }
  auto r = run("milora-init", "--model " + kModel.string() + " --method eva --rank 2 --out " + (dir / "none").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("--method eva needs --calibration-data") != std::string::npos);
  r = run("milora-init", "--model " + kModel.string() + " --method milora --rank 2 --calibration-data " + (dir / "cal.txt").string() +
                             " --out " + (dir / "none").string(),
          dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("not milora") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir / "none"));
}

TEST_CASE("milora-finetune --device cuda: on a GPU the CPU run's numbers (float, 1e-4), a resume across devices, "
          "without one, one error line saying why, and nothing written") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", text(600));
  const std::string common = "--model " + kModel.string() + " --data " + (dir / "train.txt").string() +
                             " --method milora --rank 4 --steps 4 --lr 5e-3 --batch 2 --seq 32 --save-every 2 --quiet";
  auto cpu = run("milora-finetune", common + " --out " + (dir / "cpu").string(), dir);
  REQUIRE_MESSAGE(cpu.status == 0, cpu.err);
  auto gpu = run("milora-finetune", common + " --device cuda --out " + (dir / "gpu").string(), dir);
  if (gpu.status != 0) {  // CI: nvcc but no GPU, or a build without the CUDA toolkit
    CHECK((gpu.err.find("--device cuda: no usable CUDA device") != std::string::npos ||
           gpu.err.find("built without the CUDA toolkit") != std::string::npos));
    CHECK(std::count(gpu.err.begin(), gpu.err.end(), '\n') == 1);
    CHECK_FALSE(std::filesystem::exists(dir / "gpu"));
    MESSAGE("no CUDA device here: checked the refusal only (", gpu.err.substr(0, gpu.err.size() - 1), ")");
    return;
  }
  const double want = cpu.last_json()["val_loss"].get<double>();
  CHECK(gpu.last_json()["val_loss"].get<double>() == doctest::Approx(want).epsilon(1e-4));
  // the checkpoint of the CPU run, resumed on the GPU, ends on the same numbers
  const auto moved = run("milora-finetune", common + " --device cuda --out " + (dir / "cpu").string() + " --resume " +
                                                (dir / "cpu" / "checkpoint-2").string(),
                         dir);
  REQUIRE_MESSAGE(moved.status == 0, moved.err);
  CHECK(moved.last_json()["val_loss"].get<double>() == doctest::Approx(want).epsilon(1e-4));
  // TF32 products (10-bit mantissa inputs) after the init: the same run to 1e-2
  const auto tf32 = run("milora-finetune", common + " --device cuda --tf32 --out " + (dir / "tf32").string(), dir);
  REQUIRE_MESSAGE(tf32.status == 0, tf32.err);
  CHECK(tf32.last_json()["val_loss"].get<double>() == doctest::Approx(want).epsilon(1e-2));
}

TEST_CASE("milora-eval / milora-generate --device cuda: on a GPU the CPU's loss (float, 1e-4) and greedy tokens, "
          "without one, one error line saying why") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "val.txt", text(300));
  const std::string eval = "--model " + kModel.string() + " --data " + (dir / "val.txt").string() + " --seq 32 --batch 2";
  const std::string gen = "--model " + kModel.string() + " --prompt 'low rank' --max-new-tokens 6";
  const auto cpu_eval = run("milora-eval", eval, dir), cpu_gen = run("milora-generate", gen, dir);
  REQUIRE_MESSAGE(cpu_eval.status == 0, cpu_eval.err);
  REQUIRE_MESSAGE(cpu_gen.status == 0, cpu_gen.err);
  const auto gpu_eval = run("milora-eval", eval + " --device cuda", dir), gpu_gen = run("milora-generate", gen + " --device cuda", dir);
  if (gpu_eval.status != 0 || gpu_gen.status != 0) {  // CI: nvcc but no GPU, or a build without the CUDA toolkit
    for (const auto* r : {&gpu_eval, &gpu_gen}) {
      CHECK(r->status == 1);
      CHECK((r->err.find("--device cuda: no usable CUDA device") != std::string::npos ||
             r->err.find("built without the CUDA toolkit") != std::string::npos));
      CHECK(std::count(r->err.begin(), r->err.end(), '\n') == 1);
      CHECK(r->out.empty());
    }
    MESSAGE("no CUDA device here: checked the refusal only (", gpu_eval.err.substr(0, gpu_eval.err.size() - 1), ")");
    return;
  }
  CHECK(gpu_eval.last_json()["loss"].get<double>() == doctest::Approx(cpu_eval.last_json()["loss"].get<double>()).epsilon(1e-4));
  CHECK(gpu_eval.last_json()["tokens"] == cpu_eval.last_json()["tokens"]);
  // Greedy decoding on logits equal to 1e-4: the same tokens unless two logits of the tiny model
  // tie to that precision (six tokens keep the chance of such a tie small).
  CHECK(gpu_gen.out == cpu_gen.out);
}

TEST_CASE("milora-generate --top-probs: each step's most likely tokens, the greedy one first, probabilities of the model's softmax") {
  milora_test::ScratchDir dir;
  const auto r = run("milora-generate", "--model " + kModel.string() + " --prompt 'low rank' --max-new-tokens 5 --top-probs 3", dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const auto j = r.last_json();
  REQUIRE(j["top_probs"].size() == 5);
  // the model's own logits for the first step, softmax in double here
  using M = llama::Llama<milora::EigenBackend<double>>;
  auto model = llama::from_pretrained<M>(milora::io::HFModel(kModel));
  const auto tokenizer = llama::Tokenizer::for_model(kModel, model->config().vocab_size);
  const auto ids = tokenizer.encode("low rank");
  model->forward(ids, 1, milora::Index(ids.size()));
  const auto logits = milora::EigenBackend<double>::to_host(model->logits());
  const std::size_t v = std::size_t(model->config().vocab_size), last = (ids.size() - 1) * v;
  double top = -1e300, sum = 0;
  for (std::size_t k = 0; k < v; ++k) top = std::max(top, logits[last + k]);
  for (std::size_t k = 0; k < v; ++k) sum += std::exp(logits[last + k] - top);
  for (std::size_t i = 0; i < 5; ++i) {
    const auto& step = j["top_probs"][i];
    REQUIRE(step.size() == 3);
    CHECK(step[0][0] == j["tokens"][i]);  // greedy: the most likely token is the one taken
    CHECK(step[0][1].get<double>() >= step[1][1].get<double>());
    CHECK(step[1][1].get<double>() >= step[2][1].get<double>());
  }
  for (std::size_t k = 0; k < 3; ++k) {
    const auto id = j["top_probs"][0][k][0].get<std::size_t>();
    CHECK(j["top_probs"][0][k][1].get<double>() == doctest::Approx(std::exp(logits[last + id] - top) / sum).epsilon(1e-5));
  }
}

TEST_CASE("milora-convert / milora-merge --format gguf: a MiLoRA adapter to GGUF and back to PEFT unchanged, and what llama.cpp could not load is refused") {
  milora_test::ScratchDir dir;
  const auto model = std::filesystem::path(MILORA_TEST_DATA) / "llama_bias_tiny" / "model";
  const std::string targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
  auto r = run("milora-init", "--model " + model.string() + " --method milora --rank 2 --alpha 4 --targets " + targets + " --out " + (dir / "init").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  auto trained = milora::io::load_peft_adapter<float>(dir / "init");
  for (auto& [module, f] : trained.modules)
    for (std::size_t i = 0; i < f.B.data.size(); ++i) f.B.data[i] += 0.01f * float(i % 7);
  milora::io::save_peft_adapter(trained, dir / "trained");
  r = run("milora-convert", "--initial " + (dir / "init").string() + " --trained " + (dir / "trained").string() + " --format gguf --base " +
                                model.string() + " --out " + (dir / "a.gguf").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  r = run("milora-convert", "--trained " + (dir / "a.gguf").string() + " --base " + model.string() + " --out " + (dir / "back").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  r = run("milora-convert", "--initial " + (dir / "init").string() + " --trained " + (dir / "trained").string() + " --out " + (dir / "plain").string(), dir);
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const auto plain = milora::io::load_peft_adapter<float>(dir / "plain"), back = milora::io::load_peft_adapter<float>(dir / "back");
  CHECK(back.config.r == plain.config.r);
  CHECK(back.config.scale() == doctest::Approx(plain.config.scale()).epsilon(1e-6));
  REQUIRE(back.modules.size() == plain.modules.size());
  for (const auto& [module, f] : plain.modules) {
    CHECK(back.modules.at(module).A.data == f.A.data);  // F32 both ways, rows of q / k permuted and back
    CHECK(back.modules.at(module).B.data == f.B.data);
  }
  // refused, each with one line and no output: no --base; an output that exists; a model without a
  // tokenizer (llama.cpp needs one in the GGUF); a GGUF adapter for another architecture
  r = run("milora-convert", "--initial " + (dir / "init").string() + " --trained " + (dir / "trained").string() + " --format gguf --out " +
                                (dir / "b.gguf").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("GGUF needs --base") != std::string::npos);
  r = run("milora-convert", "--trained " + (dir / "a.gguf").string() + " --base " + model.string() + " --out " + (dir / "back").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("exists") != std::string::npos);
  r = run("milora-merge", "--model " + model.string() + " --format gguf --out " + (dir / "m.gguf").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("has no tokenizer.json or tokenizer.model, which llama.cpp needs") != std::string::npos);
  CHECK(!std::filesystem::exists(dir / "m.gguf"));
  r = run("milora-convert", "--trained " + (dir / "a.gguf").string() + " --base " +
                                (std::filesystem::path(MILORA_TEST_DATA) / "qwen2_tiny" / "model").string() + " --out " + (dir / "q").string(), dir);
  CHECK(r.status != 0);
  CHECK(r.err.find("is for architecture 'llama', the model is 'qwen2'") != std::string::npos);
  CHECK(!std::filesystem::exists(dir / "q"));
}

TEST_CASE("milora-finetune / -eval: bad input is one error line and a non-zero exit") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "short.txt", "too short");
  milora_test::write_file(dir / "bad.u32", "abc");
  struct Case {
    std::string tool, args, message;
  };
  const std::string m = "--model " + kModel.string();
  const Case cases[] = {
      {"milora-finetune", m + " --data " + (dir / "short.txt").string() + " --seq 32 --out " + (dir / "o").string(),
       "has 9 tokens; a batch of 4 x 32 needs 129"},
      {"milora-finetune", m + " --data " + (dir / "short.txt").string() + " --targets q_proj,qkv --seq 2 --out " + (dir / "o").string(),
       "'qkv' is not a LLaMA projection"},
      {"milora-finetune", m + " --data " + (dir / "short.txt").string() + " --seq 100 --batch 1 --val-fraction 0 --out " + (dir / "o").string(),
       "a batch of 1 x 100 needs 101"},
      {"milora-finetune", m + " --data " + (dir / "short.txt").string() + " --tf32 --out " + (dir / "o").string(),
       "--tf32 needs --device cuda"},
      {"milora-eval", m + " --data " + (dir / "bad.u32").string(), "has 3 bytes, not a multiple of 4"},
      {"milora-eval", m + " --adapter " + (std::filesystem::path(MILORA_TEST_DATA) / "llama_tiny").string() + " --data " +
                          (dir / "short.txt").string(),
       "adapter_config.json"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.args);
    const auto r = run(c.tool, c.args, dir);
    CHECK(r.status == 1);
    CHECK_MESSAGE(r.err.find(c.message) != std::string::npos, r.err);
    const auto e = r.err.find(c.tool + ": error: ");  // one error line, the last one
    CHECK(e != std::string::npos);
    CHECK(r.err.find('\n', e) == r.err.size() - 1);
  }
  CHECK_FALSE(std::filesystem::exists(dir / "o" / "checkpoint-1000"));
  CHECK(run("milora-finetune", "--help", dir).out.find("--resume") != std::string::npos);
}

TEST_CASE("every tool answers --version with its name and milora's version, and lists every registered method in --help") {
  milora_test::ScratchDir dir;
  for (const char* tool : {"milora-init", "milora-convert", "milora-merge", "milora-finetune", "milora-eval", "milora-generate"}) {
    CAPTURE(std::string(tool));
    const auto r = run(tool, "--version", dir);
    CHECK(r.status == 0);
    CHECK(r.out == std::string(tool) + " " + MILORA_VERSION_STRING + "\n");
  }
  for (const char* tool : {"milora-init", "milora-finetune"}) {
    CAPTURE(std::string(tool));
    const auto r = run(tool, "--help", dir);
    CHECK(r.status == 0);
    for (const auto& m : milora::init_methods<milora::EigenBackend<float>>()) CHECK(r.out.find(std::string(m.name)) != std::string::npos);
  }
}
