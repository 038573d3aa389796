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

#endif  // MILORA_HAS_XTENSOR
