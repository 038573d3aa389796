// Fine-tuning the reference LLaMA: a tiny model's adapters overfit a short sequence; a run resumed
// from a checkpoint continues bit for bit; the schedule and clipping follow transformers / PyTorch.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "llama/kernels_cpu.hpp"
#include "llama/trainer.hpp"
#include "llama_test_util.hpp"

using BE = milora::EigenBackend<float>;
using llama::Index;
using llama::Token;
namespace fs = std::filesystem;

namespace {

std::vector<Token> text_tokens(const std::string& s) {
  return llama::Tokenizer::for_model(".", 256).encode(s);
}

llama::LlamaConfig byte_config() {
  auto c = llama_test::tiny_config();
  c.vocab_size = 256;
  c.hidden_size = 32;
  c.head_dim = 8;
  c.intermediate_size = 64;
  c.max_position_embeddings = 64;
  return c;
}

fs::path fresh_dir(const std::string& name) {
  const auto d = fs::temp_directory_path() / ("milora_llama_" + name);
  fs::remove_all(d);
  return d;
}

}  // namespace

TEST_CASE("lr_factor is transformers' cosine schedule with warm-up, clipping is clip_grad_norm_") {
  CHECK(llama::lr_factor(0, 10, 100) == 0.0);  // transformers starts warm-up at 0
  CHECK(llama::lr_factor(5, 10, 100) == doctest::Approx(0.5));
  CHECK(llama::lr_factor(10, 10, 100) == doctest::Approx(1.0));
  CHECK(llama::lr_factor(55, 10, 100) == doctest::Approx(0.5));
  CHECK(llama::lr_factor(100, 10, 100) == doctest::Approx(0.0));
  CHECK(llama::lr_factor(0, 0, 100) == doctest::Approx(1.0));

  auto model = llama::random_model<llama::Llama<BE>>(byte_config(), 3, 0.1);
  model->add_adapters({"q_proj", "down_proj"}, {.rank = 2, .alpha = 4});
  std::uint64_t seed = 1;
  for (auto* p : model->adapted())
    for (auto& param : p->adapter->parameters()) BE::fill_normal(param.grad, 0, 1, seed++);
  const double before = llama::clip_gradients(*model, 0.0);  // 0: measure only
  CHECK(before > 1.0);
  CHECK(llama::clip_gradients(*model, 1.0) == doctest::Approx(before));
  CHECK(llama::clip_gradients(*model, 0.0) == doctest::Approx(1.0 / (before + 1e-6) * before).epsilon(1e-5));
}

