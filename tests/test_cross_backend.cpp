// The same weights and the same seed give the same adapters, outputs, gradients and AdamW steps on
// the Eigen and the xtensor backend (float, relative Frobenius error <= 1e-5: both run the same
// float arithmetic through OpenBLAS / LAPACK, differing only in call paths).
#include "cross_backend.hpp"

#if defined(MILORA_HAS_XTENSOR)

namespace {
using EigenF = milora::EigenBackend<float>;
using XtensorF = milora::XtensorBackend<float>;
constexpr double kCrossTol = 1e-5;
constexpr std::pair<milora::Index, milora::Index> kCrossShapes[] = {{24, 16}, {16, 24}};
}  // namespace

TEST_CASE("cross-backend: LoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kCrossShapes) test::compare_backends<milora::LoRA<EigenF>, milora::LoRA<XtensorF>>(out, in, kCrossTol);
}
TEST_CASE("cross-backend: PiSSA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kCrossShapes) test::compare_backends<milora::PiSSA<EigenF>, milora::PiSSA<XtensorF>>(out, in, kCrossTol);
}
TEST_CASE("cross-backend: MiLoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kCrossShapes) test::compare_backends<milora::MiLoRA<EigenF>, milora::MiLoRA<XtensorF>>(out, in, kCrossTol);
}
// bf16 frozen weights: the same bf16 values multiplied through the same panel code (1e-3, as for
// CUDA in cuda/test_parity.cpp: a residual entry within float rounding of a bf16 rounding boundary
// may round to the neighbouring value on one backend).
TEST_CASE("cross-backend: MiLoRA with bf16 frozen weights is the same on Eigen and xtensor (1e-3)") {
  using Bf16MiLoRAEigen = milora::MiLoRA<EigenF, milora::ExactSVD, milora::Bf16Weights>;
  using Bf16MiLoRAXtensor = milora::MiLoRA<XtensorF, milora::ExactSVD, milora::Bf16Weights>;
  for (auto [out, in] : kCrossShapes) test::compare_backends<Bf16MiLoRAEigen, Bf16MiLoRAXtensor>(out, in, 1e-3);
}

#endif  // MILORA_HAS_XTENSOR
