// A model folder's tokenizer as llama.cpp's tokenizer.ggml.* keys, so that a GGUF milora writes
// tokenizes in llama.cpp as the folder's tokenizer does in transformers.
//
// tokenizer.json (Hugging Face, BPE), two kinds llama.cpp implements:
//   * byte-level BPE (LLaMA-3.x, Qwen2/3, GPT-2): model "gpt2", the vocabulary in its byte-level
//     spelling, the merges as "left right", and the pre-tokenizer's split pattern named as llama.cpp
//     names it (tokenizer.ggml.pre: "llama-bpe", "qwen2", "gpt-2"). A pattern llama.cpp does not
//     know would split text differently, so it is refused rather than written as "default".
//   * sentencepiece-style BPE with byte fallback (LLaMA-2, Mistral): model "llama", the pieces with
//     scores. llama.cpp merges the adjacent pair whose merged piece scores highest, Hugging Face
//     the pair of lowest merge rank, so a piece made by merge number k scores -k (what LLaMA-2's
//     tokenizer.model holds, rank for rank); pieces no merge makes score below every merge.
// tokenizer.model (sentencepiece) when the folder has no tokenizer.json: its pieces, scores and
// types as they are (model "llama").
// Token types are llama.cpp's: 1 normal, 2 unknown, 3 control (special added tokens), 4 user
// defined (other added tokens), 6 byte (<0xXX>). Ids the tokenizer does not use, up to the model's
// vocab_size, become "[PAD<id>]" (user defined), as convert_hf_to_gguf.py writes them. BOS / EOS /
// padding ids and add_bos_token come from tokenizer_config.json (add_bos_token, else whether the
// post-processor's template starts with the BOS), the chat template goes to tokenizer.chat_template.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/io/gguf.hpp"
#include "milora/io/json.hpp"

#if defined(MILORA_HAS_SENTENCEPIECE)
#include <sentencepiece_processor.h>
#endif

namespace llama {

namespace gguf_tokenizer_detail {

enum TokenType : std::int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kByte = 6 };

// tokenizer_config.json's "bos_token": a string, {"content": ...} (AddedToken), or null.
inline std::optional<std::string> special_token(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return std::nullopt;
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

// The Split regex of a byte-level pre-tokenizer (none: GPT-2's own ByteLevel regex).
inline std::optional<std::string> split_pattern(const nlohmann::json& pre) {
  if (!pre.is_object()) return std::nullopt;
  if (pre.value("type", "") == "Split" && pre.contains("pattern") && pre["pattern"].contains("Regex"))
    return pre["pattern"]["Regex"].get<std::string>();
  if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers"))
    for (const auto& p : pre["pretokenizers"])
      if (auto s = split_pattern(p)) return s;
  return std::nullopt;
}

inline bool has_component(const nlohmann::json& j, const std::string& type) {
  if (!j.is_object()) return false;
  if (j.value("type", "") == type) return true;
  for (const char* list : {"pretokenizers", "normalizers", "decoders", "processors"})
    if (j.contains(list) && j[list].is_array())
      for (const auto& c : j[list])
        if (has_component(c, type)) return true;
  return false;
}

// Whether the post-processor's single-text template starts with `bos`.
inline bool template_adds(const nlohmann::json& post, const std::string& bos) {
  if (!post.is_object()) return false;
  if (post.value("type", "") == "TemplateProcessing" && post.contains("single") && !post["single"].empty()) {
    const auto& first = post["single"][0];
    return first.contains("SpecialToken") && first["SpecialToken"].value("id", "") == bos;
  }
  if (post.value("type", "") == "Sequence" && post.contains("processors"))
    for (const auto& p : post["processors"])
      if (template_adds(p, bos)) return true;
  return false;
}

}  // namespace gguf_tokenizer_detail

/// Whether `dir` holds a tokenizer this header can write (tokenizer.json, or tokenizer.model with
/// sentencepiece compiled in).
inline bool has_gguf_tokenizer(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "tokenizer.json")) return true;
#if defined(MILORA_HAS_SENTENCEPIECE)
  return std::filesystem::exists(dir / "tokenizer.model");
#else
  return false;
#endif
}

