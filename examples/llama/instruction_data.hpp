// Fine-tuning data as JSON lines, one example per line, in the formats TRL and axolotl read:
//   {"text": "..."}                                        plain text, every token learned
//   {"instruction": "...", "input": "...", "output": "..."} Alpaca ("input" optional)
//   {"prompt": "...", "completion": "..."}                 a prompt and its completion
//   {"messages": [{"role": "user", "content": "..."}, ...]} a conversation (system, user,
//                                                          assistant, tool)
// Only the answers are learned by default (the output, the completion, every assistant turn with
// the template's end-of-turn tokens), as the MiLoRA paper's instruction, math and commonsense
// setups train; `train_on_prompt` learns every token. An EOS follows each answer that the template
// does not end itself (Alpaca, prompt/completion, text).
//
// Conversations are written by the model's chat template (chat_template.hpp). Which tokens are an
// answer: the conversation is rendered up to the answer with the generation prompt (P) and up to
// the end of the answer (F), and the answer is the tokens of the whole conversation between the
// longest common prefix with tokens(P) and that with tokens(F). Where a template's tokens do not
// split cleanly at P's end (a BPE merge across the boundary), the boundary token counts as prompt,
// and the example is counted in `boundary_merges`.
//
// ExampleLoader serves the examples shuffled per epoch with a seed, one per row (padded: the pads
// and the prompt are kIgnoreIndex targets, so a padded row gives the loss and gradients of the
// example run alone, the attention being causal and positions starting at 0 in every row) or
// packed, as many whole examples per row as fit, each attending to itself only and its positions
// starting at 0 (the row's segment starts, AttentionShape::segment_start), which gives the same
// losses and gradients with less padding. Its cursor is the global example position, so a
// checkpoint resumes mid-epoch exactly.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "data.hpp"
#include "kernels.hpp"
#include "milora/core/errors.hpp"
#include "milora/io/json.hpp"
#if defined(MILORA_HAS_TOKENIZER_JSON)
#include "text/chat_template.hpp"
#endif

