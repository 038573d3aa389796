// Faults: a fine-tuning run killed (SIGKILL) at random moments, many of them in the middle of
// writing a checkpoint, never leaves a broken checkpoint as the newest one, and restarting with
// --resume latest ends bit for bit where the uninterrupted run ends; NaN / Inf stop training with
// an error that names the step and the weight, activation or gradient, and leave the parameters and
// the last checkpoint as they were; PiSSA / MiLoRA on an all-zero weight of a model give an error
// naming the module and leave every weight as it was (tests/test_bad_input.cpp has the layer-level
// cases).
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <set>
#include <thread>

#include "../io/io_test_util.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/trainer.hpp"

namespace {

namespace fs = std::filesystem;
const fs::path kModel = fs::path(MILORA_TEST_DATA) / "llama_tiny" / "model";

std::string words(int n) {
  static const char* w[] = {"the", "minor", "singular", "vectors", "carry", "little", "of", "what", "was", "learned"};
  std::string s;
  for (int i = 0; i < n; ++i) s += std::string(w[(i * 3 + i / 7) % 10]) + (i % 11 == 10 ? ".\n" : " ");
  return s;
}

// milora-finetune with `args`, as a child process; returns its pid (stdout / stderr to /dev/null)
pid_t spawn(const std::vector<std::string>& args) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> argv;
    const std::string tool = std::string(MILORA_TOOL_DIR) + "/milora-finetune";
    argv.push_back(const_cast<char*>(tool.c_str()));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (std::freopen("/dev/null", "w", stdout) == nullptr || std::freopen("/dev/null", "w", stderr) == nullptr) ::_exit(126);
    ::execv(tool.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

// exited normally with status 0 (WEXITSTATUS alone reads 0 for a run killed by a signal, e.g. a
// sanitizer's abort)
bool exited_ok(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

// Everything a resume reads, read: throws if the checkpoint is incomplete or corrupt.
void load_checkpoint(const fs::path& dir) {
  const auto state = milora::io::read_json_file(dir / "trainer_state.json");
  if (!state.contains("step")) throw std::runtime_error(dir.string() + ": trainer_state.json has no step");
  const auto adapter = milora::io::load_peft_adapter<float>(dir);
  const milora::io::SafetensorsFile moments(dir / "optimizer.safetensors");
  for (const auto& [module, f] : adapter.modules) {
    (void)f;
    for (char which : {'A', 'B'}) {
      const std::string key = milora::io::peft_key(module, which);
      (void)moments.load<float>(key + ".exp_avg");
      (void)moments.load<float>(key + ".exp_avg_sq");
    }
  }
}

// The folders in `out` that are not a finished checkpoint (named checkpoint-N and loading): saves
// that did not finish, whatever the trainer names them while it writes.
std::set<std::string> unfinished_checkpoints(const fs::path& out) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0) {
      names.insert(name);
      continue;
    }
    try {
      load_checkpoint(e.path());
    } catch (const std::exception&) {
      names.insert(name);
    }
  }
  return names;
}

}  // namespace

