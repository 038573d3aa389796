// CudaBackend on a GPU, as ratios against baselines measured in the same run:
//   adapter: LoRA forward + backward (dx, dA, dB) over a frozen layer, against the plain cuBLAS
//            layer's forward + backward (dx): 4096 x 4096 and 11008 x 4096 (out x in, LLaMA-7B's
//            attention and MLP up/gate shapes), r = 16 and 64, 2048 and 8192 tokens, float.
//            merged: the same after merge() (should be 1.00x).
//            bf16: the frozen weight stored in bf16 (Bf16Linear; one cublasGemmEx on tensor cores
//            per product, x rounded to bf16 by a kernel first): bf16_plain against the float plain
//            layer, bf16_lora (LoRA<B, Bf16Weights>, r = 16) against bf16_plain.
//   init:    PiSSA / MiLoRA init of one 4096 x 4096 weight with each spectral solver (PiSSA's
//            randomized init both as milora's RandomizedSVD and as cuSOLVER's Xgesvdr), against the
//            exact init (cuSOLVER gesvd) in the same run. torch.linalg.svd on the same GPU is timed
//            by scripts/gpu.sh beside this program.
// Every iteration ends with a stream synchronisation, so a row is the wall time of finished work.
//
//   cuda_bench [--smoke] [google-benchmark flags]
//   --smoke: 256 x 256, 64 tokens, one repetition. Without a CUDA device the program says so and
//            exits with 77 (CTest's skip code), so CI (nvcc, no GPU) builds and links it.
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "milora/backend/cuda.hpp"
#include "milora/milora.hpp"
#include "ratio_reporter.hpp"

using milora::Index;
using B = milora::CudaBackend<float>;

