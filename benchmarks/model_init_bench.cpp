// The init cost a user pays: PiSSA / MiLoRA adapters on every target matrix of a LLaMA-2-7B-shaped
// model (32 layers x q, k, v, o, gate, up, down = 224 float matrices: four 4096 x 4096, gate and up
// 11008 x 4096, down 4096 x 11008), with each spectral solver, timed end to end (the adapter
// constructor: solver, factors, residual W - s*B*A).
//
// The weights are random with an LLM-like spectrum (examples/synthetic_weights.hpp), generated one
// layer at a time so memory stays at one layer (~0.8 GB in float, twice that with the copies the
// adapters take over); generating them is not timed.
// Every solver initialises the same layer, so their totals are comparable within one run.
//
//   model_init_bench [--layers N=32] [--rank R=16] [--solvers exact,krylov,randomized]
//                    [--jobs N[,N...]=1] [--smoke]
//
// Solvers: exact (ExactSVD, one sgesdd; PiSSA and MiLoRA cost the same with it, so it runs once, as
// MiLoRA), krylov (MiLoRA with CholeskyKrylovSVD), randomized (PiSSA with RandomizedSVD). Prints a
// row per layer and a total per solver; with --layers below 32 the 224-matrix total is the measured
// per-layer mean times 32, and says so. A fast solver that fell back to the exact one is counted.
// --smoke: two layers of a model 16x narrower (CI checks that the program works).
//
// --jobs N[,N...]: the matrices of a layer are initialised N at a time, one per thread, with the
// BLAS on 1/N of its threads (examples/concurrent_jobs.hpp); a column per solver and N, each the
// layer's wall clock. Most of a fast solve is narrow, memory-bound products and small
// factorisations that a multi-threaded BLAS barely speeds up, so on few cores whole matrices side by
// side make better use of them (docs/benchmarks.md). Concurrency changes no result: with --smoke
// and N > 1 the program also initialises each layer one matrix at a time, with the BLAS threads of
// one job, and fails unless every adapter factor agrees bit for bit.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "milora/milora.hpp"
#include "synthetic_weights.hpp"
#include "tools/common/concurrent_jobs.hpp"

using B = milora::EigenBackend<float>;
using milora::Index;

