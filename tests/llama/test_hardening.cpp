// The tools against bad conditions and bad input (docs/reliability.md): a full disk for every tool
// that writes, NaN / Inf in weights, adapters and flags, numeric flags out of their domain, a
// config.json that disagrees with its weights or hides bytes after a NUL, leftovers of killed runs,
// and outputs that cannot be written, found before the work. Each failure must be one error line
// naming what is wrong, a non-zero exit, and nothing published.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "../io/io_test_util.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "llama_test_util.hpp"
#include "milora/io/peft.hpp"

namespace {

namespace fs = std::filesystem;
using milora_test::ChildResult;
using milora_test::ScratchDir;
using Model = llama::Llama<milora::EigenBackend<float>>;

constexpr rlim_t kNoLimit = RLIM_INFINITY;

ChildResult tool(const std::string& name, const std::vector<std::string>& args, rlim_t file_size_limit = kNoLimit) {
  return milora_test::run_program(file_size_limit, std::string(MILORA_TOOL_DIR) + "/" + name, args);
}

// The tools' promise for a failure: exactly one line, "<tool>: error: ...", and a non-zero exit.
void check_one_error_line(const std::string& name, const ChildResult& r, const std::string& message) {
  CAPTURE(r.err);
  CHECK(r.status != 0);
  CHECK(r.err.find(message) != std::string::npos);
  const auto e = r.err.find(name + ": error: ");
  REQUIRE(e != std::string::npos);
  CHECK(r.err.find('\n', e) == r.err.size() - 1);
}

// A LLaMA folder (config.json + model.safetensors) with tiny_config's shapes and a byte vocabulary,
// or (`layers` = 1, hidden 8) one whose rank-1 q_proj adapter file is smaller than its config.
fs::path make_llama(const fs::path& dir, std::uint64_t seed = 5, int layers = 2) {
  auto cfg = llama_test::tiny_config();
  cfg.vocab_size = 256;
  if (layers == 1) {
    cfg.num_hidden_layers = 1;
    cfg.hidden_size = 8;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = 1;
    cfg.intermediate_size = 8;
  }
  llama::save_pretrained(*llama::random_model<Model>(cfg, seed), dir);
  return dir;
}

std::string words(int n) {
  static const char* w[] = {"minor", "singular", "components", "adapt", "the", "weights", "of", "a", "model"};
  std::string s;
  for (int i = 0; i < n; ++i) s += std::string(w[(i * 5 + i / 4) % 9]) + (i % 11 == 10 ? ".\n" : " ");
  return s;
}

// Every regular file under `dir` with its size.
std::vector<std::pair<fs::path, std::uintmax_t>> files_of(const fs::path& dir) {
  std::vector<std::pair<fs::path, std::uintmax_t>> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.emplace_back(fs::relative(e.path(), dir), e.file_size());
  return out;
}

bool has_leftovers(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.find(".partial") != std::string::npos || name.find(".tmp") != std::string::npos) return true;
  }
  return false;
}

// Rewrites one tensor of a safetensors file with `value` at its first entry.
void poison(const fs::path& file, const std::string& tensor, float value) {
  const milora::io::SafetensorsFile in(file);
  milora::io::SafetensorsWriter w;
  w.set_metadata(in.metadata());
  for (const auto& t : in.tensors()) {
    auto m = in.load<float>(t.name);
    if (t.name == tensor) m.data[0] = value;
    w.add(t.name, m, milora::io::DType::F32, t.shape);
  }
  w.write(file);
}

}  // namespace

