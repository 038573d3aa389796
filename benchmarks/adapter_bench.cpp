// Cost of an unmerged adapter over a frozen 4096 x 4096 layer, as a ratio to the plain layer in
// the same run. fwd = forward; fwdbwd = forward + backward with the input gradient dx (what a
// layer inside a network pays: frozen weights need no weight gradient).
//
// FLOPs: the plain layer does 2*T*in*out per pass; the adapter adds T*r*(in + out) to forward and
// 2*T*r*(in + out) to backward, i.e. r*(in+out)/(in*out) = 0.8% at r = 16 for fwd+bwd... plus
// the memory traffic of six skinny products over T x 4096 activations, which is what really costs.
//
//   adapter_bench [--smoke] [google-benchmark flags]
//   --smoke: 256 x 256 layer, 64 tokens, one repetition (CI checks that the program works).
#include <cstring>
#include <string>

#include "milora/milora.hpp"
#include "ratio_reporter.hpp"

using B = milora::EigenBackend<float>;
using milora::Index;
using milora::Trans;

namespace {

Index g_dim = 4096;

B::matrix random(Index r, Index c, std::uint64_t seed, double sd = 1.0) {
  B::matrix m = B::zeros(r, c);
  B::fill_normal(m, 0.0, sd, seed);
  return m;
}

struct Problem {
  milora::Linear<B> layer{random(g_dim, g_dim, 1, 0.02)};
  B::matrix x, y, dy, dx;
  explicit Problem(Index tokens)
      : x(random(tokens, g_dim, 2)), y(B::zeros(tokens, g_dim)), dy(random(tokens, g_dim, 3)),
        dx(B::zeros(tokens, g_dim)) {}
};

void plain(benchmark::State& state, Index tokens, bool backward) {
  Problem p(tokens);
  for (auto _ : state) {
    p.layer.forward(p.x, p.y);
    if (backward) p.layer.backward_input(p.dy, p.dx);
    benchmark::DoNotOptimize(p.y.data());
    benchmark::DoNotOptimize(p.dx.data());
  }
}

void lora(benchmark::State& state, Index tokens, Index rank, bool backward, bool merged) {
  Problem p(tokens);
  milora::LoRA<B> ad(p.layer, {.rank = rank, .alpha = double(rank)});
  ad.B() = random(g_dim, rank, 4, 0.01);  // as after some training
  if (merged) ad.merge();
  B::matrix h = B::zeros(tokens, rank);
  for (auto _ : state) {
    ad.forward(p.x, p.y, h);
    if (backward) ad.backward(p.x, h, p.dy, p.dx);
    benchmark::DoNotOptimize(p.y.data());
    benchmark::DoNotOptimize(p.dx.data());
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--smoke") == 0) {
      smoke = true;
      for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
      --argc;
      break;
    }
  if (smoke) g_dim = 256;
  const std::vector<Index> token_counts = smoke ? std::vector<Index>{64} : std::vector<Index>{512, 2048};
  const std::vector<Index> ranks = smoke ? std::vector<Index>{16} : std::vector<Index>{8, 16, 64};

  using milora::bench::register_with_baseline;
  for (Index t : token_counts) {
    const std::string ts = "/T=" + std::to_string(t);
    register_with_baseline("plain_fwd" + ts, "plain_fwd" + ts, [=](auto& s) { plain(s, t, false); });
    register_with_baseline("plain_fwdbwd" + ts, "plain_fwdbwd" + ts, [=](auto& s) { plain(s, t, true); });
    for (Index r : ranks) {
      const std::string rs = "/r=" + std::to_string(r) + ts;
      register_with_baseline("lora_fwd" + rs, "plain_fwd" + ts, [=](auto& s) { lora(s, t, r, false, false); });
      register_with_baseline("lora_fwdbwd" + rs, "plain_fwdbwd" + ts, [=](auto& s) { lora(s, t, r, true, false); });
    }
    register_with_baseline("merged_fwd/r=16" + ts, "plain_fwd" + ts, [=](auto& s) { lora(s, t, 16, false, true); });
  }
  if (smoke) {
    static std::string one = "--benchmark_repetitions=1", quick = "--benchmark_min_time=0.01";
    std::vector<char*> args(argv, argv + argc);
    args.push_back(one.data());
    args.push_back(quick.data());
    return milora::bench::run_with_ratios(int(args.size()), args.data(), "adapter_bench --smoke");
  }
  return milora::bench::run_with_ratios(argc, argv, "adapter_bench: adapter vs plain 4096x4096 layer, float, EigenBackend");
}