TEST_CASE("a run killed at random moments (often mid-checkpoint) never leaves a broken latest checkpoint, and --resume latest ends bit for bit") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", words(900));
  const std::vector<std::string> common = {"--model", kModel.string(), "--data", (dir / "train.txt").string(), "--method", "milora",
                                           "--rank", "4", "--lr", "5e-3", "--batch", "2", "--seq", "32",
                                           "--save-every", "1", "--val-fraction", "0", "--quiet"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = common;
    if (std::find(extra.begin(), extra.end(), "--steps") == extra.end()) a.insert(a.end(), {"--steps", "40"});
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(exited_ok(wait_for(spawn(with({"--out", (dir / "ref").string()})))));
  // A first guess of one step's time (start-up takes ~8 steps' time); replaced below by the step
  // time measured in the run being killed.
  double step_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 48;

  // Each attempt resumes and waits until the checkpoints up to `wait_for_step` (zero to two past the
  // last one seen) have appeared, timing them. Then it kills, at random, either
  //  - as soon as the next checkpoint starts being written (a new name appears in the output
  //    folder), after up to 0.5 ms more: the window this test is about, which on a loaded
  //    machine is a small part of a step (the fsyncs do not slow down with the CPUs), or
  //  - after a random fraction of up to 1.5 steps, by the step time just measured: anywhere in the
  //    step or in the writing of its checkpoint.
  // Driven by the run's own progress rather than by a step time measured once (CI runs tests in
  // parallel, so that can be off by 3x either way), a loaded machine changes nothing but speed:
  // every attempt advances a few steps and the run is killed ~20 times before it ends.
  const fs::path out = dir / "killed";
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> ahead(0, 2);
  std::bernoulli_distribution in_write(0.5);
  std::uniform_int_distribution<int> write_delay_us(0, 500);
  std::uniform_real_distribution<double> jitter(0.0, 1.5);  // in steps
  auto entries = [&] {  // the names in `out`
    std::set<std::string> names;
    std::error_code ec;
    for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) names.insert(it->path().filename().string());
    return names;
  };
  long long last_step = 0;
  int kills = 0, mid_write = 0;
  std::set<std::string> left_over;
  for (int attempt = 0; attempt < 200; ++attempt) {
    const long long wait_for_step = last_step + ahead(gen);
    const bool kill_in_write = in_write(gen);
    const pid_t pid = spawn(with({"--out", out.string(), "--resume", "latest"}));
    int status = 0;
    // polls `done` until it holds (true) or the run exits (false, `status` set)
    auto wait_until = [&](auto&& done) {
      while (!done()) {
        if (::waitpid(pid, &status, WNOHANG) == pid) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
      return true;
    };
    bool running = true;
    std::vector<std::chrono::steady_clock::time_point> seen;
    for (long long s = last_step + 1; running && s <= wait_for_step; ++s) {
      const fs::path state = out / ("checkpoint-" + std::to_string(s)) / "trainer_state.json";
      running = wait_until([&] { return fs::exists(state); });
      seen.push_back(std::chrono::steady_clock::now());
    }
    if (running && seen.size() >= 2)
      step_us = std::chrono::duration<double, std::micro>(seen.back() - seen.front()).count() / double(seen.size() - 1);
    if (running && kill_in_write) {
      // the next save starts when a name appears in `out` (whatever the trainer names a checkpoint
      // while it writes it, or the checkpoint's own name if it wrote in place)
      const std::set<std::string> before = entries();
      running = wait_until([&] {
        const auto now = entries();
        return std::any_of(now.begin(), now.end(), [&](const std::string& n) { return !before.count(n); });
      });
      if (running) std::this_thread::sleep_for(std::chrono::microseconds(write_delay_us(gen)));
    } else if (running) {
      std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long long>(jitter(gen) * step_us)));
    }
    if (running) {
      ::kill(pid, SIGKILL);
      status = wait_for(pid);
    }
    if (WIFEXITED(status)) {  // it finished before the kill
      REQUIRE(WEXITSTATUS(status) == 0);
      break;
    }
    ++kills;
    if (!fs::exists(out)) continue;  // killed before it made its output folder
    const auto in_progress = unfinished_checkpoints(out);
    // a checkpoint being written when the kill came (one left over from an earlier kill does not count)
    mid_write += std::any_of(in_progress.begin(), in_progress.end(), [&](const std::string& n) { return !left_over.count(n); });
    left_over = in_progress;
    const fs::path latest = llama::latest_checkpoint(out);
    if (latest.empty()) continue;  // killed before its first checkpoint
    CAPTURE(latest.string());
    REQUIRE_NOTHROW(load_checkpoint(latest));
    const long long step = milora::io::read_json_file(latest / "trainer_state.json")["step"].get<long long>();
    CHECK(step >= last_step);  // no saved progress is ever lost
    last_step = step;
  }
  MESSAGE(kills << " kills, " << mid_write << " of them left a checkpoint being written");
  CHECK(kills >= 10);
  CHECK(mid_write >= 1);  // the test reached the window it is about
  // finish (in case every attempt was killed) and compare with the uninterrupted run, bit for bit
  REQUIRE(exited_ok(wait_for(spawn(with({"--out", out.string(), "--resume", "latest"})))));
  REQUIRE(llama::latest_checkpoint(out) == out / "checkpoint-40");
  for (const char* f : {"adapter_model.safetensors", "optimizer.safetensors", "plain_lora/adapter_model.safetensors"}) {
    CAPTURE(f);
    CHECK(milora_test::read_file(out / "checkpoint-40" / f) == milora_test::read_file(dir / "ref" / "checkpoint-40" / f));
  }
  CHECK(milora::io::read_json_file(out / "checkpoint-40" / "trainer_state.json")["last_loss"] ==
        milora::io::read_json_file(dir / "ref" / "checkpoint-40" / "trainer_state.json")["last_loss"]);
}