TEST_CASE("a full disk: every tool that writes fails naming the file, exits non-zero and publishes nothing") {
  ScratchDir dir;
  const auto model = make_llama(dir / "model", 5, 1);
  milora_test::write_file(dir / "train.txt", words(400));
  // The runs whose outputs are checked: first without a limit (the reference sizes), then once per
  // output file with the file-size limit one byte below that file's size, so that each file in
  // turn is the first that cannot be written whole. A run under a limit must fail, say which file,
  // and leave no output and no partial file.
  struct Run {
    std::string name;
    std::vector<std::string> args;
    fs::path out;
    bool staged;  // a new --out folder (init, convert, merge) rather than a checkpoint folder (finetune)
  };
  const auto init = dir / "init", lora = dir / "lora";
  const std::vector<std::string> small = {"--rank", "1", "--targets", "q_proj"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  // the inputs of convert and merge
  REQUIRE(tool("milora-init", with({"--model", model.string(), "--method", "milora", "--out", init.string()}, small)).status == 0);
  const std::vector<Run> runs = {
      {"milora-init", with({"--model", model.string(), "--method", "lora", "--out", (dir / "o-lora").string()}, small), dir / "o-lora", true},
      {"milora-init", with({"--model", model.string(), "--method", "milora", "--out", (dir / "o-milora").string()}, small), dir / "o-milora", true},
      {"milora-convert", {"--initial", init.string(), "--trained", init.string(), "--out", (dir / "o-convert").string()}, dir / "o-convert", true},
      {"milora-merge", {"--model", (init / "residual").string(), "--adapter", init.string(), "--out", (dir / "o-merge").string()}, dir / "o-merge", true},
      {"milora-finetune", with({"--model", model.string(), "--data", (dir / "train.txt").string(), "--method", "lora", "--steps", "2",
                                "--batch", "1", "--seq", "8", "--save-every", "1", "--quiet", "--out", (dir / "o-ft").string()}, small),
       dir / "o-ft", false},
  };
  for (const auto& run : runs) {
    CAPTURE(run.name);
    CAPTURE(run.out);
    const auto ok = tool(run.name, run.args);
    REQUIRE_MESSAGE(ok.status == 0, ok.err);
    const auto files = files_of(run.out);
    REQUIRE(!files.empty());
    if (run.name == "milora-init" && run.args[3] == "lora") {
      // The case a buffered writer got wrong: the JSON file alone is too large for the limit
      // (the smaller safetensors file before it fits), so only its final flush fails.
      std::uintmax_t json = 0, weights = 0;
      for (const auto& [f, size] : files) (f.extension() == ".json" ? json : weights) = size;
      REQUIRE(json > weights);
    }
    fs::remove_all(run.out);
    std::set<std::uintmax_t> limits;
    for (const auto& [f, size] : files)
      if (size > 0) limits.insert(size - 1);
    for (const auto limit : limits) {
      CAPTURE(limit);
      const auto r = tool(run.name, run.args, limit);
      check_one_error_line(run.name, r, "File too large");
      CHECK(r.err.find("cannot write '") != std::string::npos);  // names the file
      if (run.staged) {
        CHECK_FALSE(fs::exists(run.out));
      } else if (fs::exists(run.out)) {  // the failed checkpoint is not published, those before it are whole
        CHECK_FALSE(fs::exists(run.out / "checkpoint-2"));
        for (const auto& e : fs::directory_iterator(run.out)) {
          if (e.path().filename().string().rfind("checkpoint-", 0) != 0) continue;
          CHECK_NOTHROW(milora::io::load_peft_adapter<float>(e.path()));
          CHECK_NOTHROW(milora::io::read_json_file(e.path() / "trainer_state.json"));
        }
      }
      CHECK_FALSE(has_leftovers(dir.path));
      fs::remove_all(run.out);
    }
  }
}

TEST_CASE("NaN and Inf: in a weight, in an adapter factor, in a flag, each refused with its name, nothing written") {
  ScratchDir dir;
  const auto model = make_llama(dir / "model");
  milora_test::write_file(dir / "train.txt", words(400));
  const auto out = (dir / "out").string();
  // an adapter whose lora_B of layer 1's q_proj holds NaN, another with an Inf
  REQUIRE(tool("milora-init", {"--model", model.string(), "--method", "lora", "--rank", "2", "--out", (dir / "a").string()}).status == 0);
  fs::copy(dir / "a", dir / "nan");
  fs::copy(dir / "a", dir / "inf");
  const std::string key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
  poison(dir / "nan" / "adapter_model.safetensors", key, std::numeric_limits<float>::quiet_NaN());
  poison(dir / "inf" / "adapter_model.safetensors", key, std::numeric_limits<float>::infinity());
  const std::string m = model.string(), nan = (dir / "nan").string(), inf = (dir / "inf").string(), a = (dir / "a").string();
  struct Case {
    std::string tool;
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"milora-merge", {"--model", m, "--adapter", nan, "--out", out}, "'" + key + "' holds nan at (0, 0)"},
      {"milora-convert", {"--initial", a, "--trained", inf, "--out", out}, "'" + key + "' holds inf at (0, 0)"},
      {"milora-eval", {"--model", m, "--adapter", nan, "--data", (dir / "train.txt").string(), "--seq", "16"}, "holds nan"},
      {"milora-generate", {"--model", m, "--adapter", inf, "--prompt", "the", "--max-new-tokens", "2"}, "holds inf"},
      // flags: NaN passes comparisons, "-1" wraps in an unsigned parse
      {"milora-init", {"--model", m, "--alpha", "nan", "--out", out}, "--alpha"},
      {"milora-init", {"--model", m, "--alpha", "inf", "--out", out}, "not a finite number > 0"},
      {"milora-init", {"--model", m, "--seed", "-1", "--out", out}, "not a whole number >= 0"},
      {"milora-init", {"--model", m, "--targets", "q_proj,q_proj", "--out", out}, "--targets lists 'q_proj' twice"},
      {"milora-init", {"--model", m, "--targets", "embed_tokens", "--out", out}, "'embed_tokens' is an embedding"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--alpha", "nan", "--out", out}, "not a finite number > 0"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--val-fraction", "nan", "--out", out}, "--val-fraction"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--lr", "inf", "--out", out}, "--lr"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--save-every", "-1", "--out", out}, "--save-every"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--eval-every", "-1", "--out", out}, "--eval-every"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--seed", "-1", "--out", out}, "--seed"},
      {"milora-finetune", {"--model", m, "--data", (dir / "train.txt").string(), "--targets", "q_proj,q_proj", "--out", out}, "twice"},
      {"milora-eval", {"--model", m, "--data", (dir / "train.txt").string(), "--max-batches", "-1"}, "--max-batches"},
      {"milora-generate", {"--model", m, "--prompt", "the", "--temperature", "nan"}, "--temperature"},
      {"milora-generate", {"--model", m, "--prompt", "the", "--top-k", "-1"}, "--top-k"},
      {"milora-generate", {"--model", m, "--prompt", "the", "--rank-typo", "1"}, "--rank-typo"},  // a usage error is one line too
  };
  for (const auto& c : cases) {
    CAPTURE(c.tool);
    CAPTURE(c.message);
    check_one_error_line(c.tool, tool(c.tool, c.args), c.message);
    CHECK_FALSE(fs::exists(out));
    CHECK_FALSE(has_leftovers(dir.path));
  }
  // a NaN in a weight: named by milora-init (which tensor, where), as by the LLaMA tools
  poison(dir / "model" / "model.safetensors", "model.layers.0.mlp.up_proj.weight", std::numeric_limits<float>::quiet_NaN());
  check_one_error_line("milora-init", tool("milora-init", {"--model", m, "--rank", "2", "--out", out}),
                       "'model.layers.0.mlp.up_proj.weight' holds nan at (0, 0)");
  check_one_error_line("milora-eval", tool("milora-eval", {"--model", m, "--data", (dir / "train.txt").string()}),
                       "'model.layers.0.mlp.up_proj.weight' of ");
  CHECK_FALSE(fs::exists(out));
}