namespace llama {

/// One example: its tokens, and for each whether it is learned (a target when predicted from the
/// token before it).
struct Example {
  std::vector<Token> tokens;
  std::vector<std::uint8_t> learned;
};

struct InstructionOptions {
  bool train_on_prompt = false;
  std::string prompt_format = "auto";  // auto: Alpaca records as Alpaca's prompt, chats by the model's template;
                                       // model: the model's chat template for every record; alpaca
  bool skip_long = false;              // an example longer than seq + 1 tokens: skipped, else truncated
  Index seq = 0;
};

struct ExampleSet {
  std::vector<Example> examples;
  std::string format;                  // text, alpaca, prompt_completion or chat
  Index lines = 0, truncated = 0, skipped_long = 0, without_answer = 0, boundary_merges = 0;
  bool empty() const { return examples.empty(); }
  Index learned_tokens() const {
    Index n = 0;
    for (const auto& e : examples) n += Index(std::count(e.learned.begin() + 1, e.learned.end(), 1));
    return n;
  }
  /// All tokens, example after example (what calibration and the token count see).
  std::vector<Token> concatenated() const {
    std::vector<Token> all;
    for (const auto& e : examples) all.insert(all.end(), e.tokens.begin(), e.tokens.end());
    return all;
  }
};

namespace detail_instruction {

inline std::size_t common_prefix(const std::vector<Token>& a, const std::vector<Token>& b) {
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return i;
}

inline const std::string& string_field(const nlohmann::json& j, const char* key, const std::string& where, bool required = true) {
  static const std::string empty;
  if (!j.contains(key)) {
    if (!required) return empty;
    throw milora::format_error(milora::detail::concat(where, ": the field \"", key, "\" is missing"));
  }
  if (!j[key].is_string()) throw milora::format_error(milora::detail::concat(where, ": \"", key, "\" is ", j[key].dump(), ", not a string"));
  return j[key].get_ref<const std::string&>();
}

}  // namespace detail_instruction

/// Reads a JSON-lines file of examples (see the header comment). `chat_template` is the model's
/// (null: the model folder has none). Errors name the file and line: a line that is not JSON, a
/// missing or non-string field, an unknown role, a file mixing formats, no examples at all.
inline ExampleSet read_instruction_data(const std::filesystem::path& path, const Tokenizer& tokenizer, Index vocab_size,
                                 const InstructionOptions& options,
#if defined(MILORA_HAS_TOKENIZER_JSON)
                                 const milora::text::ChatTemplate* chat_template
#else
                                 const void* chat_template
#endif
) {
  using milora::detail::concat;
  using namespace detail_instruction;
  if (options.seq <= 0) throw milora::value_error("read_instruction_data: seq must be positive");
  if (options.prompt_format != "auto" && options.prompt_format != "model" && options.prompt_format != "alpaca")
    throw milora::value_error(concat("the prompt format '", options.prompt_format, "' is not auto, model or alpaca"));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw milora::io_error(concat("cannot open '", path.string(), "'"));
  ExampleSet set;
  const std::optional<Token> eos = tokenizer.eos_id();
#if defined(MILORA_HAS_TOKENIZER_JSON)
  std::optional<milora::text::ChatTemplate> alpaca_template;
#endif
  std::string line;
  Index line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = concat("'", path.string(), "':", line_no);
    const nlohmann::json j = milora::io::parse_json_strict(line.data(), line.data() + line.size(), where);
    if (!j.is_object()) throw milora::format_error(where + ": not a JSON object");
    const std::string format = j.contains("messages") ? "chat"
                               : j.contains("instruction") || j.contains("output") ? "alpaca"
                               : j.contains("prompt") || j.contains("completion") ? "prompt_completion"
                               : j.contains("text") ? "text"
                                                    : "";
    if (format.empty())
      throw milora::format_error(where + ": no \"text\", \"instruction\"/\"output\", \"prompt\"/\"completion\" or \"messages\" field");
    if (set.format.empty()) set.format = format;
    if (format != set.format)
      throw milora::format_error(concat(where, ": a ", format, " record in a file of ", set.format, " records"));
    ++set.lines;

    Example ex;
    // Pieces of the example: [prompt end, answer end) ranges of learned tokens in `ex.tokens`.
    std::vector<std::pair<std::size_t, std::size_t>> answers;
    bool append_eos = false;
    if (format == "text") {
      ex.tokens = tokenizer.encode(string_field(j, "text", where));
      answers.emplace_back(0, ex.tokens.size());
      append_eos = true;
    } else if (format == "prompt_completion") {
      const std::string& prompt = string_field(j, "prompt", where);
      const std::string& completion = string_field(j, "completion", where);
      const auto p = tokenizer.encode(prompt);
      ex.tokens = tokenizer.encode(prompt + completion);
      const std::size_t b = common_prefix(ex.tokens, p);
      set.boundary_merges += b != p.size();
      answers.emplace_back(b, ex.tokens.size());
      append_eos = true;
    } else {
#if defined(MILORA_HAS_TOKENIZER_JSON)
      nlohmann::json messages = nlohmann::json::array();
      if (format == "alpaca") {
        messages.push_back({{"role", "user"}, {"content", string_field(j, "instruction", where)}});
        if (const std::string& input = string_field(j, "input", where, false); !input.empty())
          messages.push_back({{"role", "user"}, {"content", input}});
        messages.push_back({{"role", "assistant"}, {"content", string_field(j, "output", where)}});
      } else {
        if (!j["messages"].is_array() || j["messages"].empty()) throw milora::format_error(where + ": \"messages\" is not a non-empty array");
        for (std::size_t m = 0; m < j["messages"].size(); ++m) {
          const auto& msg = j["messages"][m];
          const std::string here = concat(where, ": messages[", m, "]");
          if (!msg.is_object()) throw milora::format_error(here + " is not an object");
          const std::string& role = string_field(msg, "role", here);
          if (role != "system" && role != "user" && role != "assistant" && role != "tool")
            throw milora::format_error(concat(here, ".role '", role, "' is not system, user, assistant or tool"));
          string_field(msg, "content", here);
        }
        messages = j["messages"];
      }
      const bool alpaca = options.prompt_format == "alpaca" || (options.prompt_format == "auto" && format == "alpaca");
      if (alpaca && !alpaca_template) alpaca_template = milora::text::ChatTemplate::alpaca();  // read once, not per record
      if (!alpaca && chat_template == nullptr)
        throw milora::format_error(concat(where, ": a ", format, " record needs the model's chat template, and its folder has none ",
                                          "(--prompt-format alpaca writes single-turn records in Alpaca's format)"));
      const milora::text::ChatTemplate& t = alpaca ? *alpaca_template : *chat_template;
      // Alpaca's prompt writes no special tokens: the tokenizer adds its BOS, and an EOS follows the answer.
      const bool specials = alpaca;
      append_eos = alpaca;
      try {
        ex.tokens = tokenizer.encode(t.render(messages, false), specials);
        for (std::size_t m = 0; m < messages.size(); ++m) {
          if (messages[m]["role"] != "assistant") continue;
          const nlohmann::json before(messages.begin(), messages.begin() + std::ptrdiff_t(m));
          const nlohmann::json through(messages.begin(), messages.begin() + std::ptrdiff_t(m + 1));
          const auto p = tokenizer.encode(t.render(before, true), specials);
          const auto f = tokenizer.encode(t.render(through, false), specials);
          const std::size_t b = common_prefix(ex.tokens, p), e = common_prefix(ex.tokens, f);
          set.boundary_merges += b != p.size();
          if (e > b) answers.emplace_back(b, alpaca ? ex.tokens.size() : e);
        }
      } catch (const milora::text::jinja::template_error& err) {
        throw milora::format_error(concat(where, ": ", err.what()));
      }
#else
      (void)chat_template;
      throw milora::format_error(concat(where, ": ", format, " records need tokenizer.json support (PCRE2, ICU) in this build"));
#endif
    }
    if (append_eos && eos) {
      ex.tokens.push_back(*eos);
      if (!answers.empty() && answers.back().second == ex.tokens.size() - 1) ++answers.back().second;
    }
    ex.learned.assign(ex.tokens.size(), options.train_on_prompt ? 1 : 0);
    for (const auto& [b, e] : answers)
      for (std::size_t i = b; i < e; ++i) ex.learned[i] = 1;
    for (std::size_t i = 0; i < ex.tokens.size(); ++i)
      if (ex.tokens[i] < 0 || ex.tokens[i] >= vocab_size)
        throw milora::value_error(concat(where, ": token ", i, " is ", ex.tokens[i], ", not below vocab_size ", vocab_size));
    if (Index(ex.tokens.size()) > options.seq + 1) {
      if (options.skip_long) {
        ++set.skipped_long;
        continue;
      }
      ++set.truncated;
      ex.tokens.resize(std::size_t(options.seq + 1));
      ex.learned.resize(std::size_t(options.seq + 1));
    }
    // The first token is never a target (nothing predicts it): an example needs a learned token after it.
    if (ex.tokens.size() < 2 || std::find(ex.learned.begin() + 1, ex.learned.end(), 1) == ex.learned.end()) {
      ++set.without_answer;
      continue;
    }
    set.examples.push_back(std::move(ex));
  }
  if (set.examples.empty())
    throw milora::value_error(concat("'", path.string(), "' has no usable example (", set.lines, " records, ", set.skipped_long,
                                     " longer than --seq + 1 and skipped, ", set.without_answer, " without a token to learn, ",
                                     set.truncated, " of them truncated to --seq + 1 = ", options.seq + 1, ")"));
  return set;
}

