// MILORA_CUDA_PROFILE=1: each LLaMA kernel launch (kernels_cuda.cuh, attention_tiled.cuh) waits for
// its stream before and after itself and adds the wall time to a table by kernel name, printed to
// stderr when the program exits. For finding the kernel that dominates a step on a machine without
// a profiler (the GPU machines lent to this project have no Nsight Systems): it serialises the
// stream, so a step timed with it on is slower than without; the table's total against the step
// time says how much is left to cuBLAS and the backend's own kernels. Off, it costs one branch.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace llama::cuda_launch::profile {

inline bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("MILORA_CUDA_PROFILE");
    return v != nullptr && *v != '\0' && std::string(v) != "0";
  }();
  return on;
}

class Table {
 public:
  void add(const char* name, double seconds) {
    const std::lock_guard<std::mutex> lock(mutex_);
    auto& row = rows_[name];
    row.seconds += seconds;
    ++row.launches;
  }
  ~Table() {
    if (rows_.empty()) return;
    std::vector<std::pair<std::string, Row>> sorted(rows_.begin(), rows_.end());
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    double total = 0;
    for (const auto& [name, row] : sorted) total += row.seconds;
    std::fprintf(stderr, "MILORA_CUDA_PROFILE: LLaMA kernels, wall time with the stream drained around each launch\n");
    for (const auto& [name, row] : sorted)
      std::fprintf(stderr, "  %-36s %10.3f ms %8ld launches %5.1f %%\n", name.c_str(), row.seconds * 1e3, row.launches,
                   100 * row.seconds / total);
    std::fprintf(stderr, "  %-36s %10.3f ms\n", "total", total * 1e3);
  }

 private:
  struct Row {
    double seconds = 0;
    long launches = 0;
  };
  std::mutex mutex_;
  std::map<std::string, Row> rows_;
};

inline Table& table() {
  static Table t;
  return t;
}

/// Times the launches queued on `stream` during its lifetime, when enabled().
class Scope {
 public:
  Scope(const char* name, cudaStream_t stream) : name_(name), stream_(stream), on_(enabled()) {
    if (!on_) return;
    cudaStreamSynchronize(stream_);
    start_ = std::chrono::steady_clock::now();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
  ~Scope() {
    if (!on_) return;
    cudaStreamSynchronize(stream_);  // an error here surfaces at the caller's next check
    table().add(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }

 private:
  const char* name_;
  cudaStream_t stream_;
  bool on_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace llama::cuda_launch::profile