TEST_CASE("a tiny LLaMA's adapters (MiLoRA, all projections) overfit a short text: loss from ~5.5 to < 0.5 in 150 steps") {
  using Model = llama::Llama<BE>;
  // Weights of std 0.3, not 0.1: the LM head is frozen and the final RMSNorm fixes |x|, so with
  // std 0.1 the largest logit margin the head can produce is too small for a loss below ~2.8,
  // whatever the adapters learn (measured: 2.77 for LoRA, PiSSA and MiLoRA alike).
  auto model = llama::random_model<Model>(byte_config(), 11, 0.3);
  model->add_adapters({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, {.rank = 8, .alpha = 16},
                     milora::MinorSVD<>{});
  const auto tokens = text_tokens("MiLoRA adapts the minor singular components. ");
  llama::TrainConfig cfg{.steps = 150, .batch = 1, .seq = Index(tokens.size()) - 1, .lr = 1e-2, .warmup = 5};
  cfg.progress = false;
  llama::Trainer<Model> trainer(*model, cfg, llama::DataLoader(tokens, 1, cfg.seq), {}, {{"method", "milora"}});
  const double first = trainer.train_step();
  CHECK(first > 4.0);  // a random model is far from the text (uniform: ln 256 = 5.55)
  trainer.run();
  CAPTURE(first);
  CAPTURE(trainer.last_loss());
  CHECK(trainer.last_loss() < 0.5);
  // the trained model continues the text it saw
  model->forward(std::span(tokens).first(20), 1, 20);
  const auto logits = BE::to_host(model->logits());
  const Index last = 19 * 256;
  const auto best = std::max_element(logits.begin() + last, logits.begin() + last + 256) - (logits.begin() + last);
  CHECK(best == tokens[20]);
}

TEST_CASE("checkpoint + resume continues bit for bit, the checkpoint is a PEFT folder (+ plain_lora for residual methods)") {
  using Model = llama::Llama<BE>;
  const auto tokens = text_tokens("The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ");
  const std::vector<std::string> targets = {"q_proj", "v_proj", "up_proj"};
  const nlohmann::json run = {{"method", "pissa"}, {"model", "tiny"}, {"rank", 4}};
  llama::TrainConfig cfg{.steps = 6, .batch = 2, .seq = 16, .accumulation = 2, .lr = 5e-3, .warmup = 2,
                         .weight_decay = 0.01, .grad_clip = 0.5};
  cfg.progress = false;
  auto make = [&] {
    auto m = llama::random_model<Model>(byte_config(), 5, 0.1);
    m->add_adapters(targets, {.rank = 4, .alpha = 8}, milora::PrincipalSVD<>{});
    return m;
  };
  // uninterrupted
  auto a = make();
  llama::Trainer<Model> ta(*a, cfg, llama::DataLoader(tokens, 2, 16), {}, run);
  ta.run();
  // 3 steps, checkpoint, a fresh process-like restart, 3 more
  const auto out = fresh_dir("resume");
  auto b = make();
  auto cfg_b = cfg;
  cfg_b.out = out;
  llama::Trainer<Model> tb(*b, cfg_b, llama::DataLoader(tokens, 2, 16), {}, run);
  for (int i = 0; i < 3; ++i) tb.train_step();
  const auto ckpt = tb.save_checkpoint();
  CHECK(ckpt == out / "checkpoint-3");
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json",
                        "plain_lora/adapter_config.json", "plain_lora/adapter_model.safetensors"})
    CHECK_MESSAGE(fs::exists(ckpt / f), f);
  CHECK(milora::io::load_peft_adapter<float>(ckpt / "plain_lora").config.r == 8);
  auto c = make();
  llama::Trainer<Model> tc(*c, cfg, llama::DataLoader(tokens, 2, 16), {}, run);
  tc.resume(ckpt);
  CHECK(tc.step() == 3);
  tc.run();
  auto pa = a->adapted(), pc = c->adapted();
  REQUIRE(pa.size() == pc.size());
  for (std::size_t i = 0; i < pa.size(); ++i) {
    CHECK(BE::to_host(pa[i]->adapter->A()) == BE::to_host(pc[i]->adapter->A()));
    CHECK(BE::to_host(pa[i]->adapter->B()) == BE::to_host(pc[i]->adapter->B()));
  }
  CHECK(ta.last_loss() == tc.last_loss());

  // a checkpoint of another run is refused before anything changes
  auto d = make();
  const auto before = BE::to_host(d->adapted()[0]->adapter->A());
  llama::Trainer<Model> td(*d, cfg, llama::DataLoader(tokens, 2, 16), {}, {{"method", "pissa"}, {"model", "tiny"}, {"rank", 8}});
  CHECK_THROWS_WITH_AS(td.resume(ckpt), doctest::Contains("is from another run"), milora::value_error);
  CHECK(BE::to_host(d->adapted()[0]->adapter->A()) == before);
  CHECK(td.step() == 0);
  fs::remove_all(out);
}

TEST_CASE("data: u32 token files are validated, too little data for a batch is named") {
  const auto dir = fresh_dir("data");
  fs::create_directories(dir);
  const auto tok = llama::Tokenizer::for_model(dir, 256);
  {
    std::ofstream(dir / "ok.u32", std::ios::binary).write("\x05\x00\x00\x00\xff\x00\x00\x00", 8);
    std::ofstream(dir / "odd.u32", std::ios::binary).write("\x05\x00\x00", 3);
    std::ofstream(dir / "big.u32", std::ios::binary).write("\x05\x00\x00\x00\x00\x01\x00\x00", 8);
    std::ofstream(dir / "empty.txt", std::ios::binary);
  }
  CHECK(llama::load_tokens(dir / "ok.u32", tok, 256) == std::vector<Token>{5, 255});
  CHECK_THROWS_WITH_AS(llama::load_tokens(dir / "odd.u32", tok, 256), doctest::Contains("has 3 bytes, not a multiple of 4"),
                       milora::format_error);
  CHECK_THROWS_WITH_AS(llama::load_tokens(dir / "big.u32", tok, 256), doctest::Contains("token 1 is 256, not below vocab_size 256"),
                       milora::value_error);
  CHECK_THROWS_WITH_AS(llama::load_tokens(dir / "empty.txt", tok, 256), doctest::Contains("is empty"), milora::value_error);
  CHECK_THROWS_WITH_AS(llama::Tokenizer::for_model(dir, 32000), doctest::Contains("has no tokenizer.json or tokenizer.model and vocab_size is 32000"),
                       milora::io_error);
  CHECK_THROWS_WITH_AS(llama::DataLoader(std::vector<Token>(10, 1), 2, 5), "data has 10 tokens; a batch of 2 x 5 needs 11",
                       milora::value_error);
  llama::DataLoader loader(std::vector<Token>{0, 1, 2, 3, 4, 5, 6}, 1, 3);
  std::vector<Token> in, tg;
  loader.next(in, tg);
  CHECK(in == std::vector<Token>{0, 1, 2});
  CHECK(tg == std::vector<Token>{1, 2, 3});
  loader.next(in, tg);
  CHECK(in == std::vector<Token>{3, 4, 5});
  loader.next(in, tg);  // wraps: 6 + 4 > 7
  CHECK(in == std::vector<Token>{0, 1, 2});
  fs::remove_all(dir);
}

