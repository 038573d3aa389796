// compare_inits: the main demo. Does MiLoRA learn a new task as well as LoRA and PiSSA while
// forgetting less of what the model knew? Measured here, on this machine, in minutes:
//
//   1. pre-train (once; cached in OUT/pretrained) a small byte-level LLaMA on English text that a
//      Debian package ships (the `fortunes` collection);
//   2. fine-tune copies on a different task -- by default another language (Debian's German
//      fortunes, package fortunes-de); `--task reversal` writes four letters backwards instead --
//      with LoRA, PiSSA, MiLoRA (same rank, alpha = rank, same steps, each with its own learning
//      rate) and full fine-tuning as the reference, for several seeds;
//   3. report the task's held-out loss before and after (and, for the reversal task, exact-match
//      accuracy), forgetting (perplexity on the corpus's held-out split before and after),
//      trainable parameters, wall time, and the paper's
//      subspace analysis (where each update's energy lies in W's spectrum; how far W's top singular
//      values and vectors moved);
//   4. write OUT/summary.md (mean ± std, and each method's per-seed paired difference against LoRA
//      with a 95% interval, saying whether it is resolved), OUT/results.csv, OUT/curves.csv and,
//      with gnuplot, OUT/loss_curves.png, OUT/learning_vs_forgetting.png, OUT/subspace_energy.png.
//
// --eval-task FILE.jsonl also scores every run on a task's accuracy (multiple choice by
// log-likelihood, or exact match: llama/tasks.hpp), the way the MiLoRA paper compares methods.
//
// --model DIR and --task FILE run the same comparison on your own Hugging Face LLaMA and data.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <tuple>

#include "llama/calibration.hpp"
#include "llama/generation.hpp"
#include "llama/instruction_data.hpp"
#include "llama/kernels_cpu.hpp"
#include "llama/tasks.hpp"
#include "llama/trainer.hpp"
#include "milora/init/registry.hpp"
#include "paired.hpp"
#include "subspace.hpp"
#include "task.hpp"
#include "tools/common/cli.hpp"

namespace {

namespace fs = std::filesystem;
using BE = milora::EigenBackend<float>;
using compare::Index;
using llama::Token;
using milora::detail::concat;

// Every method compare_inits can run, in the order the help lists them: "full" (every weight
// trained) and each init method of milora's registry.
const std::string kMethods = "full," + milora::init_method_names<BE>();

struct Options {
  std::string out = "compare_inits_out", model, corpus = "/usr/share/games/fortunes", task = "/usr/share/games/fortunes/de";
  std::string methods = "full,lora,pissa,milora", targets = "q_proj,k_proj,v_proj,up_proj,down_proj";
  Index rank = 8, steps = 600, seeds = 3, batch = 8, seq = 96;
  Index pretrain_steps = 1500, pretrain_hidden = 128, pretrain_layers = 4;
  // full, lora, pissa, milora: each the best of three on the German task (docs/demo.md); olora,
  // orthogonal, mica, corda-kpm, corda-ipm, eva and lora-ga (opt-in through --methods): not tuned,
  // the values of their closest relatives (PiSSA, LoRA, MiLoRA, MiLoRA, PiSSA, LoRA, LoRA). A
  // method added to the registry since starts at LoRA's (untuned_lr) until someone tunes it.
  std::map<std::string, double> lr = {{"full", 1e-3},  {"lora", 1e-2},  {"pissa", 3e-3},     {"milora", 1e-2},
                                      {"olora", 3e-3}, {"orthogonal", 1e-2}, {"mica", 1e-2},
                                      {"corda-kpm", 1e-2}, {"corda-ipm", 3e-3}, {"eva", 1e-2}, {"lora-ga", 1e-2}};
  static constexpr double untuned_lr = 1e-2;
  Index eval_batches = 24;  // corpus held-out batches of 8 x 128 for perplexity
  std::string eval_task;    // a task file (llama/tasks.hpp) scored after fine-tuning
  Index eval_limit = 0;     // its first N examples (0: all)
};

struct Row {
  std::string method;
  unsigned seed = 0;
  double lr = 0, task_loss_before = 0, task_loss = 0, task_accuracy = -1, ppl_before = 0, ppl_after = 0, seconds = 0;
  double eval_task_accuracy = -1;  // --eval-task: acc (multiple choice) or exact match (generation); -1: none
  Index trainable = 0;
  compare::SubspaceStats sub;
};

// ---- data ---------------------------------------------------------------------------------------

// Every regular file of a folder (sorted, not recursive; fortune's .dat indexes and .u8 links
// skipped), or one file. `hint` says how to get the default when it is missing.
std::string read_text(const fs::path& path, const std::string& what, const std::string& hint) {
  if (!fs::exists(path)) throw milora::io_error(concat(what, " '", path.string(), "' does not exist (", hint, ")"));
  if (!fs::is_directory(path)) return llama::read_file(path);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(path))
    if (e.is_regular_file() && !e.is_symlink() && e.path().extension() != ".dat" && e.path().extension() != ".u8")
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) text += llama::read_file(f);
  if (text.empty()) throw milora::io_error(concat(what, " '", path.string(), "' holds no text"));
  return text;
}

