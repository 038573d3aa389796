// The init cost a user pays: PiSSA / MiLoRA adapters on every target matrix of a LLaMA-2-7B-shaped
// model (32 layers x q, k, v, o, gate, up, down = 224 float matrices: four 4096 x 4096, gate and up
// 11008 x 4096, down 4096 x 11008), with each spectral solver, timed end to end (the adapter
// constructor: solver, factors, residual W - s*B*A).
//
// The weights are random with an LLM-like spectrum (examples/synthetic_weights.hpp), generated one
// layer at a time so memory stays at one layer (~0.8 GB in float); generating them is not timed.
// Every solver initialises the same layer, so their totals are comparable within one run.
//
//   model_init_bench [--layers N=32] [--rank R=16] [--solvers exact,krylov,randomized] [--smoke]
//
// Solvers: exact (ExactSVD, one sgesdd; PiSSA and MiLoRA cost the same with it, so it runs once, as
// MiLoRA), krylov (MiLoRA with CholeskyKrylovSVD), randomized (PiSSA with RandomizedSVD). Prints a
// row per layer and a total per solver; with --layers below 32 the 224-matrix total is the measured
// per-layer mean times 32, and says so. A fast solver that fell back to the exact one is counted.
// --smoke: two layers of a model 16x narrower (CI checks that the program works).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../examples/synthetic_weights.hpp"
#include "milora/milora.hpp"

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

// Seconds to wrap a copy of `w` in an adapter of the given init (the copy is not timed).
template <class Init>
double time_init(const B::matrix& w, Index rank, const Init& init) {
  milora::Linear<B> layer{B::matrix(w)};
  const auto t0 = std::chrono::steady_clock::now();
  milora::Adapter<B, Init> adapter(layer, {.rank = rank, .alpha = double(rank)}, init);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!std::isfinite(B::squared_norm(adapter.A()))) std::abort();  // keep the work observable
  return s;
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
      layers = 2, hidden = 256, intermediate = 688;
    } else if (a == "--layers") {
      layers = std::stol(value());
    } else if (a == "--rank") {
      rank = std::stol(value());
    } else if (a == "--solvers") {
      solvers = split(value());
    } else {
      std::fprintf(stderr, "usage: model_init_bench [--layers N] [--rank R] [--solvers exact,krylov,randomized] [--smoke]\n");
      return 2;
    }
  }
  for (const auto& s : solvers)
    if (s != "exact" && s != "krylov" && s != "randomized") {
      std::fprintf(stderr, "model_init_bench: unknown solver '%s' (exact, krylov, randomized)\n", s.c_str());
      return 2;
    }
  if (layers < 1 || rank < 1) {
    std::fprintf(stderr, "model_init_bench: --layers and --rank must be positive\n");
    return 2;
  }

  int fallbacks = 0;  // CholeskyKrylovSVD logs one line when it hands a matrix to ExactSVD
  milora::set_log_sink([&](std::string_view line) {
    ++fallbacks;
    std::fprintf(stderr, "milora: %.*s\n", int(line.size()), line.data());
  });

  const auto projections = llama_projections(hidden, intermediate);
  std::map<std::string, double> total;
  std::printf("%-6s", "layer");
  for (const auto& s : solvers) std::printf(" %12s", (s + " [s]").c_str());
  std::printf("\n");
  for (Index l = 0; l < layers; ++l) {
    std::map<std::string, double> layer_seconds;
    for (std::size_t p = 0; p < projections.size(); ++p) {
      const auto& proj = projections[p];
      const auto w = milora::examples::with_spectrum<B>(proj.out, proj.in,
                                                         milora::examples::llm_like_spectrum(std::min(proj.out, proj.in)),
                                                         0x7B00 + std::uint64_t(l) * 16 + p);
      for (const auto& s : solvers) {
        double t = 0;
        if (s == "exact") t = time_init(w, rank, milora::MinorSVD<milora::ExactSVD>{});
        if (s == "krylov") t = time_init(w, rank, milora::MinorSVD<milora::CholeskyKrylovSVD>{});
        if (s == "randomized") t = time_init(w, rank, milora::PrincipalSVD<milora::RandomizedSVD>{});
        layer_seconds[s] += t;
      }
    }
    std::printf("%-6ld", long(l));
    for (const auto& s : solvers) {
      std::printf(" %12.2f", layer_seconds[s]);
      total[s] += layer_seconds[s];
    }
    std::printf("\n");
    std::fflush(stdout);
  }

  const Index matrices = layers * Index(projections.size());
  std::printf("\n%ld matrices (%ld layers, hidden %ld, intermediate %ld), rank %ld:\n", long(matrices), long(layers),
              long(hidden), long(intermediate), long(rank));
  for (const auto& s : solvers) {
    std::printf("  %-10s total %9.1f s", s.c_str(), total[s]);
    if (layers < 32) std::printf(", 32 layers (224 matrices) ~ %9.1f s (per-layer mean x 32)", total[s] / double(layers) * 32);
    if (total.count("exact") && s != "exact") std::printf(", %.2fx faster than exact", total["exact"] / total[s]);
    std::printf("\n");
  }
  if (fallbacks) std::printf("  %d fast-solver fallback(s) to the exact SVD (logged above)\n", fallbacks);
  return 0;
}
