// Cost and accuracy of the spectral solvers against ExactSVD (LAPACK gesdd) in the same run, on
// float weights with an LLM-like spectrum (power law over a noise floor) of LLaMA-7B shapes:
//   exact               ExactSVD: one gesdd; the baseline of every row (top and bottom cost the same)
//   randomized_top      RandomizedSVD{} (p = r, q = 6), the r largest triplets (PiSSA)
//   cholesky_krylov     CholeskyKrylovSVD, the r smallest triplets (MiLoRA)
// Accuracy against the exact triplets is printed after the ratio table: subspace overlap (mean
// squared cosine of the principal angles, right singular vectors) and max relative sigma error;
// for cholesky_krylov also its CholeskyKrylovReport (which pass answered, blocks, Davidson steps).
//
//   spectral_bench [--smoke] [google-benchmark flags]
//   --smoke: 256 x 192 only, one repetition (CI checks that the program works).
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "milora/milora.hpp"
#include "ratio_reporter.hpp"
#include "synthetic_weights.hpp"

using B = milora::EigenBackend<float>;
using milora::Index;

namespace {

struct Shape {
  Index out, in;
  std::string tag() const { return std::to_string(out) + "x" + std::to_string(in); }
};

// One weight per shape, built once (building it costs more than some solvers).
const B::matrix& weight(const Shape& s) {
  static std::map<std::string, std::unique_ptr<B::matrix>> cache;
  auto& slot = cache[s.tag()];
  if (!slot) {
    const Index k = std::min(s.out, s.in);
    slot = std::make_unique<B::matrix>(milora::examples::with_spectrum<B>(
        s.out, s.in, milora::examples::llm_like_spectrum(k), 0xC0FFEE));
  }
  return *slot;
}

// Accuracy of a solver's triplets against the exact ones (computed once per shape and rank).
struct Accuracy {
  double overlap, sigma_error;
  std::string how;  // CholeskyKrylovSVD: which pass answered, after how many blocks and Davidson steps
};
std::map<std::string, Accuracy>& accuracy_table() {
  static std::map<std::string, Accuracy> t;
  return t;
}

Accuracy compare(const milora::Triplets<B>& fast, const milora::Triplets<B>& exact) {
  // ||Vt_exact Vt_fast^T||_F^2 / r: both have orthonormal rows.
  const Index r = B::rows(fast.Vt);
  auto c = B::zeros(r, r);
  B::gemm(1, exact.Vt, milora::Trans::no, fast.Vt, milora::Trans::yes, 0, c);
  double err = 0;
  for (Index i = 0; i < r; ++i)
    err = std::max(err, double(std::abs(fast.S(0, i) - exact.S(0, i)) / exact.S(0, i)));
  return {B::squared_norm(c) / double(r), err, {}};
}

// The exact SVD of each weight, computed once, for the accuracy table.
const milora::SVDResult<B::matrix>& exact_svd(const Shape& s) {
  static std::map<std::string, std::unique_ptr<milora::SVDResult<B::matrix>>> cache;
  auto& slot = cache[s.tag()];
  if (!slot) slot = std::make_unique<milora::SVDResult<B::matrix>>(B::svd(weight(s)));
  return *slot;
}

// Records the accuracy of `fast` once per row name.
template <class Fast>
void record_accuracy(const std::string& row, const Shape& s, Index r, bool top, Fast fast) {
  if (accuracy_table().count(row)) return;
  const auto& f = exact_svd(s);
  const Index k = B::cols(f.S);
  accuracy_table()[row] = compare(fast(weight(s)), milora::detail::select_triplets<B>(f, top ? 0 : k - r, r));
}

template <class Solve>
void run(benchmark::State& state, const Shape& s, Solve solve) {
  const auto& w = weight(s);
  for (auto _ : state) {
    auto t = solve(w);
    benchmark::DoNotOptimize(t.S.data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = milora::bench::take_flag(argc, argv, "--smoke");
  const std::vector<Shape> shapes = smoke ? std::vector<Shape>{{256, 192}}
                                          : std::vector<Shape>{{1024, 1024}, {4096, 4096}, {4096, 11008}, {11008, 4096}};
  const std::vector<Index> ranks = smoke ? std::vector<Index>{8} : std::vector<Index>{16, 64};

  using milora::bench::register_with_baseline;
  for (const auto& s : shapes) {
    const std::string exact = "exact/" + s.tag();
    register_with_baseline(exact, exact, [s](auto& st) {
      run(st, s, [](const B::matrix& w) { return B::svd(w); });
    });
    for (Index r : ranks) {
      const std::string rs = "/r=" + std::to_string(r) + "/" + s.tag();
      const auto top = [r](const B::matrix& w) { return milora::RandomizedSVD{}.top<B>(w, r); };
      const auto bottom = [r](const B::matrix& w) { return milora::CholeskyKrylovSVD{}.bottom<B>(w, r); };
      register_with_baseline("randomized_top" + rs, exact, [s, r, rs, top](auto& st) {
        run(st, s, top);
        record_accuracy("randomized_top" + rs, s, r, true, top);
      });
      register_with_baseline("cholesky_krylov" + rs, exact, [s, r, rs, bottom](auto& st) {
        run(st, s, bottom);
        const std::string row = "cholesky_krylov" + rs;
        if (accuracy_table().count(row)) return;
        milora::CholeskyKrylovReport report;
        record_accuracy(row, s, r, false,
                        [r, &report](const B::matrix& w) { return milora::CholeskyKrylovSVD{}.bottom<B>(w, r, &report); });
        using Path = milora::CholeskyKrylovReport::Path;
        const char* path = report.path == Path::float_pass    ? "float pass"
                           : report.path == Path::double_pass ? "double pass"
                                                              : "exact fallback";
        char how[160];
        std::snprintf(how, sizeof how, "   %s, %ld blocks, %ld Davidson steps, estimate %.1e", path,
                      long(report.blocks), long(report.polish_steps), report.defect);
        accuracy_table()[row].how = how;
      });
    }
  }
  // A solve is seconds long: one iteration per repetition, 3 repetitions (1 for --smoke).
  std::vector<char*> args(argv, argv + argc);
  static std::string reps = smoke ? "--benchmark_repetitions=1" : "--benchmark_repetitions=3";
  static std::string mintime = smoke ? "--benchmark_min_time=0.01" : "--benchmark_min_time=0.000001";
  args.insert(args.begin() + 1, {reps.data(), mintime.data()});
  const int rc = milora::bench::run_with_ratios(int(args.size()), args.data(),
                                                "spectral_bench: solvers vs exact gesdd, float, EigenBackend");
  std::printf("\naccuracy against the exact triplets (right singular subspace overlap, max relative sigma error)\n");
  for (const auto& [name, a] : accuracy_table())
    std::printf("%-44s overlap %.6f   sigma error %.2e%s\n", name.c_str(), a.overlap, a.sigma_error, a.how.c_str());
  return rc;
}
