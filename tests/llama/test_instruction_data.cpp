// JSON-lines fine-tuning data (examples/llama/instruction_data.hpp): which tokens are learned
// (answers only, or everything with --train-on-prompt), that a padded row gives the loss and the
// gradients of its example run alone (double precision, 1e-12), the seeded per-epoch order and a
// mid-epoch resume, and every bad input named by file:line; then milora-finetune on chat data end to
// end, resumed mid-epoch bit for bit.
#include <doctest/doctest.h>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "../io/io_test_util.hpp"
#include "llama/instruction_data.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/model.hpp"
#include "llama/pretrained.hpp"
#include "llama_test_util.hpp"

#if defined(MILORA_HAS_TOKENIZER_JSON)  // chat templates come with tokenizer.json support (examples/text)
namespace {

namespace fs = std::filesystem;
using llama::Token;
using Exact = milora::EigenBackend<double>;  // double: the equalities hold to 1e-12

// ChatML, as Qwen's template writes it without tools.
const char* kChatML =
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// The decoded text of the learned tokens of `ex`, each learned run ended by '|'.
std::string learned_text(const llama::Example& ex, const llama::Tokenizer& tok) {
  std::string out;
  std::vector<Token> run;
  for (std::size_t i = 0; i <= ex.tokens.size(); ++i) {
    if (i < ex.tokens.size() && ex.learned[i]) {
      run.push_back(ex.tokens[i]);
    } else if (!run.empty()) {
      out += tok.decode(run) + "|";
      run.clear();
    }
  }
  return out;
}

llama::LlamaConfig byte_config() {
  auto c = llama_test::tiny_config();
  c.vocab_size = 256;
  c.max_position_embeddings = 64;
  return c;
}

}  // namespace

TEST_CASE("instruction data: only the answers are learned (with the template's end of turn), or everything with train_on_prompt") {
  milora_test::ScratchDir dir;
  const auto tok = llama::Tokenizer::for_model(dir.path, 256);  // bytes: every character is a token
  write(dir / "chat.jsonl",
        R"({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})"
        "\n\n"
        R"({"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]})"
        "\n");
  const milora::text::ChatTemplate chatml(kChatML, "ChatML");
  llama::InstructionOptions o{.seq = 200};
  const auto set = llama::read_instruction_data(dir / "chat.jsonl", tok, 256, o, &chatml);
  REQUIRE(set.examples.size() == 2);
  CHECK(set.format == "chat");
  CHECK(learned_text(set.examples[0], tok) == "Hello.<|im_end|>\n|4<|im_end|>\n|");
  CHECK(learned_text(set.examples[1], tok) == "Ciao<|im_end|>\n|");
  CHECK(tok.decode(set.examples[1].tokens) == "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nCiao<|im_end|>\n");
  o.train_on_prompt = true;
  const auto all = llama::read_instruction_data(dir / "chat.jsonl", tok, 256, o, &chatml);
  CHECK(learned_text(all.examples[1], tok) == tok.decode(all.examples[1].tokens) + "|");

  // Alpaca records in Alpaca's prompt, the answer after "### Response:\n"; prompt/completion.
  write(dir / "alpaca.jsonl", R"({"instruction": "Say hi.", "input": "", "output": "hi"})" "\n");
  o.train_on_prompt = false;
  const auto alpaca = llama::read_instruction_data(dir / "alpaca.jsonl", tok, 256, o, nullptr);
  CHECK(learned_text(alpaca.examples[0], tok) == "hi|");
  CHECK(tok.decode(alpaca.examples[0].tokens).ends_with("### Instruction:\nSay hi.\n\n### Response:\nhi"));
  write(dir / "pc.jsonl", R"({"prompt": "1+1=", "completion": "2"})" "\n" R"({"prompt": "2+2=", "completion": "4"})" "\n");
  const auto pc = llama::read_instruction_data(dir / "pc.jsonl", tok, 256, o, nullptr);
  CHECK(learned_text(pc.examples[1], tok) == "4|");
  CHECK(pc.learned_tokens() == 2);
}