TEST_CASE("latest_checkpoint: the highest complete checkpoint-<N>, folders being written and unreadable ones are skipped") {
  milora_test::ScratchDir dir;
  CHECK(llama::latest_checkpoint(dir / "none").empty());
  for (int n : {2, 10, 9}) {
    fs::create_directories(dir / ("checkpoint-" + std::to_string(n)));
    milora::io::write_json_file(dir / ("checkpoint-" + std::to_string(n)) / "trainer_state.json", {{"step", n}});
  }
  fs::create_directories(dir / ".checkpoint-11.tmp");  // being written
  fs::create_directories(dir / "checkpoint-12");        // no trainer_state.json
  fs::create_directories(dir / "checkpoint-13");
  milora_test::write_file(dir / "checkpoint-13" / "trainer_state.json", "{\"step\": 1");  // truncated
  fs::create_directories(dir / "checkpoint-x14");
  CHECK(llama::latest_checkpoint(dir.path) == dir / "checkpoint-10");
}

namespace {

using BE = milora::EigenBackend<float>;
using Model = llama::Llama<BE>;

struct SmallRun {
  milora_test::ScratchDir dir;
  std::unique_ptr<Model> model;
  std::unique_ptr<llama::Trainer<Model>> trainer;
  SmallRun() {
    model = llama::from_pretrained<Model>(milora::io::HFModel(kModel));
    model->add_adapters({"q_proj", "v_proj", "up_proj"}, {.rank = 4, .alpha = 4, .seed = 3}, milora::MinorSVD<>{});
    llama::TrainConfig tc;
    tc.steps = 20;
    tc.batch = 2;
    tc.seq = 32;
    tc.lr = 5e-3;
    tc.save_every = 1;
    tc.progress = false;
    tc.out = dir.path;
    std::vector<llama::Token> tokens;
    for (char c : words(400)) tokens.push_back(llama::Token(static_cast<unsigned char>(c)));
    trainer = std::make_unique<llama::Trainer<Model>>(*model, tc, llama::DataLoader(tokens, 2, 32), std::vector<llama::Token>{},
                                                      nlohmann::json{{"method", "milora"}});
  }
  milora::io::PeftAdapter<float> adapters() { return llama::export_adapters(*model, ""); }
  static bool same(const milora::io::PeftAdapter<float>& a, const milora::io::PeftAdapter<float>& b) {
    for (const auto& [m, f] : a.modules)
      if (f.A.data != b.modules.at(m).A.data || f.B.data != b.modules.at(m).B.data) return false;
    return true;
  }
  // three good steps with their checkpoints, then `poison`, then a step that must stop
  std::string fail_after_three(const std::function<void()>& poison) {
    for (int i = 0; i < 3; ++i) {
      trainer->train_step();
      trainer->save_checkpoint();
    }
    poison();
    const auto before = adapters();
    std::string message;
    try {
      trainer->train_step();
    } catch (const milora::numerical_error& e) {
      message = e.what();
    }
    CHECK(trainer->step() == 3);
    CHECK(same(adapters(), before));  // the failed step changed no parameter
    CHECK(llama::latest_checkpoint(dir.path) == dir / "checkpoint-3");
    load_checkpoint(dir / "checkpoint-3");
    return message;
  }
};

milora::view_t<BE> weight_of(Model& m, const std::string& name) {  // a base weight, writable, for the test to poison
  return const_cast<milora::matrix_t<BE>&>(m.weight(name));
}

}  // namespace

