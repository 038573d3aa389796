// milora-finetune under mpirun (data-parallel over MPI, docs/distributed.md), end to end on the
// committed tiny LLaMA: 2 ranks equal 1 rank with the same global batch (float: the two sum the same
// micro-batch gradients with other intermediate roundings; losses within 1e-5 relative, adapters
// within 1e-4 of each tensor's largest entry, looser because AdamW divides each update by the root
// of its squared gradient, so rounding-level gradient differences in entries whose gradient is near
// zero become update-sized), a checkpoint of 2
// ranks resumes on 1, a rank that raises or is killed ends the whole job with a non-zero exit in
// bounded time and never leaves a broken newest checkpoint. Open MPI runs as root here (CI), hence
// --allow-run-as-root; --oversubscribe lets 2 ranks share fewer cores.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "../io/io_test_util.hpp"
#include "llama/trainer.hpp"
#include "milora/io/peft.hpp"

namespace {

namespace fs = std::filesystem;
const fs::path kTinyModel = fs::path(MILORA_TEST_DATA) / "llama_tiny" / "model";
const std::string kFinetune = std::string(MILORA_TOOL_DIR) + "/milora-finetune";
// Open MPI does not free what it allocates at initialisation: under AddressSanitizer (CI) the ranks
// run without leak detection (the single-process tests of the same code keep it).
std::string without_leak_checks() {
  const char* asan = std::getenv("ASAN_OPTIONS");
  return "ASAN_OPTIONS=" + std::string(asan != nullptr ? asan : "") + ":detect_leaks=0 ";
}
// shared memory between the ranks of one host; no network transports (CI has none to offer)
const std::string kMpiexec = std::string(MILORA_MPIEXEC) + " --allow-run-as-root --oversubscribe --mca btl self,vader -np ";
const std::string kMpirun = without_leak_checks() + kMpiexec;

struct Run {
  int status;
  std::string out, err;
  double seconds;
  nlohmann::json result() const {  // the JSON line of rank 0 (the only rank that prints one)
    const auto end = out.find_last_not_of('\n');
    const auto start = out.rfind('\n', end);
    return nlohmann::json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
  }
};

Run shell(const std::string& cmd, const milora_test::ScratchDir& dir) {
  const auto out = dir / "stdout.txt", err = dir / "stderr.txt";
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = std::system((cmd + " > " + out.string() + " 2> " + err.string()).c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, milora_test::read_file(out), milora_test::read_file(err),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

std::string corpus(int words) {
  static const char* w[] = {"data", "parallel", "ranks", "sum", "the", "minor", "singular", "gradients", "of", "each", "step"};
  std::string s;
  for (int i = 0; i < words; ++i) s += std::string(w[(i * 5 + i / 4) % 11]) + (i % 9 == 8 ? ".\n" : " ");
  return s;
}

std::string finetune_args(const milora_test::ScratchDir& dir, const std::string& out, int steps) {
  return " --model " + kTinyModel.string() + " --data " + (dir / "train.txt").string() + " --method milora --rank 4 --seq 32 --batch 2 --lr 1e-3" +
         " --steps " + std::to_string(steps) + " --out " + (dir / out).string() + " --quiet --check-every 1";
}

// Largest relative difference between two PEFT adapters' tensors (each against its own largest entry).
double adapter_gap(const fs::path& a, const fs::path& b) {
  const auto x = milora::io::load_peft_adapter<float>(a), y = milora::io::load_peft_adapter<float>(b);
  REQUIRE(x.modules.size() == y.modules.size());
  double worst = 0;
  for (const auto& [name, m] : x.modules) {
    const auto& n = y.modules.at(name);
    auto gap = [](const auto& p, const auto& q) {
      double scale = 1e-30, d = 0;
      for (std::size_t i = 0; i < p.data.size(); ++i) {
        scale = std::max(scale, double(std::abs(q.data[i])));
        d = std::max(d, double(std::abs(p.data[i] - q.data[i])));
      }
      return d / scale;
    };
    worst = std::max({worst, gap(m.A, n.A), gap(m.B, n.B)});
  }
  return worst;
}

// A child process of `parent` (from /proc/<pid>/stat's fourth field), or 0.
pid_t a_child_of(pid_t parent) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');  // the command name may hold spaces
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    char state = 0;
    long ppid = 0;
    if (rest >> state >> ppid && ppid == parent) return pid_t(std::stol(name));
  }
  return 0;
}

}  // namespace