namespace {

Index g_scale = 1;  // 16 in --smoke: every dimension divided by it

void sync() { milora::cuda::context().synchronize("cudaStreamSynchronize (benchmark)"); }

B::matrix random(Index r, Index c, std::uint64_t seed, double sd = 1.0) {
  B::matrix m = B::zeros(r, c);
  B::fill_normal(m, 0.0, sd, seed);
  return m;
}

template <class Weights>
auto frozen_layer(Index out, Index in) {
  if constexpr (std::is_same_v<Weights, milora::Bf16Weights>)
    return milora::Bf16Linear<B>::rounded(random(out, in, 1, 0.02));
  else
    return milora::Linear<B>(random(out, in, 1, 0.02));
}

template <class Weights = milora::NativeWeights>
struct Problem {
  decltype(frozen_layer<Weights>(0, 0)) layer;
  B::matrix x, y, dy, dx;
  Problem(Index out, Index in, Index tokens)
      : layer(frozen_layer<Weights>(out, in)), x(random(tokens, in, 2)), y(B::zeros(tokens, out)),
        dy(random(tokens, out, 3)), dx(B::zeros(tokens, in)) {}
};

template <class Weights = milora::NativeWeights>
void plain(benchmark::State& state, Index out, Index in, Index tokens) {
  Problem<Weights> p(out, in, tokens);
  sync();
  for (auto _ : state) {
    p.layer.forward(p.x, p.y);
    p.layer.backward_input(p.dy, p.dx);
    sync();
  }
}

template <class Weights = milora::NativeWeights>
void lora(benchmark::State& state, Index out, Index in, Index tokens, Index rank, bool merged) {
  Problem<Weights> p(out, in, tokens);
  milora::LoRA<B, Weights> ad(p.layer, {.rank = rank, .alpha = double(rank)});
  ad.B() = random(out, rank, 4, 0.01);  // as after some training
  if (merged) ad.merge();
  B::matrix h = B::zeros(tokens, rank);
  sync();
  for (auto _ : state) {
    ad.forward(p.x, p.y, h);
    if (merged) p.layer.backward_input(p.dy, p.dx);  // merged: inference-style, the plain layer's work
    else ad.backward(p.x, h, p.dy, p.dx);
    sync();
  }
}

// A weight with an LLM-like spectrum is not needed for timing the exact path; the fast solvers'
// accuracy on such spectra is tested (tests/test_spectral.cpp) and measured on the CPU (docs/benchmarks.md).
template <class Adapter>
void init(benchmark::State& state, Index dim, Index rank) {
  const B::matrix w0 = random(dim, dim, 7, 0.02);
  for (auto _ : state) {
    milora::Linear<B> layer(B::clone(w0));
    Adapter ad(layer, {.rank = rank, .alpha = double(rank)});
    sync();
  }
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = milora::bench::take_flag(argc, argv, "--smoke");
  if (const std::string why = milora::cuda::no_device_reason(); !why.empty()) {
    std::printf("SKIPPED: cuda_bench needs a CUDA device (%s)\n", why.c_str());
    return 77;
  }
  if (smoke) g_scale = 16;
  using milora::bench::register_with_baseline;
  const std::vector<std::pair<Index, Index>> shapes = {{4096, 4096}, {11008, 4096}};
  const std::vector<Index> token_counts = smoke ? std::vector<Index>{1024} : std::vector<Index>{2048, 8192};
  const std::vector<Index> ranks = smoke ? std::vector<Index>{16} : std::vector<Index>{16, 64};
  for (auto [out0, in0] : shapes) {
    const Index out = out0 / g_scale, in = in0 / g_scale;
    for (Index t0 : token_counts) {
      const Index t = t0 / g_scale;
      const std::string sh = milora::detail::concat("/", out, "x", in, "/T=", t);
      const std::string base = "plain_fwdbwd" + sh;
      register_with_baseline(base, base, [=](auto& s) { plain(s, out, in, t); });
      for (Index r : ranks)
        register_with_baseline(milora::detail::concat("lora_fwdbwd/r=", r, sh), base,
                               [=](auto& s) { lora(s, out, in, t, r, false); });
      register_with_baseline("merged_fwdbwd/r=16" + sh, base, [=](auto& s) { lora(s, out, in, t, 16, true); });
      const std::string bf16_base = "bf16_plain_fwdbwd" + sh;
      register_with_baseline(bf16_base, base, [=](auto& s) { plain<milora::Bf16Weights>(s, out, in, t); });
      register_with_baseline("bf16_lora_fwdbwd/r=16" + sh, bf16_base,
                             [=](auto& s) { lora<milora::Bf16Weights>(s, out, in, t, 16, false); });
    }
  }
  const Index dim = 4096 / g_scale;
  for (Index r : ranks) {
    const std::string rs = milora::detail::concat("/", dim, "/r=", r);  // not operator+: GCC 12 -Wrestrict misfires
    const std::string exact = "init_milora_exact" + rs;
    register_with_baseline(exact, exact, [=](auto& s) { init<milora::MiLoRA<B>>(s, dim, r); });
    register_with_baseline("init_milora_cholesky_krylov" + rs, exact,
                           [=](auto& s) { init<milora::MiLoRA<B, milora::CholeskyKrylovSVD>>(s, dim, r); });
    register_with_baseline("init_pissa_exact" + rs, exact, [=](auto& s) { init<milora::PiSSA<B>>(s, dim, r); });
    register_with_baseline("init_pissa_randomized" + rs, exact,
                           [=](auto& s) { init<milora::PiSSA<B, milora::RandomizedSVD>>(s, dim, r); });
    register_with_baseline("init_pissa_cusolver_randomized" + rs, exact,
                           [=](auto& s) { init<milora::PiSSA<B, milora::CusolverRandomizedSVD>>(s, dim, r); });
  }
  std::vector<char*> args(argv, argv + argc);
  static std::string one = "--benchmark_repetitions=1", quick = "--benchmark_min_time=0.01";
  if (smoke) {
    args.push_back(one.data());
    args.push_back(quick.data());
  }
  return milora::bench::run_with_ratios(int(args.size()), args.data(),
                                        smoke ? "cuda_bench --smoke" : "cuda_bench: CudaBackend<float>, ratios vs baselines in the same run");
}