TEST_CASE("config.json against its weights and its bytes: fewer layers than the weights, JSON after a NUL") {
  ScratchDir dir;
  const auto model = make_llama(dir / "model");
  milora_test::write_file(dir / "train.txt", words(400));
  const auto out = (dir / "out").string();
  auto config = milora_test::read_file(model / "config.json");
  const auto fewer = nlohmann::json::parse(config);
  auto one_layer = fewer;
  one_layer["num_hidden_layers"] = 1;
  milora_test::write_file(model / "config.json", one_layer.dump());
  const std::string message = "'model.layers.1.input_layernorm.weight' is not a weight of the LLaMA its config.json describes (1 layers; is num_hidden_layers right?)";
  check_one_error_line("milora-finetune", tool("milora-finetune", {"--model", model.string(), "--data", (dir / "train.txt").string(),
                                                                   "--out", out}), message);
  check_one_error_line("milora-init", tool("milora-init", {"--model", model.string(), "--method", "corda-kpm", "--rank", "2",
                                                           "--calibration-data", (dir / "train.txt").string(), "--seq", "8", "--out", out}),
                       message);
  check_one_error_line("milora-eval", tool("milora-eval", {"--model", model.string(), "--data", (dir / "train.txt").string()}), message);
  CHECK_FALSE(fs::exists(out));
  // Python's json refuses both; nlohmann would stop at the NUL and read {"hidden_size": 16, ...}
  milora_test::write_file(model / "config.json", config + std::string(1, '\0') + "{\"hidden_size\": 999 garbage");
  check_one_error_line("milora-eval", tool("milora-eval", {"--model", model.string(), "--data", (dir / "train.txt").string()}),
                       "a NUL byte at offset " + std::to_string(config.size()));
}

