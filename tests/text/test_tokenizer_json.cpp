// tokenizer.json's components on hand-written files, where the right answer is known by hand or from
// Hugging Face's documentation: BPE's merge order and tie-breaking, byte fallback and unk, the five
// Split behaviours, Unicode White_Space, added tokens, decoders, and every refusal. Needs no network
// (the real files are in test_golden.cpp).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/pre_tokenizer.hpp"
#include "text/tokenizer_json.hpp"

namespace {

using Ids = std::vector<milora::text::TokenId>;
using Words = std::vector<std::string>;

// A tokenizer.json of vocabulary `vocab` (token -> id) and `merges`, with the given components.
nlohmann::json file(nlohmann::json vocab, nlohmann::json merges, nlohmann::json extra = nlohmann::json::object()) {
  nlohmann::json j = {{"version", "1.0"},  {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", nlohmann::json::array()},
                      {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr}, {"decoder", nullptr},
                      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
  for (const auto& [k, v] : extra.items()) {
    if (k == "model") {
      for (const auto& [mk, mv] : v.items()) j["model"][mk] = mv;
    } else {
      j[k] = v;
    }
  }
  return j;
}
milora::text::TokenizerJson make(const nlohmann::json& j, nlohmann::json config = nlohmann::json::object()) {
  return milora::text::TokenizerJson(j, config, "test tokenizer.json");
}
std::string error_of(const nlohmann::json& j) {
  try {
    make(j);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}
Words pieces(const nlohmann::json& pre, const std::string& s, bool first = true) {
  Words w;
  milora::text::PreTokenizer(pre, "test").split(s, first, w);
  return w;
}
const nlohmann::json abc = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"abc", 5}, {"aa", 6}};

}  // namespace

TEST_CASE("BPE: the lowest-ranked pair merges first, and the leftmost among equal ranks") {
  // "b c" ranks before "a b": abc -> a + bc (then no merge "a bc"), not ab + c.
  CHECK(make(file(abc, {"b c", "a b"})).encode("abc") == Ids{0, 4});
  CHECK(make(file(abc, {"a b", "b c", "ab c"})).encode("abc") == Ids{5});
  // aaa with "a a": the left pair merges first -> aa + a.
  CHECK(make(file(abc, {"a a"})).encode("aaa") == Ids{6, 0});
  // The new merge format (pairs) reads the same.
  CHECK(make(file(abc, nlohmann::json::array({{"b", "c"}, {"a", "b"}}))).encode("abc") == Ids{0, 4});
}

TEST_CASE("BPE: byte fallback, unk and fuse_unk for characters outside the vocabulary") {
  nlohmann::json vocab = {{"<unk>", 0}, {"a", 1}, {"<0xC3>", 2}, {"<0xA9>", 3}};
  // é is C3 A9: both byte tokens exist.
  CHECK(make(file(vocab, nlohmann::json::array(), {{"model", {{"byte_fallback", true}, {"unk_token", "<unk>"}}}})).encode("aé") == Ids{1, 2, 3});
  // ü (C3 BC) lacks a byte token: unk, twice or fused.
  CHECK(make(file(vocab, nlohmann::json::array(), {{"model", {{"byte_fallback", true}, {"unk_token", "<unk>"}}}})).encode("üüa") == Ids{0, 0, 1});
  CHECK(make(file(vocab, nlohmann::json::array(), {{"model", {{"fuse_unk", true}, {"unk_token", "<unk>"}}}})).encode("üüa") == Ids{0, 1});
  // Without an unk token the character is dropped, as Hugging Face's BPE drops it.
  CHECK(make(file(vocab, nlohmann::json::array())).encode("üa") == Ids{1});
}

TEST_CASE("BPE: ignore_merges takes a word that is itself in the vocabulary whole") {
  const nlohmann::json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"bc", 3}, {"abc", 4}};
  CHECK(make(file(vocab, {"b c"})).encode("abc") == Ids{0, 3});  // no merge reaches "abc"
  CHECK(make(file(vocab, {"b c"}, {{"model", {{"ignore_merges", true}}}})).encode("abc") == Ids{4});
}

TEST_CASE("Split: Hugging Face's five delimiter behaviours") {
  // The example of tokenizers' SplitDelimiterBehavior documentation: "the-final--countdown".
  const auto split = [](const char* behavior) {
    return pieces({{"type", "Split"}, {"pattern", {{"String", "-"}}}, {"behavior", behavior}, {"invert", false}}, "the-final--countdown");
  };
  CHECK(split("Removed") == Words{"the", "final", "countdown"});
  CHECK(split("Isolated") == Words{"the", "-", "final", "-", "-", "countdown"});
  CHECK(split("MergedWithPrevious") == Words{"the-", "final-", "-", "countdown"});
  CHECK(split("MergedWithNext") == Words{"the", "-final", "-", "-countdown"});
  CHECK(split("Contiguous") == Words{"the", "-", "final", "--", "countdown"});
}

