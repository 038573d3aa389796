// The same weights and the same seed give the same adapters, outputs, gradients and AdamW steps on
// the Eigen and the xtensor backend (float, relative Frobenius error <= 1e-5: both run the same
// float arithmetic through OpenBLAS / LAPACK, differing only in call paths).
#include "cross_backend.hpp"

#if defined(MILORA_HAS_XTENSOR)

namespace {
using EB = milora::EigenBackend<float>;
using XB = milora::XtensorBackend<float>;
constexpr double kTol = 1e-5;
constexpr std::pair<milora::Index, milora::Index> kShapes[] = {{24, 16}, {16, 24}};
}  // namespace

TEST_CASE("cross-backend: LoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kShapes) test::compare_backends<milora::LoRA<EB>, milora::LoRA<XB>>(out, in, kTol);
}
TEST_CASE("cross-backend: PiSSA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kShapes) test::compare_backends<milora::PiSSA<EB>, milora::PiSSA<XB>>(out, in, kTol);
}
TEST_CASE("cross-backend: MiLoRA is the same on Eigen and xtensor (float, 1e-5)") {
  for (auto [out, in] : kShapes) test::compare_backends<milora::MiLoRA<EB>, milora::MiLoRA<XB>>(out, in, kTol);
}

#endif  // MILORA_HAS_XTENSOR