#if defined(MILORA_HAS_TOKENIZER_JSON)
#include "text/byte_level.hpp"

TEST_CASE("Tokenizer: a model folder's tokenizer.json is used first, and its ids must fit the model's vocabulary") {
  const auto dir = fresh_dir("tokenizer_json");
  fs::create_directories(dir);
  // A byte-level BPE (GPT-2's alphabet: 256 single-byte tokens) with one merge, "t" + "h", and a BOS
  // added by the post-processor, as LLaMA-3.1's file has it.
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[std::string(milora::text::ByteLevelAlphabet::get().encode(static_cast<unsigned char>(b)))] = b;
  vocab["th"] = 256;
  const nlohmann::json tokenizer = {
      {"added_tokens", {{{"id", 257}, {"content", "<|begin_of_text|>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<|begin_of_text|>", {{"id", "<|begin_of_text|>"}, {"ids", {257}}}}}}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"t h"}}}}};
  milora::io::write_json_file(dir / "tokenizer.json", tokenizer);
  std::ofstream(dir / "tokenizer.model") << "not read: tokenizer.json comes first";
  const auto tok = llama::Tokenizer::for_model(dir, 258);
  CHECK_FALSE(tok.bytes());
  const auto ids = tok.encode("the");
  CHECK(ids == std::vector<Token>{257, 256, 'e'});
  CHECK(tok.decode(ids) == "<|begin_of_text|>the");
  std::ofstream(dir / "data.txt") << "this";
  CHECK(llama::load_tokens(dir / "data.txt", tok, 258) == std::vector<Token>{257, 256, 'i', 's'});
  CHECK_THROWS_WITH_AS(llama::Tokenizer::for_model(dir, 256), doctest::Contains("has ids up to 257 but the model's vocab_size is 256"),
                       milora::format_error);
  fs::remove_all(dir);
}
#endif

#if defined(MILORA_HAS_SENTENCEPIECE)
#include <sentencepiece_trainer.h>

TEST_CASE("Tokenizer: a model folder's tokenizer.model (sentencepiece) encodes with a leading BOS and decodes back") {
  const auto dir = fresh_dir("spm");
  fs::create_directories(dir);
  std::string corpus;
  for (int i = 0; i < 200; ++i) corpus += "minor singular components adapt the weight while principal ones stay frozen\n";
  std::ofstream(dir / "corpus.txt") << corpus;
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + (dir / "corpus.txt").string() + " --model_prefix=" + (dir / "tokenizer").string() +
      " --vocab_size=40 --model_type=bpe --minloglevel=2");
  REQUIRE_MESSAGE(status.ok(), status.ToString());
  const auto tok = llama::Tokenizer::for_model(dir, 64);
  CHECK_FALSE(tok.bytes());
  const auto ids = tok.encode("the weight adapts");
  REQUIRE(ids.size() > 2);
  CHECK(ids[0] == 1);  // sentencepiece's default BOS id, as in LLaMA's tokenizer
  CHECK(tok.decode(std::span(ids).subspan(1)) == "the weight adapts");
  CHECK_THROWS_WITH_AS(llama::Tokenizer::for_model(dir, 32), doctest::Contains("has 40 pieces but the model's vocab_size is 32"),
                       milora::format_error);
  fs::remove_all(dir);
}
#endif
