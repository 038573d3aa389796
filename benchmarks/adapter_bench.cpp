// Cost of an unmerged adapter over a frozen 4096 x 4096 layer, as a ratio to the plain layer in
// the same run. fwd = forward; fwdbwd = forward + backward with the input gradient dx (what a
// layer inside a network pays: frozen weights need no weight gradient).
//
// FLOPs: the plain layer does 2*T*in*out per pass; the adapter adds T*r*(in + out) to forward and
// 2*T*r*(in + out) to backward, i.e. r*(in+out)/(in*out) = 0.8% at r = 16 for fwd+bwd... plus
// the memory traffic of six skinny products over T x 4096 activations, which is what really costs.
//
// "bf16_" rows: the same with the frozen weight stored in bf16 (Bf16Linear, LoRA<B, Bf16Weights>):
// bf16_plain_* against the float plain layer (what the storage costs: rounding x and widening W
// panel by panel on the CPU), bf16_lora_* against bf16_plain_* (the adapter's overhead there).
//
// Every backend's adapter rows are measured against its own plain layer (rows prefixed "eigen/" and,
// when built with xtensor-blas, "xtensor/"). The "xtensor/plain_*" rows themselves are given against
// Eigen's plain layer: what the backend itself costs.
//
//   adapter_bench [--smoke] [google-benchmark flags]
//   --smoke: 256 x 256 layer, 64 tokens, one repetition (CI checks that the program works).
#include <string>
#include <type_traits>

#include "milora/milora.hpp"
#include "ratio_reporter.hpp"
#if defined(MILORA_HAS_XTENSOR)
#include "milora/backend/xtensor.hpp"
#endif

using milora::Index;
using milora::Trans;

namespace {

Index g_dim = 4096;

template <class B>
typename B::matrix random(Index r, Index c, std::uint64_t seed, double sd = 1.0) {
  typename B::matrix m = B::zeros(r, c);
  B::fill_normal(m, 0.0, sd, seed);
  return m;
}

template <class B, class Weights>
auto frozen_layer() {
  if constexpr (std::is_same_v<Weights, milora::Bf16Weights>)
    return milora::Bf16Linear<B>::rounded(random<B>(g_dim, g_dim, 1, 0.02));
  else
    return milora::Linear<B>(random<B>(g_dim, g_dim, 1, 0.02));
}

template <class B, class Weights = milora::NativeWeights>
struct Problem {
  decltype(frozen_layer<B, Weights>()) layer = frozen_layer<B, Weights>();
  typename B::matrix x, y, dy, dx;
  explicit Problem(Index tokens)
      : x(random<B>(tokens, g_dim, 2)), y(B::zeros(tokens, g_dim)), dy(random<B>(tokens, g_dim, 3)),
        dx(B::zeros(tokens, g_dim)) {}
};

template <class B, class Weights = milora::NativeWeights>
void plain(benchmark::State& state, Index tokens, bool backward) {
  Problem<B, Weights> p(tokens);
  for (auto _ : state) {
    p.layer.forward(p.x, p.y);
    if (backward) p.layer.backward_input(p.dy, p.dx);
    benchmark::DoNotOptimize(p.y.data());
    benchmark::DoNotOptimize(p.dx.data());
  }
}

template <class B, class Weights = milora::NativeWeights>
void lora(benchmark::State& state, Index tokens, Index rank, bool backward, bool merged) {
  Problem<B, Weights> p(tokens);
  milora::LoRA<B, Weights> ad(p.layer, {.rank = rank, .alpha = double(rank)});
  ad.B() = random<B>(g_dim, rank, 4, 0.01);  // as after some training
  if (merged) ad.merge();
  typename B::matrix h = B::zeros(tokens, rank);
  for (auto _ : state) {
    ad.forward(p.x, p.y, h);
    if (backward) ad.backward(p.x, h, p.dy, p.dx);
    benchmark::DoNotOptimize(p.y.data());
    benchmark::DoNotOptimize(p.dx.data());
  }
}

// The rows of one backend, each against that backend's plain layer; the plain rows themselves
// against the plain rows of `reference` (their own, for the reference backend).
template <class B>
void register_backend(const std::string& prefix, const std::string& reference,
                      const std::vector<Index>& token_counts, const std::vector<Index>& ranks) {
  using milora::bench::register_with_baseline;
  for (Index t : token_counts) {
    const std::string ts = "/T=" + std::to_string(t), pf = prefix + "plain_fwd" + ts,
                      pb = prefix + "plain_fwdbwd" + ts;
    register_with_baseline(pf, reference + "plain_fwd" + ts, [=](auto& s) { plain<B>(s, t, false); });
    register_with_baseline(pb, reference + "plain_fwdbwd" + ts, [=](auto& s) { plain<B>(s, t, true); });
    for (Index r : ranks) {
      const std::string rs = "/r=" + std::to_string(r) + ts;
      register_with_baseline(prefix + "lora_fwd" + rs, pf, [=](auto& s) { lora<B>(s, t, r, false, false); });
      register_with_baseline(prefix + "lora_fwdbwd" + rs, pb, [=](auto& s) { lora<B>(s, t, r, true, false); });
    }
    register_with_baseline(prefix + "merged_fwd/r=16" + ts, pf, [=](auto& s) { lora<B>(s, t, 16, false, true); });
    if constexpr (milora::Bf16Backend<B>) {
      using milora::Bf16Weights;
      const std::string bf = prefix + "bf16_plain_fwd" + ts, bb = prefix + "bf16_plain_fwdbwd" + ts;
      register_with_baseline(bf, pf, [=](auto& s) { plain<B, Bf16Weights>(s, t, false); });
      register_with_baseline(bb, pb, [=](auto& s) { plain<B, Bf16Weights>(s, t, true); });
      register_with_baseline(prefix + "bf16_lora_fwdbwd/r=16" + ts, bb,
                             [=](auto& s) { lora<B, Bf16Weights>(s, t, 16, true, false); });
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = milora::bench::take_flag(argc, argv, "--smoke");
  if (smoke) g_dim = 256;
  const std::vector<Index> token_counts = smoke ? std::vector<Index>{64} : std::vector<Index>{512, 2048};
  const std::vector<Index> ranks = smoke ? std::vector<Index>{16} : std::vector<Index>{8, 16, 64};

  register_backend<milora::EigenBackend<float>>("eigen/", "eigen/", token_counts, ranks);
#if defined(MILORA_HAS_XTENSOR)
  register_backend<milora::XtensorBackend<float>>("xtensor/", "eigen/", token_counts, ranks);
#endif
  if (smoke) {
    static std::string one = "--benchmark_repetitions=1", quick = "--benchmark_min_time=0.01";
    std::vector<char*> args(argv, argv + argc);
    args.push_back(one.data());
    args.push_back(quick.data());
    return milora::bench::run_with_ratios(int(args.size()), args.data(), "adapter_bench --smoke");
  }
  return milora::bench::run_with_ratios(argc, argv, "adapter_bench: adapter vs plain 4096x4096 layer, float");
}