// ---- pre-training -------------------------------------------------------------------------------

fs::path pretrained_model(const Options& o, const std::vector<Token>& train, const nlohmann::json& corpus_info) {
  if (!o.model.empty()) return o.model;
  const fs::path dir = fs::path(o.out) / "pretrained";
  llama::LlamaConfig c;
  c.vocab_size = 256;
  c.hidden_size = o.pretrain_hidden;
  c.intermediate_size = (o.pretrain_hidden * 8 / 3 + 31) / 32 * 32;  // LLaMA's 8/3 d, rounded up to 32
  c.num_hidden_layers = o.pretrain_layers;
  c.num_attention_heads = std::max<Index>(1, o.pretrain_hidden / 32);
  c.num_key_value_heads = c.num_attention_heads;
  c.head_dim = o.pretrain_hidden / c.num_attention_heads;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  const nlohmann::json recipe = {{"config", llama::config_json(c)}, {"steps", o.pretrain_steps}, {"batch", 16}, {"seq", 128},
                                 {"lr", 3e-3}, {"corpus", corpus_info}};
  if (fs::exists(dir / "pretrain.json") && milora::io::read_json_file(dir / "pretrain.json") == recipe) {
    std::cerr << "compare_inits: using the cached pre-trained model " << dir.string() << "\n";
    return dir;
  }
  std::cerr << "compare_inits: pre-training a " << c.num_hidden_layers << "-layer, " << c.hidden_size
            << "-wide byte-level LLaMA on the corpus (" << o.pretrain_steps << " steps, cached afterwards)\n";
  using Model = llama::Llama<BE>;
  auto model = llama::random_model<Model>(c, 2024);
  model->enable_full_training();
  llama::TrainConfig tc;
  tc.steps = o.pretrain_steps;
  tc.batch = 16;
  tc.seq = 128;
  tc.lr = 3e-3;
  tc.warmup = std::max<Index>(1, o.pretrain_steps / 20);
  tc.weight_decay = 0.1;
  tc.log_every = std::max<Index>(1, o.pretrain_steps / 50);
  llama::Trainer<Model> trainer(*model, tc, llama::DataLoader(train, tc.batch, tc.seq, "corpus"), {}, {});
  trainer.run();
  fs::remove_all(dir);
  llama::save_pretrained(*model, dir);
  milora::io::write_json_file(dir / "pretrain.json", recipe);
  return dir;
}

// ---- one fine-tuning run ------------------------------------------------------------------------

struct Data {
  std::vector<Token> task_train, task_test_tokens, corpus_heldout;
  std::vector<std::pair<int, int>> task_test;  // the reversal task's problems (empty for a text task)
  llama::ExampleSet examples_train, examples_test;  // a JSON-lines task: answers learned and scored
  llama::TaskSet eval_task;                          // --eval-task, scored after fine-tuning
  std::shared_ptr<const llama::Tokenizer> tokenizer;
};

/// --eval-task's accuracy: acc of a multiple-choice task, exact match of a generation task (greedy,
/// 64 new tokens, a blank line stops).
template <class Model>
double eval_task_accuracy(Model& model, const Data& d) {
  if (d.eval_task.multiple_choice())
    return llama::score_choices(d.eval_task.choice, [&](const std::string& c, const std::string& x) {
             return llama::continuation_loglik(model, *d.tokenizer, c, x);
           }).acc.value;
  return llama::score_generation(d.eval_task.generation, [&](const std::string& prompt) {
           return llama::generate(model, *d.tokenizer, d.tokenizer->encode(prompt), {.max_new_tokens = 64, .stop = {"\n\n"}}).text;
         }).value;
}