/// Writes the tokenizer.ggml.* keys (and tokenizer.chat_template) of the tokenizer in `dir` for a
/// model with `vocab_size` ids. Throws format_error naming the file and what llama.cpp could not
/// reproduce.
inline void add_gguf_tokenizer(milora::io::GgufWriter& w, const std::filesystem::path& dir, std::int64_t vocab_size) {
  namespace io = milora::io;
  using milora::detail::concat;
  using namespace gguf_tokenizer_detail;
  using Item = io::GgufValue::Item;
  const auto config_path = dir / "tokenizer_config.json";
  const nlohmann::json config = std::filesystem::exists(config_path) ? io::read_json_file(config_path) : nlohmann::json::object();
  std::vector<std::string> tokens(static_cast<std::size_t>(vocab_size));
  std::vector<std::int64_t> types(std::size_t(vocab_size), kUserDefined);
  std::vector<double> scores;
  for (std::int64_t i = 0; i < vocab_size; ++i) tokens[std::size_t(i)] = concat("[PAD", i, "]");
  std::map<std::string, std::int64_t> ids;
  std::optional<std::int64_t> bos, eos, unk, pad;
  bool add_bos = false;
  std::string model;

  const auto json_path = dir / "tokenizer.json";
  if (std::filesystem::exists(json_path)) {
    const std::string where = concat("'", json_path.string(), "'");
    const nlohmann::json j = io::read_json_file(json_path);
    const auto& m = j.at("model");
    if (m.value("type", "") != "BPE") throw milora::format_error(concat(where, ": model type ", m.value("type", "?"), " (GGUF export writes BPE tokenizers)"));
    const bool byte_level = has_component(j.value("pre_tokenizer", nlohmann::json()), "ByteLevel");
    const bool byte_fallback = m.value("byte_fallback", false);
    auto put = [&](const std::string& text, std::int64_t id, std::int64_t type) {
      if (id < 0 || id >= vocab_size) throw milora::format_error(concat(where, ": token '", text, "' has id ", id, " outside the model's vocab_size ", vocab_size));
      tokens[std::size_t(id)] = text;
      types[std::size_t(id)] = type;
      ids[text] = id;
    };
    for (const auto& [text, id] : m.at("vocab").items()) put(text, id.get<std::int64_t>(), kNormal);
    std::vector<std::pair<std::string, std::string>> merges;
    for (const auto& mg : m.at("merges")) {
      if (mg.is_string()) {
        const auto s = mg.get<std::string>();
        const auto space = s.find(' ', 1);
        if (space == std::string::npos) throw milora::format_error(concat(where, ": merge '", s, "' is not 'left right'"));
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else {
        merges.emplace_back(mg.at(0).get<std::string>(), mg.at(1).get<std::string>());
      }
      if (merges.back().first.find(' ') != std::string::npos || merges.back().second.find(' ') != std::string::npos)
        throw milora::format_error(concat(where, ": merge '", merges.back().first, "' + '", merges.back().second,
                                          "' holds a space, which llama.cpp's 'left right' merges cannot say"));
    }
    if (byte_level) {
      model = "gpt2";
      const auto pattern = split_pattern(j["pre_tokenizer"]);
      static const std::map<std::string, std::string> known = {
          {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)", "llama-bpe"},
          {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)", "qwen2"}};
      std::string pre;
      if (!pattern) {
        pre = "gpt-2";
      } else if (auto it = known.find(*pattern); it != known.end()) {
        pre = it->second;
      } else {
        throw milora::format_error(concat(where, ": its pre-tokenizer splits by ", *pattern,
                                          ", which llama.cpp has no name for (known: LLaMA-3's, Qwen2's, GPT-2's)"));
      }
      w.set_string("tokenizer.ggml.model", model);
      w.set_string("tokenizer.ggml.pre", pre);
    } else if (byte_fallback) {
      model = "llama";
      scores.assign(std::size_t(vocab_size), -1e9);  // below every merge: never preferred
      for (std::size_t k = 0; k < merges.size(); ++k)
        if (auto it = ids.find(merges[k].first + merges[k].second); it != ids.end() && scores[std::size_t(it->second)] == -1e9)
          scores[std::size_t(it->second)] = -double(k);
      for (const auto& [text, id] : ids)
        if (text.size() == 6 && text.rfind("<0x", 0) == 0 && text.back() == '>') types[std::size_t(id)] = kByte;
      if (m.contains("unk_token") && m["unk_token"].is_string())
        if (auto it = ids.find(m["unk_token"].get<std::string>()); it != ids.end()) unk = it->second;
      w.set_string("tokenizer.ggml.model", model);
      w.set_string("tokenizer.ggml.pre", "default");
    } else {
      throw milora::format_error(concat(where, ": a BPE without byte-level pre-tokenizer or byte fallback, which llama.cpp does not implement"));
    }
    for (const auto& t : j.value("added_tokens", nlohmann::json::array()))
      put(t.at("content").get<std::string>(), t.at("id").get<std::int64_t>(), t.value("special", false) ? kControl : kUserDefined);
    if (unk) types[std::size_t(*unk)] = kUnknown;  // an added token too in LLaMA-2's file, where it would be control
    if (model == "gpt2") {
      std::vector<Item> items;
      items.reserve(merges.size());
      for (const auto& [a, b] : merges) items.emplace_back(a + " " + b);
      w.set_array("tokenizer.ggml.merges", io::GgufType::STRING, std::move(items));
    }
    const auto find = [&](const char* key) -> std::optional<std::int64_t> {
      const auto text = special_token(config, key);
      if (!text) return std::nullopt;
      auto it = ids.find(*text);
      if (it == ids.end()) throw milora::format_error(concat("'", config_path.string(), "': ", key, " '", *text, "' is not in ", where));
      return it->second;
    };
    bos = find("bos_token");
    eos = find("eos_token");
    pad = find("pad_token");
    if (config.contains("add_bos_token") && config["add_bos_token"].is_boolean())
      add_bos = config["add_bos_token"].get<bool>();
    else
      add_bos = bos && template_adds(j.value("post_processor", nlohmann::json()), tokens[std::size_t(*bos)]);
  } else {
#if defined(MILORA_HAS_SENTENCEPIECE)
    const auto sp_path = dir / "tokenizer.model";
    sentencepiece::SentencePieceProcessor sp;
    if (const auto status = sp.Load(sp_path.string()); !status.ok())
      throw milora::format_error(concat("'", sp_path.string(), "': ", status.ToString()));
    if (sp.GetPieceSize() > vocab_size)
      throw milora::format_error(concat("'", sp_path.string(), "' has ", sp.GetPieceSize(), " pieces but the model's vocab_size is ", vocab_size));
    model = "llama";
    scores.assign(std::size_t(vocab_size), 0.0);
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      tokens[std::size_t(i)] = sp.IdToPiece(i);
      scores[std::size_t(i)] = sp.GetScore(i);
      types[std::size_t(i)] = sp.IsUnknown(i) ? kUnknown : sp.IsControl(i) ? kControl : sp.IsByte(i) ? kByte : sp.IsUnused(i) ? std::int64_t{5} : std::int64_t{kNormal};
    }
    if (sp.bos_id() >= 0) bos = sp.bos_id();
    if (sp.eos_id() >= 0) eos = sp.eos_id();
    if (sp.unk_id() >= 0) unk = sp.unk_id();
    if (sp.pad_id() >= 0) pad = sp.pad_id();
    add_bos = true;  // transformers' LlamaTokenizer, as milora encodes tokenizer.model text
    w.set_string("tokenizer.ggml.model", model);
    w.set_string("tokenizer.ggml.pre", "default");
#else
    throw milora::io_error(concat("'", dir.string(), "' has no tokenizer.json (and sentencepiece, for tokenizer.model, is not compiled in): "
                                  "llama.cpp needs the tokenizer in the GGUF"));
#endif
  }

  std::vector<Item> token_items(tokens.begin(), tokens.end()), type_items(types.begin(), types.end());
  w.set_array("tokenizer.ggml.tokens", io::GgufType::STRING, std::move(token_items));
  w.set_array("tokenizer.ggml.token_type", io::GgufType::I32, std::move(type_items));
  if (!scores.empty()) w.set_array("tokenizer.ggml.scores", io::GgufType::F32, std::vector<Item>(scores.begin(), scores.end()));
  if (bos) w.set_u32("tokenizer.ggml.bos_token_id", std::uint32_t(*bos));
  if (eos) w.set_u32("tokenizer.ggml.eos_token_id", std::uint32_t(*eos));
  if (unk) w.set_u32("tokenizer.ggml.unknown_token_id", std::uint32_t(*unk));
  if (pad) w.set_u32("tokenizer.ggml.padding_token_id", std::uint32_t(*pad));
  w.set_bool("tokenizer.ggml.add_bos_token", add_bos);
  const auto add_eos = config.find("add_eos_token");
  w.set_bool("tokenizer.ggml.add_eos_token", add_eos != config.end() && add_eos->is_boolean() && add_eos->get<bool>());
  if (config.contains("chat_template") && config["chat_template"].is_string())
    w.set_string("tokenizer.chat_template", config["chat_template"].get<std::string>());
}

}  // namespace llama
