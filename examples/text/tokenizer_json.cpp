// TokenizerJson (tokenizer_json.hpp): reading the two files and the encode / decode pipeline.
#include "tokenizer_json.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "added_tokens.hpp"
#include "bpe.hpp"
#include "decoder.hpp"
#include "milora/core/errors.hpp"
#include "milora/io/json.hpp"
#include "normalizer.hpp"
#include "post_processor.hpp"
#include "pre_tokenizer.hpp"
#include "utf8.hpp"

namespace milora::text {

struct TokenizerJson::Pipeline {
  std::unique_ptr<Bpe> bpe;
  std::vector<AddedToken> added;
  std::unique_ptr<AddedTokenMatcher> raw_matcher, normalized_matcher;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  Decoder decoder;
  std::unordered_set<TokenId> special_ids;
  std::unordered_map<TokenId, std::size_t> added_by_id;
  StringMap<std::size_t> added_by_content;
};

std::shared_ptr<const TokenizerJson> TokenizerJson::load(const std::filesystem::path& dir) {
  const auto config_path = dir / "tokenizer_config.json";
  return std::make_shared<const TokenizerJson>(milora::io::read_json_file(dir / "tokenizer.json"),
                                               std::filesystem::exists(config_path) ? milora::io::read_json_file(config_path)
                                                                                    : nlohmann::json::object(),
                                               "'" + (dir / "tokenizer.json").string() + "'");
}

TokenizerJson::~TokenizerJson() = default;
TokenizerJson::TokenizerJson(TokenizerJson&&) noexcept = default;
TokenizerJson& TokenizerJson::operator=(TokenizerJson&&) noexcept = default;

TokenizerJson::TokenizerJson(const nlohmann::json& tokenizer, const nlohmann::json& config, const std::string& where)
    : pipeline_(std::make_unique<Pipeline>()) {
  using milora::detail::concat;
  Pipeline& p = *pipeline_;
  if (!tokenizer.is_object()) throw milora::format_error(where + ": not a JSON object");
  for (const char* key : {"truncation", "padding"})
    if (tokenizer.contains(key) && !tokenizer[key].is_null())
      throw milora::format_error(concat(where, ": \"", key, "\" is set; milora cuts and pads sequences itself, so it must be null"));
  if (!tokenizer.contains("model")) throw milora::format_error(where + ": no \"model\"");
  p.bpe = std::make_unique<Bpe>(tokenizer["model"], where);

  const auto& added = tokenizer.value("added_tokens", nlohmann::json::array());
  if (!added.is_array()) throw milora::format_error(where + ": \"added_tokens\" is not an array");
  for (std::size_t i = 0; i < added.size(); ++i) {
    const auto& a = added[i];
    const std::string here = concat(where, ": added_tokens[", i, "]");
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") || !a["id"].is_number_integer() ||
        a["id"].get<long long>() < 0 || a["id"].get<long long>() >= (1LL << 31) - 1)
      throw milora::format_error(here + " needs a \"content\" string and an \"id\" in [0, 2^31 - 1)");
    AddedToken t;
    t.content = a["content"].get<std::string>();
    require_utf8(t.content, here);
    t.id = a["id"].get<TokenId>();
    const auto flag = [&](const char* key) {
      if (!a.contains(key)) return false;
      if (!a[key].is_boolean()) throw milora::format_error(concat(here, ": \"", key, "\" is not true or false"));
      return a[key].get<bool>();
    };
    t.special = flag("special");
    t.lstrip = flag("lstrip");
    t.rstrip = flag("rstrip");
    t.normalized = flag("normalized");
    if (flag("single_word"))
      throw milora::format_error(concat(here, " ('", t.content, "') has single_word: true, which is not supported"));
    p.added.push_back(std::move(t));
  }
  p.normalizer = Normalizer(tokenizer.value("normalizer", nlohmann::json()), where + ": normalizer");
  p.pre_tokenizer = PreTokenizer(tokenizer.value("pre_tokenizer", nlohmann::json()), where + ": pre_tokenizer");
  auto contents = std::make_shared<std::unordered_set<std::string>>();
  std::vector<int> raw, normalized;
  for (std::size_t i = 0; i < p.added.size(); ++i) {
    contents->insert(p.added[i].content);
    // An added token marked "normalized" is looked for in the normalized text, in its normalized
    // form (as transformers.js does; Hugging Face's tokenizers normalize it too).
    if (p.added[i].normalized && !p.normalizer.empty()) {
      p.added[i].content = p.normalizer(p.added[i].content);
      normalized.push_back(int(i));
    } else {
      raw.push_back(int(i));
    }
    if (p.added[i].special) p.special_ids.insert(p.added[i].id);
    p.added_by_id.try_emplace(p.added[i].id, i);
    p.added_by_content.try_emplace(p.added[i].content, i);
  }
  p.raw_matcher = std::make_unique<AddedTokenMatcher>(p.added, raw);
  p.normalized_matcher = std::make_unique<AddedTokenMatcher>(p.added, normalized);
  p.decoder = Decoder(tokenizer.value("decoder", nlohmann::json()), where + ": decoder", contents);
  SpecialTokensAround around;
  read_post_processor(tokenizer.value("post_processor", nlohmann::json()), where + ": post_processor", around);
  before_ = std::move(around.before);
  after_ = std::move(around.after);