/// The task's held-out metrics: loss (answer tokens only for the reversal task) and accuracy (-1: none).
template <class Model>
std::pair<double, double> task_metrics(const Options& o, Model& model, const Data& d) {
  if (!d.task_test.empty()) return compare::task_metrics(model, d.task_test);
  if (!d.examples_test.empty()) return {llama::evaluate(model, d.examples_test, 8, o.seq, o.eval_batches).first, -1.0};
  return {llama::evaluate(model, d.task_test_tokens, 8, o.seq, o.eval_batches).first, -1.0};
}

Row run_method(const Options& o, const std::string& method, unsigned seed, const fs::path& model_dir, const Data& d,
               double task_before, double ppl_before, std::ostream& curves) {
  using Model = llama::Llama<BE>;
  const milora::io::HFModel hf(model_dir);
  auto model = llama::from_pretrained<Model>(hf);
  const auto targets = milora::tools::parse_targets(o.targets);
  const auto t0 = std::chrono::steady_clock::now();
  if (method == "full") model->enable_full_training();
  else  // exact solvers; CorDA / EVA / LoRA-GA calibrated on the first 8 batches of the task's training data
    llama::add_adapters_for_method(*model, method, false, targets, {.rank = o.rank, .alpha = double(o.rank), .seed = seed},
                                   d.task_train, o.batch, o.seq, 8);
  Row row;
  row.method = method;
  row.seed = seed;
  row.lr = o.lr.at(method);
  row.task_loss_before = task_before;
  row.ppl_before = ppl_before;
  for (const auto& p : model->parameters()) row.trainable += milora::numel<BE>(p.value);
  llama::TrainConfig tc;
  tc.steps = o.steps;
  tc.batch = o.batch;
  tc.seq = o.seq;
  tc.lr = row.lr;
  tc.warmup = std::max<Index>(1, o.steps / 20);
  tc.progress = false;
  std::unique_ptr<llama::Batches> batches;
  if (!d.examples_train.empty()) {  // a JSON-lines task: each seed visits the examples in its own order
    batches = std::make_unique<llama::ExampleLoader>(d.examples_train, o.batch, o.seq, seed);
  } else {
    auto loader = std::make_unique<llama::DataLoader>(d.task_train, o.batch, o.seq, "task data");
    if (d.task_test.empty()) {  // a text task: each seed starts reading at its own place (the reversal task's seeds draw other problems)
      std::mt19937_64 gen(seed);
      loader->set_cursor(gen() % (d.task_train.size() - std::size_t(o.batch * o.seq)));
    }
    batches = std::move(loader);
  }
  llama::Trainer<Model> trainer(*model, tc, std::move(batches), {}, {});
  double smoothed = 0;
  for (Index s = 0; s < o.steps; ++s) {
    const double loss = trainer.train_step();
    smoothed = s == 0 ? loss : 0.9 * smoothed + 0.1 * loss;
    if ((s + 1) % 10 == 0 || s + 1 == o.steps) curves << method << ',' << seed << ',' << s + 1 << ',' << loss << ',' << smoothed << '\n';
  }
  row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::tie(row.task_loss, row.task_accuracy) = task_metrics(o, *model, d);
  row.ppl_after = std::exp(llama::evaluate(*model, d.corpus_heldout, 8, 128, o.eval_batches).first);
  if (d.eval_task.size() > 0) row.eval_task_accuracy = eval_task_accuracy(*model, d);
  // subspace analysis: every adapted (or, for full fine-tuning, every targeted) weight
  if (method != "full") model->merge_adapters();
  Index counted = 0;
  for (Index l = 0; l < model->num_layers(); ++l)
    for (auto* p : model->block(l).projections()) {
      const std::string leaf = p->module.substr(p->module.rfind('.') + 1);
      if (std::find(targets.begin(), targets.end(), leaf) == targets.end()) continue;
      const auto w0 = milora::io::to_backend<BE>(hf.load<float>(p->module + ".weight"));
      const auto st = compare::subspace_stats<BE>(w0, model->weight(p->module + ".weight"), o.rank, o.rank);
      row.sub.top_energy += st.top_energy;
      row.sub.bottom_energy += st.bottom_energy;
      row.sub.sigma_shift += st.sigma_shift;
      row.sub.vector_shift += st.vector_shift;
      ++counted;
    }
  for (double* x : {&row.sub.top_energy, &row.sub.bottom_energy, &row.sub.sigma_shift, &row.sub.vector_shift}) *x /= double(counted);
  return row;
}