TEST_CASE("plain milora-init on a folder it does not model as a LLaMA: a 3-D target is refused, a layer without a target is said") {
  ScratchDir dir;
  const auto model = dir / "model";
  fs::create_directories(model);
  milora::io::write_json_file(model / "config.json", {{"model_type", "custom"}});
  milora::io::SafetensorsWriter w;
  for (const int layer : {0, 1, 2})
    for (const char* proj : {"q_proj", "v_proj"}) {
      if (layer == 1 && std::string(proj) == "q_proj") continue;  // layer 1 has no q_proj
      w.add("model.layers." + std::to_string(layer) + ".attn." + proj + ".weight", milora::io::HostMatrix<float>(8, 8, std::vector<float>(64, 0.5f)));
    }
  w.add("model.layers.0.moe.experts.weight", milora::io::HostMatrix<float>(2, 32), milora::io::DType::F32, std::vector<std::int64_t>{2, 4, 8});
  w.write(model / "model.safetensors");
  const auto out = dir / "out";
  check_one_error_line("milora-init", tool("milora-init", {"--model", model.string(), "--method", "lora", "--rank", "2", "--targets",
                                                           "v_proj,experts", "--out", out.string()}),
                       "target 'experts' matches 'model.layers.0.moe.experts.weight', which has 3 dimensions");
  const auto r = tool("milora-init", {"--model", model.string(), "--method", "lora", "--rank", "2", "--targets", "q_proj,v_proj", "--out", out.string()});
  CHECK_MESSAGE(r.status == 0, r.err);
  CHECK(r.err.find("milora-init: warning: no 'q_proj' in model.layers.1; adapted where it exists") != std::string::npos);
  CHECK(r.err.find("no 'v_proj'") == std::string::npos);
  CHECK(milora::io::load_peft_adapter<float>(out).modules.size() == 5);
}