TEST_CASE("instruction data: a padded row gives the loss and the gradients of its example alone (no leak across rows or pads)") {
  // Causal attention and positions from 0 in every row: the pads after an example and the other
  // rows of its batch cannot change what its tokens see. Double precision, 1e-12.
  auto model = llama::random_model<llama::Llama<Exact>>(byte_config(), 5, 0.3);
  model->add_adapters({"q_proj", "v_proj", "down_proj"}, {.rank = 2, .alpha = 4});
  for (auto* p : model->adapted()) Exact::fill_normal(p->adapter->B(), 0, 0.1, 7);  // B != 0: gradients reach A too
  llama::Example a{{10, 11, 12, 13, 14, 15}, {0, 0, 0, 1, 1, 1}};
  llama::Example b{{20, 21, 22, 23, 24, 25, 26, 27, 28, 29}, {0, 0, 1, 1, 1, 1, 1, 1, 1, 1}};
  const auto grads = [&](const std::vector<const llama::Example*>& rows, milora::Index seq) {
    std::vector<Token> in(rows.size() * std::size_t(seq)), tg(in.size());
    for (std::size_t r = 0; r < rows.size(); ++r) llama::example_row(*rows[r], seq, in.data() + r * std::size_t(seq), tg.data() + r * std::size_t(seq));
    model->zero_grad();
    const double loss = model->forward_backward(in, tg, milora::Index(rows.size()), seq);
    std::vector<Eigen::MatrixXd> g;
    for (const auto& p : model->parameters()) g.emplace_back(p.grad);
    return std::pair{loss, g};
  };
  const auto [alone, g_alone] = grads({&a}, 5);        // exactly its 6 tokens
  const auto [padded, g_padded] = grads({&a}, 16);     // 10 pads after it
  CHECK(std::abs(padded - alone) < 1e-12);
  for (std::size_t i = 0; i < g_alone.size(); ++i) CHECK((g_padded[i] - g_alone[i]).cwiseAbs().maxCoeff() < 1e-12);
  // Two examples in one batch: the mean over their 3 + 8 learned tokens, each part as alone.
  const auto [b_alone, g_b] = grads({&b}, 9);
  const auto [both, g_both] = grads({&a, &b}, 12);
  CHECK(std::abs(both - (3 * alone + 8 * b_alone) / 11) < 1e-12);
  for (std::size_t i = 0; i < g_both.size(); ++i) CHECK((g_both[i] - (3 * g_alone[i] + 8 * g_b[i]) / 11).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("packed rows: several examples in one row give the loss and gradients of each run alone") {
  // Each example attends to itself only and its positions start at 0 (segment starts), so packing
  // changes how much padding is computed, not what is learned. Double precision, 1e-12.
  auto model = llama::random_model<llama::Llama<Exact>>(byte_config(), 5, 0.3);
  model->add_adapters({"q_proj", "k_proj", "v_proj", "down_proj"}, {.rank = 2, .alpha = 4});
  for (auto* p : model->adapted()) Exact::fill_normal(p->adapter->B(), 0, 0.1, 7);
  llama::ExampleSet set;
  set.examples.push_back({{10, 11, 12, 13, 14, 15}, {0, 0, 0, 1, 1, 1}});                  // 5 positions, 3 learned
  set.examples.push_back({{20, 21, 22, 23, 24, 25, 26, 27, 28, 29}, {0, 0, 1, 1, 1, 1, 1, 1, 1, 1}});  // 9 positions, 8 learned
  const auto step = [&](std::span<const Token> in, std::span<const Token> tg, milora::Index seq, std::span<const std::int32_t> seg) {
    model->zero_grad();
    const double loss = model->forward_backward(in, tg, 1, seq, 1.0, seg);
    std::vector<Eigen::MatrixXd> g;
    for (const auto& p : model->parameters()) g.emplace_back(p.grad);
    return std::pair{loss, g};
  };
  std::vector<std::pair<double, std::vector<Eigen::MatrixXd>>> alone;
  for (const auto& ex : set.examples) {
    const milora::Index n = milora::Index(ex.tokens.size()) - 1;
    std::vector<Token> in(static_cast<std::size_t>(n)), tg(static_cast<std::size_t>(n));
    llama::example_row(ex, n, in.data(), tg.data());
    alone.push_back(step(in, tg, n, {}));
  }
  llama::ExampleLoader loader(set, 1, 16, 3, /*pack=*/true);
  std::vector<Token> in, tg;
  loader.next(in, tg);
  CHECK(loader.cursor() == 2);  // both fit: 5 + 9 of 16 positions, 2 of padding
  const auto seg = loader.segment_starts();
  const std::int32_t second = seg[15] == 14 ? seg[13] : -1;  // where the second example starts (5 or 9)
  CHECK((second == 5 || second == 9));
  CHECK(seg[0] == 0);
  CHECK(seg[15] == 14);  // the padding, a segment of its own
  const auto [packed, g_packed] = step(in, tg, 16, seg);
  CHECK(std::abs(packed - (3 * alone[0].first + 8 * alone[1].first) / 11) < 1e-12);
  for (std::size_t i = 0; i < g_packed.size(); ++i)
    CHECK((g_packed[i] - (3 * alone[0].second[i] + 8 * alone[1].second[i]) / 11).cwiseAbs().maxCoeff() < 1e-12);
  // Without the segments the second example would see the first: a different loss.
  model->zero_grad();
  CHECK(std::abs(model->forward_backward(in, tg, 1, 16) - packed) > 1e-6);
  std::vector<std::int32_t> bad(seg.begin(), seg.end());
  bad[3] = 2;
  CHECK_THROWS_WITH_AS(model->forward_backward(in, tg, 1, 16, 1.0, bad), doctest::Contains("segment start 2 of token 3"), milora::value_error);
}

TEST_CASE("ExampleLoader: every example once per epoch, a new order each epoch, the same from a seed, resumable mid-epoch") {
  llama::ExampleSet set;
  for (Token i = 0; i < 7; ++i) set.examples.push_back({{i, Token(i + 100)}, {0, 1}});
  llama::ExampleLoader loader(set, 2, 1, 42);
  const auto o0 = loader.order(0), o1 = loader.order(1);
  CHECK(std::set<std::size_t>(o0.begin(), o0.end()).size() == 7);
  CHECK(o0 != o1);
  CHECK(llama::ExampleLoader(set, 2, 1, 42).order(1) == o1);
  CHECK(llama::ExampleLoader(set, 2, 1, 43).order(0) != o0);
  std::vector<Token> in, tg, seen;
  for (int k = 0; k < 5; ++k) {  // 10 rows: one epoch of 7, then 3 of the next
    loader.next(in, tg);
    seen.insert(seen.end(), in.begin(), in.end());
    CHECK(tg[0] == in[0] + 100);  // the learned second token is the target of the first
  }
  for (std::size_t i = 0; i < 7; ++i) CHECK(seen[i] == Token(o0[i]));
  for (std::size_t i = 7; i < 10; ++i) CHECK(seen[i] == Token(o1[i - 7]));
  CHECK(loader.cursor() == 10);
  CHECK(loader.epoch() == 1);
  llama::ExampleLoader resumed(set, 2, 1, 42);
  resumed.set_cursor(loader.cursor());
  std::vector<Token> in2, tg2;
  loader.next(in, tg);
  resumed.next(in2, tg2);
  CHECK(in == in2);
  CHECK(tg == tg2);
  // Packed (each example takes one position here, so a row of 3 holds 3): the same order, and a
  // resume from the cursor continues with the same rows.
  llama::ExampleLoader packed(set, 1, 3, 42, true), packed_resumed(set, 1, 3, 42, true);
  packed.next(in, tg);
  CHECK(in == std::vector<Token>{Token(o0[0]), Token(o0[1]), Token(o0[2])});
  CHECK(std::vector<std::int32_t>(packed.segment_starts().begin(), packed.segment_starts().end()) == std::vector<std::int32_t>{0, 1, 2});
  packed.next(in, tg);
  packed_resumed.set_cursor(packed.cursor());
  packed.next(in, tg);
  packed_resumed.next(in2, tg2);
  CHECK(in == in2);
}

TEST_CASE("instruction data: bad input is named by file and line, long examples are truncated or skipped and counted") {
  milora_test::ScratchDir dir;
  const auto tok = llama::Tokenizer::for_model(dir.path, 256);
  const milora::text::ChatTemplate chatml(kChatML, "ChatML");
  llama::InstructionOptions o{.seq = 32};
  const auto error = [&](const std::string& content) {
    write(dir / "d.jsonl", content);
    try {
      llama::read_instruction_data(dir / "d.jsonl", tok, 256, o, &chatml);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  const std::string f = "'" + (dir / "d.jsonl").string() + "'";
  CHECK(error("{\"text\": \"a\"}\n{\"text\": \"b\"\n").starts_with(f + ":2: not valid JSON"));
  CHECK(error("{\"prompt\": \"a\"}\n") == f + ":1: the field \"completion\" is missing");
  CHECK(error("{\"instruction\": \"a\", \"output\": 3}\n") == f + ":1: \"output\" is 3, not a string");
  CHECK(error("{\"messages\": [{\"role\": \"bot\", \"content\": \"x\"}]}\n") == f + ":1: messages[0].role 'bot' is not system, user, assistant or tool");
  CHECK(error("{\"text\": \"a\"}\n{\"prompt\": \"a\", \"completion\": \"b\"}\n") == f + ":2: a prompt_completion record in a file of text records");
  CHECK(error("{\"title\": \"a\"}\n").starts_with(f + ":1: no \"text\""));
  CHECK(error("\n\n") == f + " has no usable example (0 records, 0 longer than --seq + 1 and skipped, 0 without a token to learn, "
                             "0 of them truncated to --seq + 1 = 33)");
  CHECK(error("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n").starts_with(f + " has no usable example (1 records"));
  CHECK_THROWS_WITH_AS(llama::read_instruction_data(dir / "missing.jsonl", tok, 256, o, &chatml), doctest::Contains("cannot open"), milora::io_error);
  write(dir / "chat.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n");
  CHECK_THROWS_WITH_AS(llama::read_instruction_data(dir / "chat.jsonl", tok, 256, o, nullptr),
                       doctest::Contains(":1: a chat record needs the model's chat template, and its folder has none"), milora::format_error);

  // 40 + 1 tokens of prompt, then the answer: truncated to 33 it has no answer left; a short one stays.
  write(dir / "long.jsonl", "{\"prompt\": \"" + std::string(40, 'p') + "\", \"completion\": \"abc\"}\n"
                            "{\"prompt\": \"q\", \"completion\": \"" + std::string(40, 'c') + "\"}\n"
                            "{\"prompt\": \"q\", \"completion\": \"ok\"}\n");
  const auto truncated = llama::read_instruction_data(dir / "long.jsonl", tok, 256, o, nullptr);
  CHECK(truncated.examples.size() == 2);
  CHECK(truncated.truncated == 2);
  CHECK(truncated.without_answer == 1);
  CHECK(truncated.examples[0].tokens.size() == 33);
  o.skip_long = true;
  const auto skipped = llama::read_instruction_data(dir / "long.jsonl", tok, 256, o, nullptr);
  CHECK(skipped.examples.size() == 1);
  CHECK(skipped.skipped_long == 2);
}

#if defined(MILORA_TOOL_DIR)
TEST_CASE("milora-finetune on chat JSON lines: answers learned, epochs, and a mid-epoch resume that ends bit for bit the same") {
  milora_test::ScratchDir dir;
  const fs::path model = dir / "model";
  fs::create_directories(model);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(fs::path(MILORA_TEST_DATA) / "llama_tiny" / "model" / f, model / f);
  // A terse template: the tiny model's 64 positions hold a turn of it with bytes for tokens.
  milora::io::write_json_file(model / "tokenizer_config.json",
                              {{"chat_template", "{% for m in messages %}{{ m['role'][0] + ':' + m['content'] + '\\n' }}{% endfor %}"
                                                 "{% if add_generation_prompt %}{{ 'a:' }}{% endif %}"}});
  std::string data;
  for (int i = 0; i < 30; ++i)
    data += "{\"messages\": [{\"role\": \"user\", \"content\": \"" + std::to_string(i) + "+1\"}, {\"role\": \"assistant\", \"content\": \"" +
            std::to_string(i + 1) + "\"}]}\n";
  write(dir / "chat.jsonl", data);
  const auto run = [&](const std::string& args) {
    const std::string cmd = std::string(MILORA_TOOL_DIR) + "/milora-finetune --model " + model.string() + " --data " +
                            (dir / "chat.jsonl").string() + " --seq 48 --batch 4 --epochs 2 --rank 4 --quiet " + args + " > " +
                            (dir / "out.txt").string() + " 2> " + (dir / "err.txt").string();
    const int rc = std::system(cmd.c_str());
    INFO(milora_test::read_file(dir / "err.txt"));
    REQUIRE(WIFEXITED(rc));
    REQUIRE(WEXITSTATUS(rc) == 0);
    return milora_test::read_file(dir / "err.txt");
  };
  const std::string log = run("--out " + (dir / "full").string() + " --save-every 5");
  const auto trained = nlohmann::json::parse(milora_test::read_file(dir / "out.txt"));
  // 27 training examples (3 held out), 4 per step: 2 epochs in 14 steps.
  CHECK(log.find("chat data: 27 training examples") != std::string::npos);
  CHECK(log.find("2.07407 epochs in 14 steps") != std::string::npos);
  fs::create_directories(dir / "resumed");
  fs::copy(dir / "full" / "checkpoint-5", dir / "resumed" / "checkpoint-5", fs::copy_options::recursive);  // step 5: mid-epoch (20 of 27)
  run("--out " + (dir / "resumed").string() + " --save-every 5 --resume latest");
  CHECK(milora_test::read_file(dir / "full" / "checkpoint-14" / "adapter_model.safetensors") ==
        milora_test::read_file(dir / "resumed" / "checkpoint-14" / "adapter_model.safetensors"));
  // milora-eval scores the held-out examples (the file's last 3) as the trainer did: answers only.
  std::string held_out;
  for (int i = 27; i < 30; ++i)
    held_out += "{\"messages\": [{\"role\": \"user\", \"content\": \"" + std::to_string(i) + "+1\"}, {\"role\": \"assistant\", \"content\": \"" +
                std::to_string(i + 1) + "\"}]}\n";
  write(dir / "val.jsonl", held_out);
  const std::string eval = std::string(MILORA_TOOL_DIR) + "/milora-eval --model " + model.string() + " --adapter " +
                           (dir / "full" / "checkpoint-14" / "plain_lora").string() + " --data " + (dir / "val.jsonl").string() +
                           " --seq 48 --batch 4 > " + (dir / "eval.txt").string() + " 2>&1";
  REQUIRE(std::system(eval.c_str()) == 0);
  const std::string eval_out = milora_test::read_file(dir / "eval.txt");
  const auto scored = nlohmann::json::parse(eval_out.substr(eval_out.rfind('{')));
  CHECK(scored["loss"].get<double>() == doctest::Approx(trained["val_loss"].get<double>()).epsilon(1e-5));
}
#endif
#endif  // MILORA_HAS_TOKENIZER_JSON
