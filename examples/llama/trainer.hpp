// Fine-tuning a Llama's adapters: AdamW, warm-up + cosine learning rate, gradient clipping and
// accumulation, held-out loss, a progress line, and checkpoints that are PEFT adapter folders and
// resume bit for bit.
//
// A checkpoint folder (written under a temporary name and renamed, so a crash never leaves half of
// one) holds:
//   adapter_config.json, adapter_model.safetensors   the adapter as trained: for LoRA (and
//                        orthogonal) it applies to the original model; for PiSSA / MiLoRA / OLoRA
//                        to the residual model (PEFT's format)
//   plain_lora/          residual inits only: the same update as a rank-2r LoRA of the *original*
//                        model (PEFT's conversion), which milora-eval / milora-merge / PEFT load as is
//   optimizer.safetensors, trainer_state.json   AdamW's moments, the step, the data cursor and the
//                        run's settings, which a resume checks before continuing
#pragma once

#include <chrono>
#include <concepts>
#include <functional>
#include <memory>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numbers>
#include <optional>
#include <string>
#include <fcntl.h>
#include <unistd.h>

#include "batches.hpp"
#include "data_parallel.hpp"
#include "data.hpp"
#include "milora/core/log.hpp"
#include "milora/io/json.hpp"
#include "milora/optim/adamw.hpp"
#include "non_finite.hpp"
#include "peft_bridge.hpp"
#include "pretrained.hpp"

namespace llama {

struct TrainConfig {
  Index steps = 100;         // optimizer steps
  Index batch = 4, seq = 128;
  Index accumulation = 1;    // micro-batches per optimizer step
  double lr = 2e-4;
  Index warmup = 0;          // steps of linear warm-up
  double weight_decay = 0.0;
  double grad_clip = 1.0;    // max global L2 norm of the adapter gradients (0: no clipping)
  Index eval_every = 0;      // steps between held-out evaluations (0: only at the end)
  Index eval_batches = 8;
  Index save_every = 0;      // steps between checkpoints (0: only at the end)
  Index log_every = 1;
  std::filesystem::path out{};  // where checkpoints go (empty: none)
  bool progress = true;

  void validate() const {
    using milora::detail::concat;
    if (steps <= 0 || batch <= 0 || seq <= 0 || accumulation <= 0)
      throw milora::value_error(concat("steps ", steps, ", batch ", batch, ", seq ", seq, " and accumulation ", accumulation,
                                       " must be positive"));
    if (warmup < 0 || warmup > steps) throw milora::value_error(concat("warmup ", warmup, " must be in [0, steps = ", steps, "]"));
    if (!(grad_clip >= 0)) throw milora::value_error(concat("grad_clip ", grad_clip, " must be >= 0"));
  }
};

/// transformers' get_cosine_schedule_with_warmup: the factor applied to lr for optimizer step
/// `step` (0-based): step / warmup during warm-up, then 0.5 (1 + cos(pi * progress)) down to 0.
inline double lr_factor(Index step, Index warmup, Index total) {
  if (step < warmup) return double(step) / double(std::max<Index>(1, warmup));
  const double progress = double(step - warmup) / double(std::max<Index>(1, total - warmup));
  return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

/// Scales every adapter gradient so that their global L2 norm is at most max_norm, as
/// torch.nn.utils.clip_grad_norm_ does (coefficient max_norm / (norm + 1e-6), capped at 1). Returns
/// the norm before clipping.
template <class Model>
double clip_gradients(Model& model, double max_norm) {
  using BE = typename Model::backend;
  const auto params = model.parameters();
  double sq = 0;
  for (const auto& p : params) sq += BE::squared_norm(p.grad);
  const double norm = std::sqrt(sq);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1)
      for (const auto& p : params) BE::scale(p.grad, typename Model::scalar(coef));
  }
  return norm;
}

/// Mean loss over `batches` batches of `loader` (all of its windows when batches <= 0, without
/// wrapping); the loader's cursor is restored afterwards. Returns {mean loss, tokens}.
template <class Model>
std::pair<double, Index> evaluate(Model& model, const std::vector<Token>& tokens, Index batch, Index seq, Index batches = 0) {
  const Index windows = (Index(tokens.size()) - 1) / seq;
  if (windows <= 0)
    throw milora::value_error(milora::detail::concat("evaluation data has ", tokens.size(), " tokens; needs at least ", seq + 1));
  double total = 0;
  Index counted = 0;
  std::vector<Token> in, tg;
  for (Index w = 0; w < windows && (batches <= 0 || w < batches * batch); w += batch) {
    const Index b = std::min(batch, windows - w);
    in.assign(tokens.begin() + w * seq, tokens.begin() + (w + b) * seq);
    tg.assign(tokens.begin() + w * seq + 1, tokens.begin() + (w + b) * seq + 1);
    model.forward(in, b, seq);
    total += model.loss(tg) * double(b * seq);
    counted += b * seq;
  }
  return {total / double(counted), counted};
}