// ---- reports ------------------------------------------------------------------------------------

std::pair<double, double> mean_std(const std::vector<double>& v) {
  double m = 0, s = 0;
  for (double x : v) m += x;
  m /= double(v.size());
  for (double x : v) s += (x - m) * (x - m);
  return {m, v.size() > 1 ? std::sqrt(s / double(v.size() - 1)) : 0.0};
}

std::string pm(const std::vector<double>& v, int digits) {
  const auto [m, s] = mean_std(v);
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << m << " ± " << s;
  return os.str();
}

// Each method against LoRA seed by seed (the same seed: the same data order and adapter seed), so
// that the table says whether a difference is larger than what the seed does to both.
void write_paired_differences(std::ostream& md, const std::vector<Row>& rows, const std::vector<std::string>& order, bool has_eval) {
  if (std::find(order.begin(), order.end(), "lora") == order.end() || order.size() < 2) return;
  const auto metric = [&](const std::string& m, auto get) {
    std::vector<double> v;
    for (const auto& r : rows)
      if (r.method == m) v.push_back(get(r));
    return v;
  };
  struct Column {
    std::string name;
    double (*get)(const Row&);
    int digits;
  };
  std::vector<Column> columns = {{"task loss", [](const Row& r) { return r.task_loss; }, 4},
                                 {"corpus ppl after", [](const Row& r) { return r.ppl_after; }, 3}};
  if (rows.front().task_accuracy >= 0) columns.push_back({"task accuracy [pp]", [](const Row& r) { return r.task_accuracy * 100; }, 1});
  if (has_eval) columns.push_back({"eval-task accuracy [pp]", [](const Row& r) { return r.eval_task_accuracy * 100; }, 1});
  md << "\nPaired differences against LoRA (method − LoRA on the same seed: mean [95% t-interval]; **resolved** when "
        "the interval excludes 0):\n\n| method |";
  for (const auto& c : columns) md << " " << c.name << " |";
  md << "\n|---|";
  for (std::size_t i = 0; i < columns.size(); ++i) md << "---|";
  md << "\n";
  for (const auto& m : order) {
    if (m == "lora") continue;
    md << "| " << m << " |";
    for (const auto& c : columns) {
      const auto d = compare::paired_difference(metric(m, c.get), metric("lora", c.get));
      md << std::fixed << std::setprecision(c.digits) << " " << std::showpos << d.mean << std::noshowpos;
      if (d.n >= 2) md << " [" << d.low << ", " << d.high << "]" << (d.resolved() ? " **resolved**" : " not resolved");
      md << " |";
    }
    md << "\n";
  }
}