TEST_CASE("milora-finetune under mpirun -np 2 equals one rank with --accum 2 (losses 1e-5, adapters 1e-4), and a 2-rank "
          "checkpoint resumes on 1 rank") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", corpus(900));
  const Run two = shell(kMpirun + "2 " + kFinetune + finetune_args(dir, "two", 4) + " --save-every 2", dir);
  REQUIRE_MESSAGE(two.status == 0, two.err);
  const Run one = shell(kFinetune + finetune_args(dir, "one", 4) + " --accum 2", dir);
  REQUIRE_MESSAGE(one.status == 0, one.err);
  // only rank 0 prints the result and writes checkpoints
  CHECK(two.out.find("train_loss") == two.out.rfind("train_loss"));
  const double l2 = two.result()["train_loss"], l1 = one.result()["train_loss"];
  CHECK(std::abs(l2 - l1) <= 1e-5 * std::abs(l1));
  CHECK(std::abs(two.result()["val_loss"].get<double>() - one.result()["val_loss"].get<double>()) <= 1e-5 * l1);
  CHECK(adapter_gap(dir / "two/checkpoint-4", dir / "one/checkpoint-4") < 1e-4);
  // the global batch is what the checkpoint records: 2 ranks' step 2 continues on 1 rank with --accum 2
  const Run resumed = shell(kFinetune + finetune_args(dir, "two", 4) + " --accum 2 --resume " + (dir / "two/checkpoint-2").string(), dir);
  REQUIRE_MESSAGE(resumed.status == 0, resumed.err);
  CHECK(std::abs(resumed.result()["train_loss"].get<double>() - l1) <= 1e-5 * std::abs(l1));
  CHECK(adapter_gap(dir / "two/checkpoint-4", dir / "one/checkpoint-4") < 1e-4);
  // another global batch is another run
  const Run other = shell(kFinetune + finetune_args(dir, "two", 4) + " --resume " + (dir / "two/checkpoint-2").string(), dir);
  CHECK(other.status != 0);
  CHECK(other.err.find("is from another run") != std::string::npos);
}

TEST_CASE("milora-finetune under mpirun: a rank that raises ends the whole job, naming itself, a killed rank ends it too, "
          "and the newest checkpoint stays complete") {
  milora_test::ScratchDir dir;
  milora_test::write_file(dir / "train.txt", corpus(900));
  // rank 1 fails reading its 4th micro-batch (step 4) while rank 0 waits in the step's reduction
  const Run failed = shell("MILORA_TEST_FAULT=1:3 " + kMpirun + "2 " + kFinetune + finetune_args(dir, "fail", 8) + " --save-every 1", dir);
  CHECK(failed.status != 0);
  CAPTURE(failed.err);
  CHECK(failed.err.find("milora-finetune: rank 1 of 2: error: MILORA_TEST_FAULT: micro-batch 3 could not be read") != std::string::npos);
  CHECK(failed.seconds < 60);
  const auto newest = llama::latest_checkpoint(dir / "fail");
  REQUIRE(!newest.empty());
  CHECK(milora::io::read_json_file(newest / "trainer_state.json")["step"].get<int>() <= 3);

  // a rank killed (SIGKILL) in the middle of the run: mpirun notices and ends the others
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string cmd = without_leak_checks() + "exec " + kMpiexec + "2 " + kFinetune + finetune_args(dir, "killed", 400) + " --save-every 5 > /dev/null 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  REQUIRE(pid > 0);
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(dir / "killed/checkpoint-5") && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(fs::exists(dir / "killed/checkpoint-5"));
  // the ranks are mpirun's children: kill one
  const pid_t rank_pid = a_child_of(pid);
  REQUIRE(rank_pid > 0);
  ::kill(rank_pid, SIGKILL);
  int status = 0;
  const auto killed_at = std::chrono::steady_clock::now();
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - killed_at < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (done == 0) {  // never a hang: fail, and do not leave the job behind
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL("mpirun did not end within 60 s of a rank's death");
  }
  CHECK((!WIFEXITED(status) || WEXITSTATUS(status) != 0));
  const auto last = llama::latest_checkpoint(dir / "killed");
  REQUIRE(!last.empty());
  CHECK_NOTHROW(milora::io::load_peft_adapter<float>(last));
}

TEST_CASE("milora-init under mpirun -np 2 writes the bytes one process writes (MiLoRA with its residual model, LoRA), "
          "a calibrated method is refused by name") {
  milora_test::ScratchDir dir;
  const std::string init = std::string(MILORA_TOOL_DIR) + "/milora-init --model " + kTinyModel.string() + " --rank 4";
  for (const char* method : {"milora", "lora"}) {
    CAPTURE(std::string(method));
    const std::string m = std::string(" --method ") + method;
    // one BLAS thread per matrix on both sides: the same roundings
    const Run two = shell("OPENBLAS_NUM_THREADS=1 " + kMpirun + "2 " + init + m + " --out " + (dir / (std::string("two-") + method)).string(), dir);
    REQUIRE_MESSAGE(two.status == 0, two.err);
    CHECK(two.err.find("solved by 2 ranks") != std::string::npos);
    const Run one = shell("OPENBLAS_NUM_THREADS=1 " + init + m + " --out " + (dir / (std::string("one-") + method)).string(), dir);
    REQUIRE_MESSAGE(one.status == 0, one.err);
    std::size_t files = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir / (std::string("one-") + method))) {
      if (!e.is_regular_file()) continue;
      const auto rel = fs::relative(e.path(), dir / (std::string("one-") + method));
      CAPTURE(rel.string());
      CHECK(milora_test::read_file(e.path()) == milora_test::read_file(dir / (std::string("two-") + method) / rel));
      ++files;
    }
    CHECK(files >= (std::string(method) == "milora" ? 4u : 2u));  // adapter config + weights (+ residual config + weights)
  }
  milora_test::write_file(dir / "calib.txt", corpus(400));
  const Run calibrated = shell(kMpirun + "2 " + init + " --method eva --calibration-data " + (dir / "calib.txt").string() + " --out " +
                                   (dir / "eva").string(), dir);
  CHECK(calibrated.status != 0);
  CHECK(calibrated.err.find(" of 2: error: --method eva calibrates one model: run it as one process") != std::string::npos);
  CHECK(!fs::exists(dir / "eva"));
}