TEST_CASE("leftovers and late failures: dead runs' partial folders go, live ones stay, and --out problems are found before the work") {
  ScratchDir dir;
  const auto model = make_llama(dir / "model");
  milora_test::write_file(dir / "train.txt", words(400));
  const auto out = dir / "out";
  // A staging folder of a process that has ended (a child, reaped) and one of a live process (this
  // test) with out's name: milora-init removes the first, keeps the second.
  pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  REQUIRE(dead > 0);
  ::waitpid(dead, nullptr, 0);
  char host[256] = {};
  REQUIRE(::gethostname(host, sizeof host - 1) == 0);
  const auto dead_partial = dir / ("out.partial-" + std::string(host) + "-" + std::to_string(dead));
  const auto live_partial = dir / ("out.partial-" + std::string(host) + "-" + std::to_string(::getpid()));
  const auto other_host = dir / ("out.partial-another-machine-" + std::to_string(dead));
  for (const auto& p : {dead_partial, live_partial, other_host}) {
    fs::create_directories(p);
    milora_test::write_file(p / "adapter_model.safetensors", "half");
  }
  auto r = tool("milora-init", {"--model", model.string(), "--method", "lora", "--rank", "2", "--out", out.string()});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK_FALSE(fs::exists(dead_partial));
  CHECK(fs::exists(live_partial));
  CHECK(fs::exists(other_host));
  fs::remove_all(live_partial);
  fs::remove_all(other_host);

  // A failure after the work began removes the parent folders --out made.
  poison(dir / "model" / "model.safetensors", "model.layers.1.self_attn.v_proj.weight", std::numeric_limits<float>::infinity());
  check_one_error_line("milora-init", tool("milora-init", {"--model", model.string(), "--rank", "2", "--out", (dir / "a/b/c").string()}),
                       "holds inf");
  CHECK_FALSE(fs::exists(dir / "a"));

  // A dangling symlink as --out: refused at once, not at the final rename.
  fs::create_symlink(dir / "nowhere", dir / "link");
  check_one_error_line("milora-init", tool("milora-init", {"--model", model.string(), "--rank", "2", "--out", (dir / "link").string()}),
                       "already exists");
  CHECK_FALSE(fs::exists(dir / "nowhere"));

  // milora-finetune: an --out it cannot create fails before the model is read; a folder locked by
  // another run is refused; leftovers of a killed run are cleared (an .old checkpoint whose new
  // folder never arrived is restored).
  const std::string data = (dir / "train.txt").string();
  const auto model2 = make_llama(dir / "model2");
  const std::vector<std::string> ft = {"--model", model2.string(), "--data", data, "--method", "lora", "--rank", "2", "--steps", "2",
                                       "--batch", "1", "--seq", "8", "--quiet"};
  auto ft_args = [&](const fs::path& o, const std::vector<std::string>& more = {}) {
    auto a = ft;
    a.push_back("--out");
    a.push_back(o.string());
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  milora_test::write_file(dir / "file", "x");
  r = tool("milora-finetune", ft_args(dir / "file" / "run"));
  check_one_error_line("milora-finetune", r, "cannot create the output folder");
  CHECK(r.err.find("layers, hidden") == std::string::npos);  // the model was never loaded

  const auto run = dir / "run";
  REQUIRE(tool("milora-finetune", ft_args(run)).status == 0);
  REQUIRE(fs::exists(run / "checkpoint-2"));
  fs::rename(run / "checkpoint-2", run / ".checkpoint-2.old");  // killed between the two renames
  fs::create_directories(run / ".checkpoint-3.tmp");            // killed while writing
  {
    const int fd = ::open((run / ".lock").c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
    check_one_error_line("milora-finetune", tool("milora-finetune", ft_args(run, {"--resume", "latest"})),
                         "another process is writing checkpoints to");
    ::close(fd);
  }
  CHECK(fs::exists(run / ".checkpoint-2.old"));  // the refused run touched nothing
  r = tool("milora-finetune", ft_args(run, {"--resume", "latest"}));
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.err.find("resumed from " + (run / "checkpoint-2").string()) != std::string::npos);
  CHECK_FALSE(fs::exists(run / ".checkpoint-2.old"));
  CHECK_FALSE(fs::exists(run / ".checkpoint-3.tmp"));
}