void write_reports(const Options& o, const std::vector<Row>& rows, const fs::path& out) {
  std::ostringstream csv;
  csv << "method,seed,lr,trainable,seconds,task_loss_before,task_loss,task_accuracy,ppl_before,ppl_after,forgetting,top_energy,bottom_energy,"
         "sigma_shift,vector_shift,eval_task_accuracy\n";
  for (const auto& r : rows)
    csv << r.method << ',' << r.seed << ',' << r.lr << ',' << r.trainable << ',' << r.seconds << ',' << r.task_loss_before << ',' << r.task_loss << ','
        << r.task_accuracy << ',' << r.ppl_before << ',' << r.ppl_after << ',' << r.ppl_after - r.ppl_before << ','
        << r.sub.top_energy << ',' << r.sub.bottom_energy << ',' << r.sub.sigma_shift << ',' << r.sub.vector_shift << ','
        << r.eval_task_accuracy << '\n';
  milora::io::write_file_atomically(out / "results.csv", csv.str());
  const bool has_eval = rows.front().eval_task_accuracy >= 0;
  std::ostringstream md;
  md << "| method | lr | trainable | task loss (before " << std::fixed << std::setprecision(4) << rows.front().task_loss_before
     << ") | task accuracy | corpus ppl after (before " << std::setprecision(3) << rows.front().ppl_before << ") | ΔW energy in top-" << o.rank << " | in bottom-" << o.rank
     << " | top-σ shift | top-u shift | time [s] |" << (has_eval ? " eval-task accuracy |" : "") << "\n|---|---|---|---|---|---|---|---|---|---|---|"
     << (has_eval ? "---|" : "") << "\n";
  std::vector<std::string> order;
  for (const auto& r : rows)
    if (std::find(order.begin(), order.end(), r.method) == order.end()) order.push_back(r.method);
  for (const auto& m : order) {
    std::vector<double> loss, acc, ppl, top, bottom, sig, vec, secs, eval;
    Row first;
    for (const auto& r : rows)
      if (r.method == m) {
        first = r;
        loss.push_back(r.task_loss);
        acc.push_back(r.task_accuracy * 100);
        ppl.push_back(r.ppl_after);
        top.push_back(r.sub.top_energy);
        bottom.push_back(r.sub.bottom_energy);
        sig.push_back(r.sub.sigma_shift);
        vec.push_back(r.sub.vector_shift);
        secs.push_back(r.seconds);
        eval.push_back(r.eval_task_accuracy * 100);
      }
    md << "| " << m << " | " << first.lr << " | " << first.trainable << " | " << pm(loss, 4) << " | "
       << (first.task_accuracy < 0 ? "–" : pm(acc, 1) + " %") << " | " << pm(ppl, 3) << " | " << pm(top, 4) << " | "
       << pm(bottom, 4) << " | " << pm(sig, 5) << " | " << pm(vec, 5) << " | " << pm(secs, 1) << " |"
       << (has_eval ? " " + pm(eval, 1) + " % |" : "") << "\n";
  }
  md << "\n" << rows.size() / order.size() << " seeds per method (mean ± sample std); rank " << o.rank << ", alpha = rank, "
     << o.steps << " steps of " << o.batch << " x " << o.seq << " tokens; targets " << o.targets << ".\n";
  write_paired_differences(md, rows, order, has_eval);
  milora::io::write_file_atomically(out / "summary.md", md.str());
}

void write_plots(const fs::path& out, const std::vector<std::string>& methods) {
  std::string names;  // gnuplot's word list, e.g. "full lora pissa milora"
  for (const auto& m : methods) names += (names.empty() ? "" : " ") + m;
  std::ostringstream gp;
  gp << "methods = '" << names << "'\n";
  gp << R"(set datafile separator ','
set terminal pngcairo size 900,560 noenhanced
set key outside right
set grid
set output 'loss_curves.png'
set title 'Task training loss (smoothed), every seed'
set xlabel 'step'; set ylabel 'loss'; set logscale y
plot for [m in methods] 'curves.csv' using ($2==0 && strcol(1) eq m ? $3 : 1/0):5 with lines lw 2 title m.' seed 0', \
     for [m in methods] 'curves.csv' using ($2!=0 && strcol(1) eq m ? $3 : 1/0):5 with lines lw 1 dt 3 notitle
unset logscale y
set output 'learning_vs_forgetting.png'
set title 'Learning vs forgetting (one point per run)'
set xlabel 'corpus perplexity after fine-tuning (lower = less forgetting)'; set ylabel 'task held-out loss (lower = learned more)'
plot for [m in methods] 'results.csv' using (strcol(1) eq m ? $10 : 1/0):7 with points pt 7 ps 1.5 title m
set output 'subspace_energy.png'
set title 'Where the update lies: share of ||dW||^2 in the top-r / bottom-r singular subspace of W'
set xlabel ''; set ylabel 'share of energy'; set style data histograms; set style histogram clustered gap 1
set style fill solid 0.8; set yrange [0:*]
plot 'energy.csv' using 2:xtic(1) title 'top-r', '' using 3 title 'bottom-r'
)";
  milora::io::write_file_atomically(out / "plots.gp", gp.str());
  // per-method means for the bar chart
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> e;
  std::ifstream csv(out / "results.csv");
  std::string line;
  std::getline(csv, line);
  std::vector<std::string> order;
  while (std::getline(csv, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (!e.count(f[0])) order.push_back(f[0]);
    e[f[0]].first.push_back(std::stod(f[11]));
    e[f[0]].second.push_back(std::stod(f[12]));
  }
  std::ostringstream en;
  for (const auto& m : order) en << m << ',' << mean_std(e[m].first).first << ',' << mean_std(e[m].second).first << '\n';
  milora::io::write_file_atomically(out / "energy.csv", en.str());
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    std::cerr << "compare_inits: gnuplot not found (apt-get install gnuplot-nox): no PNG plots; the CSVs are there\n";
    return;
  }
  const std::string cmd = "cd '" + out.string() + "' && gnuplot plots.gp";
  if (std::system(cmd.c_str()) != 0) throw milora::io_error("gnuplot failed on " + (out / "plots.gp").string());
}