/// The progress line: step, loss, lr, tokens/s, ETA. Redrawn in place on a terminal, one line
/// every log_every steps otherwise (logs, CI).
class ProgressBar {
 public:
  ProgressBar(Index total, Index first_step, bool enabled)
      : total_(total), first_(first_step), enabled_(enabled), tty_(isatty(fileno(stderr)) != 0),
        start_(std::chrono::steady_clock::now()) {}
  void update(Index step, double loss, double lr, double grad_norm, Index tokens_done) {
    if (!enabled_) return;
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double per_step = secs / double(std::max<Index>(1, step - first_));
    const double eta = per_step * double(total_ - step);
    constexpr int width = 24;
    const int filled = int(double(width) * double(step) / double(total_));
    std::string bar(std::size_t(filled), '=');
    bar.resize(width, ' ');
    std::fprintf(stderr, "%sstep %5lld/%lld [%s] loss %.4f | lr %.2e | |g| %.3f | %.0f tok/s | ETA %02d:%02d%s",
                 tty_ ? "\r" : "", (long long)step, (long long)total_, bar.c_str(), loss, lr, grad_norm,
                 double(tokens_done) / std::max(secs, 1e-9), int(eta) / 60, int(eta) % 60, tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void message(const std::string& m) {
    if (!enabled_) return;
    std::fprintf(stderr, "%s%s\n", tty_ ? "\n" : "", m.c_str());
  }

 private:
  Index total_, first_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_;
};

/// The held-out loss the trainer reports: {mean loss, tokens} over at most `batches` batches (all
/// of them when batches <= 0). Empty: no held-out data.
using HeldOutLoss = std::function<std::pair<double, Index>(Index batches)>;

/// Trains `model`'s adapters on batches from `train` (a token stream or examples: batches.hpp),
/// evaluating on held-out data.
template <class Model>
class Trainer {
 public:
  using BE = typename Model::backend;
  using T = typename Model::scalar;

  /// `run_info` is stored in trainer_state.json and must match on resume (method, rank, model, ...).
  Trainer(Model& model, TrainConfig config, std::unique_ptr<Batches> train, HeldOutLoss held_out, nlohmann::json run_info)
      : model_(model), config_(std::move(config)), train_(std::move(train)), held_out_(std::move(held_out)),
        run_info_(std::move(run_info)), opt_({.lr = config_.lr, .weight_decay = config_.weight_decay}) {
    config_.validate();
    if (!train_) throw milora::value_error("Trainer: no training data");
    if (model.num_adapters() == 0 && !model.full_training())
      throw milora::state_error("Trainer: the model has no adapters and is not in full training");
    opt_.add_all(model.parameters());
    if (!model.full_training()) initial_ = export_adapters(model, base_name());
  }
  /// The same with a loader (DataLoader, ExampleLoader) and held-out data that `evaluate` takes
  /// (held-out tokens, an ExampleSet; empty: none), evaluated in the loader's batch shape.
  template <std::derived_from<Batches> Loader, class Validation = std::vector<Token>>
  Trainer(Model& model, TrainConfig config, Loader train, Validation val, nlohmann::json run_info)
      : Trainer(model, std::move(config), std::make_unique<Loader>(std::move(train)), HeldOutLoss{}, std::move(run_info)) {
    held_out_ = held_out_loss(model, std::move(val), train_->batch(), train_->seq());
  }
  /// The held-out loss of `val` (tokens or an ExampleSet, as `evaluate` takes; empty: none) in
  /// batches of batch x seq.
  template <class Validation>
  static HeldOutLoss held_out_loss(Model& model, Validation val, Index batch, Index seq) {
    if (val.empty()) return {};
    return [&model, val = std::move(val), batch, seq](Index batches) { return evaluate(model, val, batch, seq, batches); };
  }

  Index step() const { return step_; }
  const milora::AdamW<BE>& optimizer() const { return opt_; }
  /// The loader's segment starts of its last batch, when it packs rows (instruction_data.hpp).
  std::span<const std::int32_t> segments() const {
    return train_->segment_starts();
  }
  double last_loss() const { return last_loss_; }

  /// Trains as one rank of a data-parallel job (data_parallel.hpp): this rank reads its share of
  /// every global batch (micro-batch k of the global stream goes to rank k mod ranks), the
  /// gradients are summed over the ranks before each step (each rank's scaled by 1 /
  /// (accumulation * ranks), so the sum is the mean over the global batch), and every
  /// `check_every` steps and after the last one the ranks' parameters are compared bit for bit
  /// (numerical_error naming the ranks that differ). Only rank 0 shows progress, evaluates and
  /// writes checkpoints. Call before resume() and run().
  void distribute(std::shared_ptr<Replicas<BE>> replicas, Index check_every = 10) {
    if (!replicas) return;
    if (check_every < 0) throw milora::value_error(milora::detail::concat("check_every ", check_every, " must be >= 0"));
    train_ = std::make_unique<RankBatches>(std::move(train_), replicas->rank(), replicas->size());
    replicas_ = std::move(replicas);
    check_every_ = check_every;
  }
  /// Whether this process reports and writes (rank 0, or no job).
  bool is_root() const { return !replicas_ || replicas_->rank() == 0; }

  /// One optimizer step: `accumulation` micro-batches, clipping, the scheduled lr, AdamW. Returns
  /// the mean micro-batch loss.
  double train_step() {
    std::vector<Token> in, tg;
    model_.zero_grad();
    double loss = 0;
    const Index ranks = replicas_ ? replicas_->size() : 1;
    for (Index m = 0; m < config_.accumulation; ++m) {
      train_->next(in, tg);
      loss += model_.forward_backward(in, tg, train_->batch(), train_->seq(), 1.0 / double(config_.accumulation * ranks), segments());
    }
    loss /= double(config_.accumulation);
    if (replicas_) {  // the global batch's mean gradient and loss on every rank
      replicas_->sum_gradients(model_.parameters());
      double total[1] = {loss};
      replicas_->sum(total);
      loss = total[0] / double(ranks);
    }
    // A NaN / Inf stops training before the optimizer touches anything: the parameters stay as the
    // last step left them, and no checkpoint is written from them.
    using milora::detail::concat;
    const char* kept = " (the parameters are as step " ;
    if (!std::isfinite(loss)) {
      const std::string where = find_non_finite(model_);
      throw milora::numerical_error(concat("step ", step_ + 1, ": the loss is ", loss, "; ",
                                           where.empty() ? std::string("every weight and the last forward's activations are finite") : where,
                                           kept, step_, " left them; the last checkpoint is intact)"));
    }
    last_grad_norm_ = clip_gradients(model_, config_.grad_clip);
    if (!std::isfinite(last_grad_norm_)) {
      const std::string where = find_non_finite_gradient(model_);
      throw milora::numerical_error(concat("step ", step_ + 1, ": the gradient norm is ", last_grad_norm_, "; ", where, kept, step_,
                                           " left them; the last checkpoint is intact)"));
    }
    opt_.set_lr(config_.lr * lr_factor(step_, config_.warmup, config_.steps));
    opt_.step();
    ++step_;
    last_loss_ = loss;
    if (replicas_ && ((check_every_ > 0 && step_ % check_every_ == 0) || step_ == config_.steps)) check_replicas();
    return loss;
  }

  /// Trains until config.steps, with evaluation, progress and checkpoints.
  void run() {
    ProgressBar bar(config_.steps, step_, config_.progress && is_root());
    Index tokens = 0;
    while (step_ < config_.steps) {
      const double loss = train_step();
      tokens += config_.accumulation * train_->batch() * train_->seq() * (replicas_ ? replicas_->size() : 1);
      if (config_.log_every > 0 && (step_ % config_.log_every == 0 || step_ == config_.steps))
        bar.update(step_, loss, opt_.lr(), last_grad_norm_, tokens);
      const bool last = step_ == config_.steps;
      if (!is_root()) continue;  // the other ranks go on to the next step's reduction
      if (held_out_ && ((config_.eval_every > 0 && step_ % config_.eval_every == 0) || last)) {
        const auto [vl, n] = held_out_(last ? 0 : config_.eval_batches);
        last_val_loss_ = vl;
        bar.message(milora::detail::concat("step ", step_, ": held-out loss ", vl, ", perplexity ", std::exp(vl), " (", n,
                                           " tokens)"));
      }
      if (!config_.out.empty() && ((config_.save_every > 0 && step_ % config_.save_every == 0) || last)) {
        const auto dir = save_checkpoint();
        bar.message("saved " + dir.string());
      }
    }
  }
  std::optional<double> last_val_loss() const { return last_val_loss_; }

  /// Writes out/checkpoint-<step> atomically (see the header comment) and returns its path. In
  /// full training the checkpoint is a Hugging Face model folder instead of an adapter.
  std::filesystem::path save_checkpoint() {
    namespace fs = std::filesystem;
    const fs::path final_dir = config_.out / ("checkpoint-" + std::to_string(step_));
    const fs::path tmp = config_.out / (".checkpoint-" + std::to_string(step_) + ".tmp");
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    // Every file is written through io::AtomicFile (checked writes, fsync), so the bytes are on
    // disk before the name says the checkpoint exists; a failed save (a full disk) removes the
    // temporary folder and leaves the earlier checkpoints as they were.
    try {
      std::vector<std::string> keys;
      if (model_.full_training()) {
        save_pretrained(model_, tmp);
        for (const auto& p : model_.parameters()) keys.emplace_back(p.name);
      } else {
        const auto trained = export_adapters(model_, base_name());
        milora::io::save_peft_adapter(trained, tmp);
        if (residual()) milora::io::save_peft_adapter(milora::io::to_plain_lora(initial_, trained), tmp / "plain_lora");
        keys = adapter_parameter_keys();
      }
      milora::io::SafetensorsWriter w;
      for (std::size_t i = 0; i < keys.size(); ++i) {
        w.add(keys[i] + ".exp_avg", milora::io::to_host_matrix<BE>(opt_.exp_avg(i)), milora::io::DType::F32);
        w.add(keys[i] + ".exp_avg_sq", milora::io::to_host_matrix<BE>(opt_.exp_avg_sq(i)), milora::io::DType::F32);
      }
      w.write(tmp / "optimizer.safetensors");
      nlohmann::json state = {{"step", step_}, {"data_cursor", train_->cursor()}, {"run", run_info_},
                              {"optimizer_steps", opt_.steps()}, {"last_loss", last_loss_}};
      milora::io::write_json_file(tmp / "trainer_state.json", state);
    } catch (...) {
      std::error_code ec;
      fs::remove_all(tmp, ec);
      throw;
    }
    // Saving a step again (a resumed run) moves the old folder aside first: a kill at any point
    // leaves either the old or the new checkpoint-<step>, never a half-deleted one.
    const fs::path old = config_.out / (".checkpoint-" + std::to_string(step_) + ".old");
    fs::remove_all(old);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    milora::io::AtomicFile::sync_folder(config_.out);
    fs::remove_all(old);
    return final_dir;
  }

  /// Continues from a checkpoint of the same run: same model, method, rank, targets, data and
  /// batch shape (trainer_state.json's "run" must equal this run's), so the steps that follow are
  /// the ones the uninterrupted run would have taken, bit for bit.
  void resume(const std::filesystem::path& dir) {
    using milora::detail::concat;
    if (model_.full_training())
      throw milora::state_error("Trainer::resume: resuming full training is not supported (adapters only)");
    const auto state = milora::io::read_json_file(dir / "trainer_state.json");
    const std::string where = concat("'", (dir / "trainer_state.json").string(), "'");
    if (!state.contains("run") || state["run"] != run_info_)
      throw milora::value_error(concat(where, " is from another run: ", state.value("run", nlohmann::json()).dump(),
                                       " vs this run's ", run_info_.dump()));
    for (const char* key : {"step", "data_cursor", "optimizer_steps"})
      if (!state.contains(key) || !state[key].is_number_unsigned()) throw milora::format_error(concat(where, ": no \"", key, "\""));
    const Index step = state["step"].get<Index>();
    if (step > config_.steps) throw milora::value_error(concat(where, ": step ", step, " is past --steps ", config_.steps));
    const auto adapter = milora::io::load_peft_adapter<T>(dir);
    const milora::io::SafetensorsFile moments(dir / "optimizer.safetensors");
    std::vector<std::pair<milora::io::HostMatrix<T>, milora::io::HostMatrix<T>>> mv;
    for (const auto& key : adapter_parameter_keys()) {  // load and check everything before changing anything
      mv.emplace_back(moments.template load<T>(key + ".exp_avg"), moments.template load<T>(key + ".exp_avg_sq"));
      milora::io::require_finite(mv.back().first, concat("'", moments.path().string(), "': '", key, ".exp_avg'"));
      milora::io::require_finite(mv.back().second, concat("'", moments.path().string(), "': '", key, ".exp_avg_sq'"));
    }
    train_->set_cursor(state["data_cursor"].get<std::size_t>());
    import_adapters(model_, adapter, dir.string());
    for (std::size_t i = 0; i < mv.size(); ++i)
      opt_.restore(i, milora::io::to_backend<BE>(mv[i].first), milora::io::to_backend<BE>(mv[i].second),
                   state["optimizer_steps"].get<long long>());
    step_ = step;
  }

 private:
  // Every rank's parameters must be the bytes of rank 0's: the same gradients, clipping and AdamW
  // on each. A difference (a rank with other data, a non-deterministic reduction) ends the job.
  void check_replicas() {
    const auto differing = ranks_differing<BE>(*replicas_, model_.parameters());
    if (differing.empty()) return;
    std::string ranks;
    for (int r : differing) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    throw milora::numerical_error(milora::detail::concat("step ", step_, ": the parameters of rank", differing.size() > 1 ? "s " : " ", ranks,
                                                         " differ from rank 0's (the data-parallel replicas diverged)"));
  }
  std::string info(const char* key, const std::string& fallback) const {
    return run_info_.is_object() && run_info_.contains(key) && run_info_[key].is_string() ? run_info_[key].get<std::string>()
                                                                                        : fallback;
  }
  std::string base_name() const { return info("model", ""); }
  // The PEFT key of every trained adapter factor, in the optimizer's order (model.parameters()):
  // lora_A and lora_B of each module, lora_A only where the init froze B (MiCA).
  std::vector<std::string> adapter_parameter_keys() const {
    std::vector<std::string> keys;
    for (auto* p : model_.adapted())
      for (const auto& param : p->adapter->parameters())
        keys.push_back(milora::io::peft_key(p->module, param.name == "lora_A" ? 'A' : 'B'));
    return keys;
  }
  // The adapters took s*B0*A0 out of the base (PiSSA, MiLoRA, OLoRA): checkpoints also get the
  // plain-LoRA export for the original model. Asked of the adapters, not of the method's name.
  bool residual() const {
    const auto adapted = model_.adapted();
    return !adapted.empty() && adapted.front()->adapter->residual();
  }

  Model& model_;
  TrainConfig config_;
  std::unique_ptr<Batches> train_;
  HeldOutLoss held_out_;
  nlohmann::json run_info_;
  milora::AdamW<BE> opt_;
  milora::io::PeftAdapter<T> initial_;
  Index step_ = 0;
  std::shared_ptr<Replicas<BE>> replicas_;  // null: one process
  Index check_every_ = 0;
  double last_loss_ = 0, last_grad_norm_ = 0;
  std::optional<double> last_val_loss_;
};

/// The newest complete checkpoint in `out`: the folder checkpoint-<N> with the largest N whose
/// trainer_state.json reads and says step N (folders being written, .checkpoint-*, are never
/// candidates; one that does not read is skipped with a log line). Empty when there is none.
inline std::filesystem::path latest_checkpoint(const std::filesystem::path& out) {
  namespace fs = std::filesystem;
  fs::path best;
  long long best_step = -1;
  if (!fs::is_directory(out)) return best;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    constexpr std::string_view prefix = "checkpoint-";
    if (!e.is_directory() || name.rfind(prefix, 0) != 0 || name.size() == prefix.size() || name.size() > prefix.size() + 18 ||
        name.find_first_not_of("0123456789", prefix.size()) != std::string::npos)
      continue;
    const long long step = std::stoll(name.substr(prefix.size()));
    if (step <= best_step) continue;
    try {
      const auto state = milora::io::read_json_file(e.path() / "trainer_state.json");
      if (!state.contains("step") || !state["step"].is_number_unsigned() || state["step"].get<long long>() != step)
        throw milora::format_error("its \"step\" is not " + std::to_string(step));
    } catch (const std::exception& err) {
      milora::log("latest_checkpoint: skipping '" + e.path().string() + "': " + err.what());
      continue;
    }
    best = e.path();
    best_step = step;
  }
  return best;
}

}  // namespace llama