TEST_CASE("NaN / Inf stop training: the error names the step and where the first one is, parameters and the last checkpoint are kept") {
  SUBCASE("a NaN in a frozen base weight") {
    SmallRun r;
    const auto msg = r.fail_after_three([&] { weight_of(*r.model, "model.layers.1.mlp.up_proj.weight")(2, 5) = NAN; });
    CHECK_MESSAGE(msg.find("step 4: the loss is nan") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("model.layers.1.mlp.up_proj.weight holds nan at (2, 5)") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("the last checkpoint is intact") != std::string::npos, msg);
  }
  SUBCASE("an Inf in an adapter factor") {
    SmallRun r;
    const auto msg = r.fail_after_three([&] { r.model->block(0).v.adapter->parameters()[0].value(1, 3) = INFINITY; });
    CHECK_MESSAGE(msg.find("model.layers.0.self_attn.v_proj.lora_A holds inf at (1, 3)") != std::string::npos, msg);
  }
  SUBCASE("finite weights whose activations overflow: the layer is named") {
    SmallRun r;
    const auto msg = r.fail_after_three([&] {
      auto w = weight_of(*r.model, "model.layers.1.post_attention_layernorm.weight");
      w.setConstant(3e38f);
    });
    CHECK_MESSAGE(msg.find("step 4") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("model.layers.1") != std::string::npos, msg);
  }
  SUBCASE("a NaN gradient is located by find_non_finite_gradient") {
    SmallRun r;
    std::vector<llama::Token> t(64, 'a');
    r.model->forward_backward(t, t, 2, 32);
    CHECK(llama::find_non_finite_gradient(*r.model).empty());
    r.model->block(1).up.adapter->parameters()[1].grad(4, 2) = NAN;
    CHECK(llama::find_non_finite_gradient(*r.model) == "the gradient of model.layers.1.mlp.up_proj.lora_B holds nan at (4, 2)");
    CHECK(llama::find_non_finite(*r.model).empty());
  }
}

TEST_CASE("PiSSA / MiLoRA on an all-zero weight of a model: the error names the module, and no weight changed") {
  {
    auto model = llama::from_pretrained<Model>(milora::io::HFModel(kModel));
    weight_of(*model, "model.layers.1.self_attn.v_proj.weight").setZero();
    const auto q0 = milora::io::to_host_matrix<BE>(model->weight("model.layers.0.self_attn.q_proj.weight"));
    CHECK_THROWS_WITH_AS(model->add_adapters({"q_proj", "v_proj"}, {.rank = 4, .alpha = 4}, milora::MinorSVD<>{}),
                         doctest::Contains("model.layers.1.self_attn.v_proj: milora init: 4 of the 4 singular values"),
                         milora::value_error);
    CHECK(model->num_adapters() == 0);  // nothing added, no weight changed (layer 0's q_proj came first)
    CHECK(milora::io::to_host_matrix<BE>(model->weight("model.layers.0.self_attn.q_proj.weight")).data == q0.data);
    auto pissa = llama::from_pretrained<Model>(milora::io::HFModel(kModel));
    const_cast<milora::matrix_t<BE>&>(pissa->weight("model.layers.0.mlp.up_proj.weight")).setZero();
    CHECK_THROWS_WITH_AS(pissa->add_adapters({"up_proj"}, {.rank = 4, .alpha = 4}, milora::PrincipalSVD<>{}), doctest::Contains("is all zero"), milora::value_error);
    auto lora = llama::from_pretrained<llama::Llama<BE>>(milora::io::HFModel(kModel));
    const_cast<milora::matrix_t<BE>&>(lora->weight("model.layers.0.mlp.up_proj.weight")).setZero();
    CHECK_NOTHROW(lora->add_adapters({"up_proj"}, {.rank = 4, .alpha = 4}));
  }
}