namespace {

struct Projection {
  const char* name;
  Index out, in;
};

std::vector<Projection> llama_projections(Index hidden, Index intermediate) {
  return {{"q_proj", hidden, hidden},       {"k_proj", hidden, hidden},
          {"v_proj", hidden, hidden},       {"o_proj", hidden, hidden},
          {"gate_proj", intermediate, hidden}, {"up_proj", intermediate, hidden},
          {"down_proj", hidden, intermediate}};
}

struct LayerInit {
  double seconds = 0;                   // wall clock, all of the layer's matrices
  std::vector<std::vector<float>> a, b;  // each matrix's adapter factors, to compare runs
};

// Wraps a copy of every weight of a layer in an adapter of the given init, `jobs` at a time; the
// copies are made before the clock starts.
template <class Init>
LayerInit init_layer(const std::vector<B::matrix>& weights, Index rank, const Init& init, int jobs) {
  std::vector<milora::Linear<B>> layers;
  layers.reserve(weights.size());
  for (const auto& w : weights) layers.emplace_back(B::matrix(w));
  LayerInit out;
  out.a.resize(weights.size());
  out.b.resize(weights.size());
  // Largest first, so that N workers finish together.
  std::vector<std::size_t> order(weights.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    return B::rows(weights[x]) * B::cols(weights[x]) > B::rows(weights[y]) * B::cols(weights[y]);
  });
  const auto t0 = std::chrono::steady_clock::now();
  milora::tools::for_each_concurrently(order.size(), jobs, [&](std::size_t n) {
    const std::size_t i = order[n];
    milora::Adapter<B, Init> adapter(layers[i], {.rank = rank, .alpha = double(rank)}, init);
    out.a[i] = B::to_host(adapter.A());
    out.b[i] = B::to_host(adapter.B());
  });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) out.push_back(item);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Index layers = 32, rank = 16, hidden = 4096, intermediate = 11008;
  std::vector<int> job_counts = {1};
  bool smoke = false;
  std::vector<std::string> solvers = {"exact", "krylov", "randomized"};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "model_init_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--smoke") {
      smoke = true, layers = 2, hidden = 256, intermediate = 688;
    } else if (a == "--layers") {
      layers = std::stol(value());
    } else if (a == "--rank") {
      rank = std::stol(value());
    } else if (a == "--solvers") {
      solvers = split(value());
    } else if (a == "--jobs") {
      job_counts.clear();
      for (const auto& j : split(value())) job_counts.push_back(std::stoi(j));
    } else {
      std::fprintf(stderr,
                   "usage: model_init_bench [--layers N] [--rank R] [--solvers exact,krylov,randomized] "
                   "[--jobs N[,N...]] [--smoke]\n");
      return 2;
    }
  }
  for (const auto& s : solvers)
    if (s != "exact" && s != "krylov" && s != "randomized") {
      std::fprintf(stderr, "model_init_bench: unknown solver '%s' (exact, krylov, randomized)\n", s.c_str());
      return 2;
    }
  if (layers < 1 || rank < 1 || job_counts.empty() || *std::min_element(job_counts.begin(), job_counts.end()) < 1) {
    std::fprintf(stderr, "model_init_bench: --layers, --rank and --jobs must be positive\n");
    return 2;
  }

  int fallbacks = 0;  // CholeskyKrylovSVD logs one line when it hands a matrix to ExactSVD (under log's mutex)
  milora::set_log_sink([&](std::string_view line) {
    ++fallbacks;
    std::fprintf(stderr, "milora: %.*s\n", int(line.size()), line.data());
  });

  const auto projections = llama_projections(hidden, intermediate);
  // A column per solver and job count: "krylov" (one matrix at a time), "krylov -j2", ...
  const auto label = [](const std::string& s, int j) { return j == 1 ? s : s + " -j" + std::to_string(j); };
  std::map<std::string, double> total;
  std::printf("%-6s", "layer");
  for (const auto& s : solvers)
    for (int j : job_counts) std::printf(" %15s", (label(s, j) + " [s]").c_str());
  std::printf("\n");
  for (Index l = 0; l < layers; ++l) {
    std::vector<B::matrix> weights;
    for (std::size_t p = 0; p < projections.size(); ++p) {
      const auto& proj = projections[p];
      const auto spectrum = milora::examples::llm_like_spectrum(std::min(proj.out, proj.in));
      weights.push_back(
          milora::examples::with_spectrum<B>(proj.out, proj.in, spectrum, 0x7B00 + std::uint64_t(l) * 16 + p));
    }
    std::map<std::string, double> layer_seconds;
    for (const auto& s : solvers)
      for (int jobs : job_counts) {
        const auto run = [&](int n) {
          if (s == "exact") return init_layer(weights, rank, milora::MinorSVD<milora::ExactSVD>{}, n);
          if (s == "krylov") return init_layer(weights, rank, milora::MinorSVD<milora::CholeskyKrylovSVD>{}, n);
          return init_layer(weights, rank, milora::PrincipalSVD<milora::RandomizedSVD>{}, n);
        };
        const auto result = run(jobs);
        layer_seconds[label(s, jobs)] = result.seconds;
        if (smoke && jobs > 1) {  // the same adapters, one matrix at a time with the same BLAS threads each
          milora::tools::BlasThreadsPerJob blas(jobs);  // (a BLAS's rounding may depend on its thread count)
          const auto alone = run(1);
          if (alone.a != result.a || alone.b != result.b) {
            std::fprintf(stderr,
                         "model_init_bench: %s, layer %ld: --jobs %d gave other adapter factors than --jobs 1\n",
                         s.c_str(), long(l), jobs);
            return 1;
          }
        }
      }
    std::printf("%-6ld", long(l));
    for (const auto& s : solvers)
      for (int j : job_counts) {
        std::printf(" %15.2f", layer_seconds[label(s, j)]);
        total[label(s, j)] += layer_seconds[label(s, j)];
      }
    std::printf("\n");
    std::fflush(stdout);
  }

  const Index matrices = layers * Index(projections.size());
  std::printf("\n%ld matrices (%ld layers, hidden %ld, intermediate %ld), rank %ld:\n", long(matrices), long(layers),
              long(hidden), long(intermediate), long(rank));
  for (const auto& s : solvers)
    for (int j : job_counts) {
      const std::string c = label(s, j), exact = label("exact", j);
      std::printf("  %-15s total %9.1f s", c.c_str(), total[c]);
      if (layers < 32)
        std::printf(", 32 layers (224 matrices) ~ %9.1f s (per-layer mean x 32)", total[c] / double(layers) * 32);
      if (total.count(exact) && s != "exact") std::printf(", %.2fx faster than exact", total[exact] / total[c]);
      if (j != 1 && total.count(s)) std::printf(", %.2fx the throughput of one at a time", total[s] / total[c]);
      std::printf("\n");
    }
  if (fallbacks) std::printf("  %d fast-solver fallback(s) to the exact SVD (logged above)\n", fallbacks);
  return 0;
}
