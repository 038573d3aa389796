// tokenizer.json against an independent implementation on the real files: every tokenizer
// fetched from npm (LLaMA-2, LLaMA-3, LLaMA-3.1, Qwen3, Gemma-3, GPT-2, and LLaMA-2 with
// Mistral-v0.3's Metaspace components), every text of tests/text/corpus.json (English, German,
// code, digits, whitespace runs, emoji, CJK, scripts with combining marks, special-token strings,
// the empty string, one long text): the same ids as transformers.js, with and without special
// tokens, and the same decoded text. Tolerance: none, ids are compared exactly.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "text/chat_template.hpp"
#include "text/tokenizer_json.hpp"
#include "text/unicode_normalization.hpp"
#include "text_test_util.hpp"

namespace {

std::string escaped(const std::string& s) { return nlohmann::json(s).dump(); }

// The first index where two id lists differ, with both lists near it, for the failure message.
std::string first_difference(const std::vector<milora::text::TokenId>& got, const std::vector<milora::text::TokenId>& want) {
  std::size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const auto around = [&](const std::vector<milora::text::TokenId>& v) {
    std::string s;
    for (std::size_t k = i >= 3 ? i - 3 : 0; k < std::min(v.size(), i + 4); ++k) s += std::to_string(v[k]) + " ";
    return s;
  };
  return "at id " + std::to_string(i) + " of " + std::to_string(got.size()) + " / " + std::to_string(want.size()) + ": got [" +
         around(got) + "] want [" + around(want) + "]";
}

}  // namespace

TEST_CASE("tokenizer.json: every real tokenizer encodes and decodes the corpus as transformers.js does") {
  const auto& ref = text_test::reference();
  const auto& corpus = ref["corpus"];
  REQUIRE(ref["models"].size() >= 7);
  for (const auto& [name, cases] : ref["models"].items()) {
    const auto tok = text_test::tokenizer(name);
    REQUIRE(cases.size() == corpus.size());
    int mismatches = 0;
    for (std::size_t i = 0; i < corpus.size(); ++i) {
      const std::string t = corpus[i].get<std::string>();
      const auto want = cases[i]["ids"].get<std::vector<milora::text::TokenId>>();
      const auto want_plain = cases[i]["plain"].get<std::vector<milora::text::TokenId>>();
      const auto got = tok->encode(t);
      const auto got_plain = tok->encode(t, false);
      INFO(name, ": text ", i, " ", escaped(t.substr(0, 80)));
      if (got != want) CHECK_MESSAGE(false, "with special tokens, ", first_difference(got, want));
      if (got_plain != want_plain) CHECK_MESSAGE(false, "without special tokens, ", first_difference(got_plain, want_plain));
      mismatches += got != want || got_plain != want_plain;
      CHECK(tok->decode(want) == cases[i]["decoded"].get<std::string>());
      CHECK(tok->decode(want, {.skip_special_tokens = true}) == cases[i]["decoded_skip"].get<std::string>());
    }
    MESSAGE(name, ": ", corpus.size() - std::size_t(mismatches), " of ", corpus.size(), " texts encoded identically");
  }
}

TEST_CASE("tokenizer.json: byte-level tokenizers give back every text exactly (Qwen: its NFC form)") {
  // GPT-2, LLaMA-3 and Qwen promise decode(encode(x)) == x: every byte is in the vocabulary, and
  // the only normalizer is Qwen's NFC. Without the transformers-style clean-up of spaces before
  // punctuation, which LLaMA-3's config turns on and which is not an inverse.
  const auto& corpus = text_test::reference()["corpus"];
  for (const char* name : {"gpt2", "llama3", "llama3_1", "qwen3"}) {
    const auto tok = text_test::tokenizer(name);
    const bool nfc = std::string(name) == "qwen3";
    for (std::size_t i = 0; i < corpus.size(); ++i) {
      const std::string t = corpus[i].get<std::string>();
      const std::string want = nfc ? milora::text::normalize_unicode(t, milora::text::NormalForm::NFC) : t;
      INFO(name, ": text ", i, " ", escaped(t.substr(0, 80)));
      CHECK(tok->decode(tok->encode(t, false), {.skip_special_tokens = false, .clean_up_tokenization_spaces = false}) == want);
    }
  }
}

TEST_CASE("chat templates: rendered and encoded as transformers.js (@huggingface/jinja) does, for every model's template") {
  // The templates of LLaMA-3, LLaMA-3.1, Qwen3 (ChatML with thinking) and Gemma-3 read from the
  // fetched tokenizer_config.json files, and LLaMA-2-chat's and Mistral-Instruct's from
  // tests/text/chat_templates.json; every conversation of tests/text/conversations.json (system
  // prompt, multi-turn, a single user turn, special-token strings, a <think> answer), with and
  // without the generation prompt. A template that raises (Mistral's has no system role) must
  // raise here too, with the same message.
  const auto& ref = text_test::reference();
  REQUIRE(ref["chat"].size() >= 6);
  for (const auto& [name, t] : ref["chat"].items()) {
    const std::string tokenizer_name = t["tokenizer"].get<std::string>();
    auto tmpl = tokenizer_name == name ? milora::text::ChatTemplate::from_model_folder(text_test::model_dir(name))
                                       : milora::text::ChatTemplate(t["chat_template"].get<std::string>(), name);
    if (tokenizer_name == name) {  // read from the folder: the same template and special tokens
      CHECK(tmpl.source() == t["chat_template"].get<std::string>());
      CHECK(tmpl.bos_token() == t["bos_token"].get<std::string>());
      CHECK(tmpl.eos_token() == t["eos_token"].get<std::string>());
    }
    tmpl.set_special_tokens(t["bos_token"].get<std::string>(), t["eos_token"].get<std::string>());
    const auto tok = text_test::tokenizer(tokenizer_name);
    for (const auto& c : t["cases"]) {
      const auto& messages = ref["conversations"][c["conversation"].get<std::size_t>()];
      const bool gen = c["add_generation_prompt"].get<bool>();
      INFO(name, ": conversation ", c["conversation"].get<int>(), ", add_generation_prompt ", gen);
      if (c.contains("error")) {
        const std::string want = c["error"].get<std::string>();
        CHECK_THROWS_WITH_AS(tmpl.render(messages, gen), doctest::Contains(want.c_str()), milora::value_error);
        continue;
      }
      const std::string text = tmpl.render(messages, gen);
      CHECK(text == c["text"].get<std::string>());
      CHECK(tok->encode(text, false) == c["ids"].get<std::vector<milora::text::TokenId>>());
    }
  }
}