  id_limit_ = p.bpe->id_limit();
  for (const auto& t : p.added) id_limit_ = std::max(id_limit_, std::size_t(t.id) + 1);
  for (const auto id : before_) check_id(id, where + ": post_processor");
  for (const auto id : after_) check_id(id, where + ": post_processor");

  // tokenizer_config.json: which tokens are BOS and EOS, and whether decode cleans up spaces.
  const auto token_of_config = [&](const char* key) -> std::optional<TokenId> {
    if (!config.contains(key) || config[key].is_null()) return std::nullopt;
    const auto& v = config[key];
    const std::string content = v.is_string() ? v.get<std::string>()
                                : v.is_object() && v.contains("content") && v["content"].is_string() ? v["content"].get<std::string>()
                                                                                                     : std::string();
    const auto id = token_to_id(content);
    if (!id) throw milora::format_error(concat(where, ": tokenizer_config.json's ", key, " ", v.dump(), " is not a token"));
    return id;
  };
  bos_ = token_of_config("bos_token");
  eos_ = token_of_config("eos_token");
  // transformers.js's default when the config does not say (transformers' own default moved to false
  // in 4.45; a model's config that matters says it explicitly).
  clean_up_spaces_ = config.value("clean_up_tokenization_spaces", true);
}

std::vector<TokenId> TokenizerJson::encode(std::string_view text, bool add_special_tokens) const {
  const Pipeline& p = *pipeline_;
  require_utf8(text, "the text to encode");
  std::vector<TokenId> ids;
  if (add_special_tokens) ids = before_;
  std::vector<Span> sections, subsections;
  std::vector<std::string> words;
  p.raw_matcher->split(text, sections);
  for (std::size_t k = 0; k < sections.size(); ++k) {
    const Span& sec = sections[k];
    if (sec.token >= 0) {
      ids.push_back(p.added[std::size_t(sec.token)].id);
      continue;
    }
    const std::string normalized = p.normalizer(std::string(text.substr(sec.begin, sec.end - sec.begin)));
    if (normalized.empty()) continue;
    p.normalized_matcher->split(normalized, subsections);
    for (const Span& sub : subsections) {
      if (sub.token >= 0) {
        ids.push_back(p.added[std::size_t(sub.token)].id);
        continue;
      }
      p.pre_tokenizer.split(std::string_view(normalized).substr(sub.begin, sub.end - sub.begin), k == 0 && sub.begin == 0, words);
      for (const auto& w : words) p.bpe->encode_word(w, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), after_.begin(), after_.end());
  return ids;
}

std::string TokenizerJson::decode(std::span<const TokenId> ids, DecodeOptions options) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    check_id(ids[i], milora::detail::concat("decode: id ", i));
    if (options.skip_special_tokens && is_special(ids[i])) continue;
    tokens.emplace_back(id_to_token(ids[i]));
  }
  std::string out = pipeline_->decoder(std::move(tokens));
  if (options.clean_up_tokenization_spaces.value_or(clean_up_spaces_)) out = clean_up_tokenization(out);
  return out;
}

std::optional<TokenId> TokenizerJson::token_to_id(std::string_view token) const {
  const Pipeline& p = *pipeline_;
  if (const auto it = p.added_by_content.find(token); it != p.added_by_content.end()) return p.added[it->second].id;
  return p.bpe->id_of(token);
}

std::string_view TokenizerJson::id_to_token(TokenId id) const {
  const Pipeline& p = *pipeline_;
  if (const auto it = p.added_by_id.find(id); it != p.added_by_id.end()) return p.added[it->second].content;
  return p.bpe->token_of(id);
}

bool TokenizerJson::is_special(TokenId id) const { return pipeline_->special_ids.count(id) != 0; }

std::string TokenizerJson::clean_up_tokenization(std::string_view s) {
  static constexpr std::pair<std::string_view, std::string_view> rules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  std::string out(s);
  for (const auto& [from, to] : rules) {  // one rule after the other, each over the whole text, as transformers applies them
    std::string next;
    std::size_t last = 0;
    for (std::size_t at = out.find(from); at != std::string::npos; at = out.find(from, at + from.size())) {
      next.append(out, last, at - last).append(to);
      last = at + from.size();
    }
    out = next.append(out, last, std::string::npos);
  }
  return out;
}

void TokenizerJson::check_id(TokenId id, const std::string& where) const {
  if (id < 0 || std::size_t(id) >= id_limit_ || id_to_token(id).empty())
    throw milora::value_error(milora::detail::concat(where, " is ", id, ", which no token of this tokenizer has (ids below ", id_limit_, ")"));
}

}  // namespace milora::text
