// Independent jobs side by side: for_each_concurrently(count, jobs, fn) calls fn(0 .. count-1) on
// `jobs` threads, with OpenBLAS's threads shared out among them meanwhile (BlasThreadsPerJob).
// model_init_bench --jobs and milora-init --jobs adapt several weights at once this way.
//
// Why: a fast spectral solve is mostly narrow, memory-bound products and small factorisations,
// which a second BLAS thread barely speeds up; two matrices side by side, each with a
// single-threaded BLAS, use two cores better (docs/benchmarks.md, "Why the code is as it is"). Two
// threads each calling a multi-threaded OpenBLAS are worse than either: its threads spin waiting
// for each other. The thread count is process-wide state of OpenBLAS, hence an object that
// restores it. Without LAPACKE milora's products are Eigen's own, single-threaded: nothing to share.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

#if defined(MILORA_HAS_LAPACKE)  // milora's BLAS is then OpenBLAS (cmake/miloraDependencies.cmake)
extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);
#endif

namespace milora::tools {

/// OpenBLAS on 1/jobs of its threads (at least one) while this lives.
class BlasThreadsPerJob {
 public:
  explicit BlasThreadsPerJob(int jobs) {
#if defined(MILORA_HAS_LAPACKE)
    all_ = openblas_get_num_threads();
    openblas_set_num_threads(std::max(1, all_ / std::max(1, jobs)));
#else
    (void)jobs;
#endif
  }
  ~BlasThreadsPerJob() {
#if defined(MILORA_HAS_LAPACKE)
    openblas_set_num_threads(all_);
#endif
  }
  BlasThreadsPerJob(const BlasThreadsPerJob&) = delete;
  BlasThreadsPerJob& operator=(const BlasThreadsPerJob&) = delete;

 private:
  int all_ = 1;
};

/// fn(i) for every i < count: in order on the calling thread when jobs == 1, else on `jobs` threads
/// that each take the next i, the BLAS shared out among them. After an exception no new i starts;
/// once all threads are done, the exception of the lowest i is rethrown.
template <class Fn>
void for_each_concurrently(std::size_t count, int jobs, Fn&& fn) {
  if (jobs <= 1) {
    for (std::size_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::vector<std::exception_ptr> errors(count);
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  const auto work = [&] {
    for (std::size_t i; !failed && (i = next++) < count;) try {
        fn(i);
      } catch (...) {
        errors[i] = std::current_exception();
        failed = true;
      }
  };
  {
    BlasThreadsPerJob blas(jobs);
    std::vector<std::jthread> workers;
    for (int j = 0; j < jobs; ++j) workers.emplace_back(work);
  }  // joined here, before the BLAS gets its threads back
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace milora::tools
