// Benchmarks report ratios against a baseline measured in the same run, because the machines are
// shared and noisy: an absolute time from one run says little, a ratio of two interleaved ones does.
//
// Usage: register each benchmark with register_with_baseline(name, baseline_name, fn); run with
// run_with_ratios(argc, argv). Repetitions are randomly interleaved, and each benchmark's time is
// the minimum over its repetitions (the least disturbed one). The table printed last has one row
// per benchmark: its time, its baseline's time, and the ratio.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace milora::bench {

class RatioTable {
 public:
  static RatioTable& get() {
    static RatioTable table;
    return table;
  }
  void set_baseline(const std::string& name, const std::string& baseline) {
    order_.push_back(name);
    baseline_[name] = baseline;
  }
  void record(const std::string& name, double seconds) {
    auto [it, fresh] = best_.try_emplace(name, seconds);
    if (!fresh) it->second = std::min(it->second, seconds);
  }
  void print(const char* title) const {
    std::printf("\n%s (min over repetitions; ratio = time / baseline time, same run)\n", title);
    std::printf("%-44s %12s %12s %8s\n", "benchmark", "time [ms]", "base [ms]", "ratio");
    for (const auto& name : order_) {
      const double t = lookup(name), b = lookup(baseline_.at(name));
      if (t != t) continue;  // filtered out of this run (--benchmark_filter)
      std::printf("%-44s %12.3f %12.3f %8.4f\n", name.c_str(), t * 1e3, b * 1e3, t / b);
    }
  }

 private:
  double lookup(const std::string& name) const {
    auto it = best_.find(name);
    return it == best_.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
  }
  std::vector<std::string> order_;
  std::map<std::string, std::string> baseline_;
  std::map<std::string, double> best_;
};

/// Console output as usual, plus the per-iteration real time of every non-aggregate run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& run : runs)
      if (run.run_type == Run::RT_Iteration && !run.error_occurred && run.iterations > 0)
        RatioTable::get().record(run.run_name.function_name,
                                 run.real_accumulated_time / double(run.iterations));
    ConsoleReporter::ReportRuns(runs);
  }
};

template <class Fn>
void register_with_baseline(const std::string& name, const std::string& baseline, Fn&& fn) {
  RatioTable::get().set_baseline(name, baseline);
  benchmark::RegisterBenchmark(name.c_str(), std::forward<Fn>(fn))
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}

/// Removes `flag` from argv if present (before Google Benchmark sees it); returns whether it was.
inline bool take_flag(int& argc, char** argv, const char* flag) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == flag) {
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      return true;
    }
  return false;
}

/// Runs everything registered; defaults to 5 randomly interleaved repetitions.
inline int run_with_ratios(int argc, char** argv, const char* title) {
  std::vector<char*> args(argv, argv + argc);
  std::string reps = "--benchmark_repetitions=5", inter = "--benchmark_enable_random_interleaving=true";
  std::string agg = "--benchmark_report_aggregates_only=false";
  args.insert(args.begin() + 1, {reps.data(), inter.data(), agg.data()});  // user flags still win
  int n = int(args.size());
  benchmark::Initialize(&n, args.data());
  if (benchmark::ReportUnrecognizedArguments(n, args.data())) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  RatioTable::get().print(title);
  return 0;
}

}  // namespace milora::bench