#if defined(MILORA_HAS_TOKENIZER_JSON)
/// The model folder's chat template, or none when its tokenizer_config.json has none (a base model).
inline std::optional<milora::text::ChatTemplate> model_chat_template(const std::filesystem::path& dir) {
  const auto path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  const auto config = milora::io::read_json_file(path);
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
  return milora::text::ChatTemplate::from_model_folder(dir);
}
#else
inline std::optional<int> model_chat_template(const std::filesystem::path&) { return std::nullopt; }
#endif

/// The row of `ex` in a batch: seq inputs and targets, padded (pad inputs are token 0, every pad or
/// prompt target is kIgnoreIndex).
inline void example_row(const Example& ex, Index seq, Token* inputs, Token* targets) {
  const Index n = std::min<Index>(Index(ex.tokens.size()) - 1, seq);
  for (Index t = 0; t < seq; ++t) {
    inputs[t] = t < Index(ex.tokens.size()) ? ex.tokens[std::size_t(t)] : 0;
    targets[t] = t < n && ex.learned[std::size_t(t + 1)] ? ex.tokens[std::size_t(t + 1)] : kIgnoreIndex;
  }
}

/// Batches of examples, one per row or packed, in a seeded order that changes every epoch.
class ExampleLoader final : public Batches {
 public:
  ExampleLoader(ExampleSet set, Index batch, Index seq, std::uint64_t seed, bool pack = false)
      : set_(std::move(set)), batch_(batch), seq_(seq), seed_(seed), pack_(pack) {
    if (batch <= 0 || seq <= 0) throw milora::value_error(milora::detail::concat("ExampleLoader: batch ", batch, " and seq ", seq, " must be positive"));
    if (set_.examples.empty()) throw milora::value_error("ExampleLoader: no examples");
    order_for(0);
  }
  void next(std::vector<Token>& inputs, std::vector<Token>& targets) override {
    inputs.resize(std::size_t(batch_ * seq_));
    targets.resize(std::size_t(batch_ * seq_));
    segments_.assign(pack_ ? std::size_t(batch_ * seq_) : 0, 0);
    for (Index r = 0; r < batch_; ++r) {
      Token* in = inputs.data() + r * seq_;
      Token* tg = targets.data() + r * seq_;
      if (!pack_) {
        example_row(current(), seq_, in, tg);
        ++cursor_;
        continue;
      }
      // Whole examples while they fit (an example takes len - 1 positions: its last token is only
      // a target); the first always fits, since examples are at most seq + 1 tokens.
      std::int32_t* seg = segments_.data() + r * seq_;
      Index pos = 0;
      while (pos < seq_) {
        const Example& ex = current();
        const Index n = std::min<Index>(Index(ex.tokens.size()) - 1, seq_);
        if (pos > 0 && pos + n > seq_) break;
        example_row(ex, n, in + pos, tg + pos);
        std::fill(seg + pos, seg + pos + n, std::int32_t(pos));
        pos += n;
        ++cursor_;
      }
      for (Index t = pos; t < seq_; ++t) in[t] = 0, tg[t] = kIgnoreIndex, seg[t] = std::int32_t(pos);  // padding, a segment of its own
    }
  }
  /// The last batch's segment starts (packed rows; empty when one example per row).
  std::span<const std::int32_t> segment_starts() const override { return segments_; }
  bool packed() const { return pack_; }
  /// The global example position: epoch * examples + position in the epoch's order.
  std::size_t cursor() const override { return cursor_; }
  void set_cursor(std::size_t c) override {
    cursor_ = c;
    order_for(c / set_.examples.size());
  }
  std::size_t epoch() const { return cursor_ / set_.examples.size(); }
  Index batch() const override { return batch_; }
  Index seq() const override { return seq_; }
  const ExampleSet& examples() const { return set_; }
  /// The examples of epoch `e` in order (a Fisher-Yates shuffle driven by splitmix64 of seed and
  /// epoch, written out so the order is the same with every standard library).
  std::vector<std::size_t> order(std::size_t e) const {
    std::vector<std::size_t> o(set_.examples.size());
    for (std::size_t i = 0; i < o.size(); ++i) o[i] = i;
    std::uint64_t state = seed_ ^ (0x9E3779B97F4A7C15ULL * (e + 1));
    const auto next = [&] {
      std::uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      return z ^ (z >> 31);
    };
    for (std::size_t i = o.size(); i > 1; --i) {
      // An unbiased draw in [0, i): reject the top of the range that does not divide evenly.
      const std::uint64_t limit = UINT64_MAX - UINT64_MAX % i;
      std::uint64_t r;
      do r = next();
      while (r >= limit);
      std::swap(o[i - 1], o[std::size_t(r % i)]);
    }
    return o;
  }