void run(const Options& o) {
  const auto known = milora::tools::split_list(kMethods);
  for (const auto& m : milora::tools::split_list(o.methods))  // before minutes of pre-training, not after
    if (std::find(known.begin(), known.end(), m) == known.end())
      throw milora::value_error("unknown method '" + m + "' in --methods (" + kMethods + ")");
  const fs::path out = o.out;
  fs::create_directories(out);
  // the pre-training corpus: 90 % to train, the last 10 % held out for forgetting
  const std::string text = read_text(o.corpus, "corpus", "install the Debian package `fortunes`, or give --corpus FILE");
  const auto tokenizer = llama::Tokenizer::for_model(o.model.empty() ? fs::path(o.out) : fs::path(o.model),
                                                     o.model.empty() ? 256 : llama::LlamaConfig::from_model(milora::io::HFModel(o.model)).vocab_size);
  std::vector<Token> corpus = tokenizer.encode(text);
  const std::size_t split = corpus.size() * 9 / 10;
  Data d;
  d.corpus_heldout.assign(corpus.begin() + std::ptrdiff_t(split), corpus.end());
  corpus.resize(split);
  const fs::path model_dir = pretrained_model(o, corpus, {{"path", o.corpus}, {"bytes", text.size()}});

  auto base = llama::from_pretrained<llama::Llama<BE>>(milora::io::HFModel(model_dir));
  const double ppl_before = std::exp(llama::evaluate(*base, d.corpus_heldout, 8, 128, o.eval_batches).first);
  std::cerr << "compare_inits: corpus held-out perplexity of the pre-trained model " << ppl_before << "\n";

  // the task: the reversal problems (seeded below) or a text whose last 10 % is held out
  const bool reversal = o.task == "reversal";
  if (fs::path(o.task).extension() == ".jsonl") {  // examples (docs/data.md): the last 10 % held out, answers scored
    const fs::path dir = o.model.empty() ? model_dir : fs::path(o.model);
    const auto chat_template = llama::model_chat_template(dir);
    auto set = llama::read_instruction_data(o.task, tokenizer, base->config().vocab_size, {.seq = o.seq},
                                            chat_template ? &*chat_template : nullptr);
    const std::size_t cut = set.examples.size() * 9 / 10;
    if (cut == 0 || cut == set.examples.size())
      throw milora::value_error(concat("'", o.task, "' has ", set.examples.size(), " usable examples; the comparison needs at least 2"));
    d.examples_test.examples.assign(set.examples.begin() + std::ptrdiff_t(cut), set.examples.end());
    set.examples.resize(cut);
    d.examples_train = std::move(set);
    d.task_train = d.examples_train.concatenated();  // what CorDA / EVA / LoRA-GA calibrate on
  } else if (!reversal) {
    auto t = tokenizer.encode(read_text(o.task, "task", "install the Debian package `fortunes-de`, or give --task FILE or --task reversal"));
    const std::size_t cut = t.size() * 9 / 10;
    d.task_test_tokens.assign(t.begin() + std::ptrdiff_t(cut), t.end());
    t.resize(cut);
    d.task_train = std::move(t);
  } else {
    d.task_test = compare::ReversalTask::make(1, 400, 0).test;  // the same for every seed
  }
  const double task_before = task_metrics(o, *base, d).first;
  std::cerr << "compare_inits: task held-out loss of the pre-trained model " << task_before << "\n";
  if (!o.eval_task.empty()) {
    d.eval_task = llama::read_task(o.eval_task);
    if (o.eval_limit > 0) {
      if (d.eval_task.choice.size() > std::size_t(o.eval_limit)) d.eval_task.choice.resize(std::size_t(o.eval_limit));
      if (d.eval_task.generation.size() > std::size_t(o.eval_limit)) d.eval_task.generation.resize(std::size_t(o.eval_limit));
    }
    d.tokenizer = std::make_shared<const llama::Tokenizer>(tokenizer);
    std::cerr << "compare_inits: eval-task accuracy of the pre-trained model " << 100 * eval_task_accuracy(*base, d) << " % ("
              << d.eval_task.size() << " examples)\n";
  }
  base.reset();

  std::vector<Row> rows;
  std::ostringstream curves;
  curves << "method,seed,step,loss,smoothed\n";
  const auto methods = milora::tools::split_list(o.methods);
  for (unsigned seed = 0; seed < unsigned(o.seeds); ++seed) {
    if (reversal) {
      const auto task = compare::ReversalTask::make(6000, 400, 1000 + seed);
      d.task_train = compare::ReversalTask::tokens(task.train);
      d.task_test = task.test;
    }
    for (const auto& m : methods) {
      const Row r = run_method(o, m, seed, model_dir, d, task_before, ppl_before, curves);
      std::cerr << "compare_inits: " << std::setw(6) << m << " seed " << seed << ": task loss " << std::setprecision(4) << r.task_loss_before << " -> " << r.task_loss
                << (r.task_accuracy >= 0 ? concat(", accuracy ", r.task_accuracy * 100, " %") : std::string()) << ", corpus ppl "
                << r.ppl_before << " -> " << r.ppl_after << ", dW energy top/bottom " << r.sub.top_energy << " / "
                << r.sub.bottom_energy << " (" << r.seconds << " s)\n";
      rows.push_back(r);
    }
  }
  milora::io::write_file_atomically(out / "curves.csv", curves.str());
  write_reports(o, rows, out);
  write_plots(out, methods);
  std::cout << "\n" << llama::read_file(out / "summary.md") << "\nwritten: " << (out / "summary.md").string() << ", "
            << (out / "results.csv").string() << ", " << (out / "curves.csv").string() << ", *.png in " << out.string()
            << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"compare_inits: LoRA vs PiSSA vs MiLoRA vs full fine-tuning: learning a new task vs forgetting."};
  app.add_option("--out", o.out, "output folder (the pre-trained model is cached in OUT/pretrained)")->capture_default_str();
  app.add_option("--model", o.model, "a Hugging Face LLaMA folder to use instead of pre-training one")->check(CLI::ExistingDirectory);
  app.add_option("--corpus", o.corpus, "pre-training text (file or folder) whose held-out tail measures forgetting")->capture_default_str();
  app.add_option("--task", o.task, "fine-tuning data: a text file or folder (the last 10 % held out), a .jsonl file of examples whose "
                                   "answers are learned and scored (docs/data.md), or `reversal` (four letters backwards, with "
                                   "exact-match accuracy)")->capture_default_str();
  app.add_option("--methods", o.methods, std::string("comma-separated: ") + kMethods)->capture_default_str();
  app.add_option("--targets", o.targets, "projections to adapt")->capture_default_str();
  app.add_option("--rank", o.rank, "adapter rank (alpha = rank)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--steps", o.steps, "fine-tuning steps per run")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seeds", o.seeds, "runs per method")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--batch", o.batch, "fine-tuning batch")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq", o.seq, "fine-tuning sequence length")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--pretrain-steps", o.pretrain_steps, "pre-training steps")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--pretrain-hidden", o.pretrain_hidden, "pre-trained model width")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--pretrain-layers", o.pretrain_layers, "pre-trained model depth")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--eval-task", o.eval_task, "a task (.jsonl: multiple choice or question/answer, docs/llama.md) whose accuracy "
                                             "each run is scored on after fine-tuning")->check(CLI::ExistingFile);
  app.add_option("--eval-limit", o.eval_limit, "--eval-task: its first N examples (0: all)")->capture_default_str()->check(milora::tools::whole_number);
  app.add_option("--eval-batches", o.eval_batches, "corpus held-out batches (8 x 128) for perplexity")->capture_default_str()->check(milora::tools::whole_number);
  for (const auto& m : milora::tools::split_list(kMethods)) {
    o.lr.try_emplace(m, Options::untuned_lr);  // a registered method nobody tuned yet
    app.add_option(std::string("--lr-") + m, o.lr[m], std::string("learning rate of ") + m)->capture_default_str()->check(milora::tools::finite_non_negative);
  }
  return milora::tools::run_tool("compare_inits", app, argc, argv, [&] { run(o); });
}