TEST_CASE("Split patterns: \\s is Unicode White_Space, as in Oniguruma (not U+180E, but U+0085)") {
  const nlohmann::json llama3 = {
      {"type", "Split"},
      {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
      {"behavior", "Isolated"}};
  // U+180E (Mongolian vowel separator) is a format character since Unicode 6.3: it joins the
  // punctuation run. PCRE2's own \s would take it as a space and give "x", "\u180e", "\u180e!".
  CHECK(pieces(llama3, "x\u180e\u180e!") == Words{"x", "\u180e\u180e!"});
  CHECK(pieces(llama3, "a\u0085\u0085b") == Words{"a", "\u0085", "\u0085b"});
  CHECK(pieces(llama3, "I'M 12345 ok  \n") == Words{"I", "'M", " ", "123", "45", " ok", "  \n"});
}

TEST_CASE("ByteLevel and Metaspace pre-tokenizers") {
  // GPT-2's regex and alphabet: a space is Ġ (U+0120), a newline Ċ (U+010A).
  CHECK(pieces({{"type", "ByteLevel"}, {"add_prefix_space", false}}, "Hi there\n") == Words{"Hi", "\u0120there", "\u010a"});
  CHECK(pieces({{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}, "Hi") == Words{"\u0120Hi"});
  const nlohmann::json first = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
  CHECK(pieces(first, "Hey friend") == Words{"\u2581Hey", "\u2581friend"});
  CHECK(pieces(first, "Hey friend", false) == Words{"Hey", "\u2581friend"});  // not the text's first span
  CHECK(pieces({{"type", "Metaspace"}, {"prepend_scheme", "never"}, {"split", false}}, " a b") == Words{"\u2581a\u2581b"});
}

TEST_CASE("Added tokens: found in the raw text first, leftmost-longest, with lstrip and rstrip") {
  nlohmann::json added = nlohmann::json::array();
  added.push_back({{"id", 10}, {"content", "<a>"}, {"special", true}});
  added.push_back({{"id", 11}, {"content", "<ab>"}, {"special", false}});
  added.push_back({{"id", 12}, {"content", "<s>"}, {"special", true}, {"lstrip", true}, {"rstrip", true}});
  const nlohmann::json vocab = {{"<", 0}, {">", 1}, {"a", 2}, {"b", 3}, {" ", 4}};
  const auto tok = make(file(vocab, nlohmann::json::array(), {{"added_tokens", added}}));
  CHECK(tok.encode("<ab><a>b") == Ids{11, 10, 3});
  CHECK(tok.encode("a <s>  b") == Ids{2, 12, 3});  // the spaces on both sides are swallowed
  CHECK(tok.encode("<a") == Ids{0, 2});
  CHECK(tok.decode(Ids{11, 10, 3}, {.skip_special_tokens = true}) == "<ab> b");  // no decoder: joined by spaces
}

TEST_CASE("Post-processors: TemplateProcessing around the text, nested in a Sequence") {
  nlohmann::json added = nlohmann::json::array({{{"id", 5}, {"content", "<s>"}, {"special", true}},
                                                {{"id", 6}, {"content", "</s>"}, {"special", true}}});
  const auto tmpl = [](const std::string& name, milora::text::TokenId id, bool after) {
    nlohmann::json single = nlohmann::json::array();
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    const nlohmann::json special = {{"SpecialToken", {{"id", name}, {"type_id", 0}}}};
    if (after) single.push_back(special);
    else single.insert(single.begin(), special);
    nlohmann::json specials = nlohmann::json::object();
    specials[name] = {{"id", name}, {"ids", {id}}};
    return nlohmann::json{{"type", "TemplateProcessing"}, {"single", single}, {"special_tokens", specials}};
  };
  const nlohmann::json post = {{"type", "Sequence"}, {"processors", {{{"type", "ByteLevel"}}, tmpl("<s>", 5, false), tmpl("</s>", 6, true)}}};
  const auto tok = make(file({{"a", 0}}, nlohmann::json::array(), {{"added_tokens", added}, {"post_processor", post}}));
  CHECK(tok.encode("aa") == Ids{5, 0, 0, 6});
  CHECK(tok.encode("aa", false) == Ids{0, 0});
  CHECK(tok.encode("") == Ids{5, 6});
}

TEST_CASE("Decoders: byte fallback, strip, metaspace, and ill-formed UTF-8 as U+FFFD") {
  const nlohmann::json vocab = {{"\u2581a", 0}, {"<0xE4>", 1}, {"<0xB8>", 2}, {"<0xAD>", 3}, {"\u2581", 4}};
  const nlohmann::json seq = {{"type", "Sequence"},
                              {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                            {{"type", "ByteFallback"}}, {{"type", "Fuse"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  const auto tok = make(file(vocab, nlohmann::json::array(), {{"decoder", seq}}));
  CHECK(tok.decode(Ids{0, 1, 2, 3}) == "a\u4e2d");            // 中 from three byte tokens; the leading space stripped
  CHECK(tok.decode(Ids{0, 1, 2}) == "a\ufffd\ufffd");         // a cut character: one U+FFFD per byte, as HF's ByteFallback
  // ByteLevel: the bytes of a cut character become one U+FFFD (maximal subpart, as TextDecoder).
  CHECK(milora::text::to_utf8_lossy("a\xE4\xB8") == "a\ufffd");
  CHECK(milora::text::to_utf8_lossy("\xE4\xB8" "b\xFF") == "\ufffd" "b\ufffd");
  const auto meta = make(file(vocab, nlohmann::json::array(), {{"decoder", {{"type", "Metaspace"}, {"prepend_scheme", "first"}}}}));
  CHECK(meta.decode(Ids{0, 4, 0}) == "a  a");
  CHECK(milora::text::TokenizerJson::clean_up_tokenization("Hi , you do n't know . ' x ' ") == "Hi, you don't know.'x'");
}

TEST_CASE("Normalizers: NFC, Prepend, Replace in sequence") {
  const nlohmann::json norm = {{"type", "Sequence"},
                               {"normalizers", {{{"type", "NFC"}}, {{"type", "Prepend"}, {"prepend", "_"}},
                                                {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "_"}}}}};
  const nlohmann::json vocab = {{"_", 0}, {"\u00e9", 1}, {"e", 2}, {"\u0301", 3}};
  const auto tok = make(file(vocab, nlohmann::json::array(), {{"normalizer", norm}}));
  CHECK(tok.encode("e\u0301 e") == Ids{0, 1, 0, 2});  // e + combining acute composes to é
  CHECK(tok.encode("") == Ids{});                        // Prepend adds nothing to an empty text
}

TEST_CASE("tokenizer.json: what is not implemented is refused by name, never tokenized differently") {
  const nlohmann::json v = {{"a", 0}, {"b", 1}};
  const auto contains = [](const std::string& message, const char* what) {
    INFO(message);
    CHECK(message.find(what) != std::string::npos);
  };
  contains(error_of(file(v, nlohmann::json::array(), {{"model", {{"type", "WordPiece"}}}})), "the model type 'WordPiece' is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"model", {{"dropout", 0.1}}}})), "BPE dropout is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"model", {{"continuing_subword_prefix", "##"}}}})), "continuing_subword_prefix is \"##\"");
  contains(error_of(file(v, nlohmann::json::array(), {{"normalizer", {{"type", "Lowercase"}}}})), "the normalizer 'Lowercase' is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"pre_tokenizer", {{"type", "Whitespace"}}}})), "the pre-tokenizer 'Whitespace' is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"decoder", {{"type", "CTC"}}}})), "the decoder 'CTC' is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"post_processor", {{"type", "RobertaProcessing"}}}})),
           "the post-processor 'RobertaProcessing' is not supported");
  contains(error_of(file(v, nlohmann::json::array(), {{"truncation", {{"max_length", 8}}}})), "\"truncation\" is set");
  contains(error_of(file(v, nlohmann::json::array(), {{"added_tokens", {{{"id", 2}, {"content", "x"}, {"single_word", true}}}}})),
           "single_word: true, which is not supported");
  contains(error_of(file(v, {"a c"})), "merges[0] ('a', 'c'): 'c' is not in the vocabulary");
  contains(error_of(file(v, {"a b"})), "'ab' is not in the vocabulary");
  contains(error_of(file({{"a", 0}, {"b", 0}}, nlohmann::json::array())), "id 0 is given to both");
  contains(error_of(file(v, nlohmann::json::array(), {{"pre_tokenizer", {{"type", "Split"}, {"pattern", {{"Regex", "(?<!a+)b"}}}}}})),
           "is not supported (PCRE2: ");
  const auto tok = make(file(v, nlohmann::json::array()));
  CHECK_THROWS_WITH_AS(tok.encode("a\xC3("), "the text to encode is not valid UTF-8 (byte 1 is 0xc3)", milora::value_error);
  CHECK_THROWS_WITH_AS(tok.decode(Ids{0, 7}), "decode: id 1 is 7, which no token of this tokenizer has (ids below 2)", milora::value_error);
  CHECK_THROWS_WITH_AS(make(file(v, nlohmann::json::array()), {{"eos_token", "</s>"}}),
                       "test tokenizer.json: tokenizer_config.json's eos_token \"</s>\" is not a token", milora::format_error);
}