 private:
  const Example& current() {
    const std::size_t n = set_.examples.size();
    if (cursor_ / n != epoch_) order_for(cursor_ / n);
    return set_.examples[order_[cursor_ % n]];
  }
  void order_for(std::size_t e) {
    epoch_ = e;
    order_ = order(e);
  }
  ExampleSet set_;
  Index batch_, seq_;
  std::uint64_t seed_;
  bool pack_;
  std::size_t cursor_ = 0, epoch_ = 0;
  std::vector<std::size_t> order_;
  std::vector<std::int32_t> segments_;
};

/// Mean loss over the learned tokens of every example of `set` (in file order, `batch` rows at a
/// time; at most `batches` batches when positive): each batch's mean weighted by its learned tokens.
template <class Model>
std::pair<double, Index> evaluate(Model& model, const ExampleSet& set, Index batch, Index seq, Index batches = 0) {
  double total = 0;
  Index counted = 0;
  std::vector<Token> in, tg;
  const Index n = Index(set.examples.size());
  for (Index first = 0, done = 0; first < n && (batches <= 0 || done < batches); first += batch, ++done) {
    const Index b = std::min(batch, n - first);
    in.resize(std::size_t(b * seq));
    tg.resize(std::size_t(b * seq));
    for (Index r = 0; r < b; ++r) example_row(set.examples[std::size_t(first + r)], seq, in.data() + r * seq, tg.data() + r * seq);
    model.forward(in, b, seq);
    const Index count = Index(std::count_if(tg.begin(), tg.end(), [](Token t) { return t != kIgnoreIndex; }));
    total += model.loss(tg) * double(count);
    counted += count;
  }
  return {total / double(counted), counted};
}

}  // namespace llama
