// interop_eigen: adapt weights that another framework owns, in place.
//
// Frameworks keep weights in their own buffers. milora wraps them through a view (Eigen::Map /
// Eigen::Ref for the Eigen backend): PiSSA / MiLoRA write the residual W' straight into that
// memory, and the adapter reads it from there. No copy of W is made. The same works for a weight
// stored in bf16 (part 3).
#include <cstdio>
#include <vector>

#include "milora/milora.hpp"

using B = milora::EigenBackend<float>;
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int main() {
  // 1. A weight in a plain buffer (as a PyTorch tensor's data_ptr() or an mmapped file gives).
  std::vector<float> buffer(32 * 24);
  for (std::size_t i = 0; i < buffer.size(); ++i) buffer[i] = float(milora::random::normal(1, i));
  const std::vector<float> original = buffer;
  Eigen::Map<RowMajor> mapped(buffer.data(), 32, 24);
  milora::WeightRef<B> layer1(mapped);
  milora::MiLoRA<B> a1(layer1, {.rank = 4, .alpha = 4});
  // The residual is in `buffer` itself; W' + s*B*A reproduces the original values.
  const Eigen::Map<const RowMajor> orig(original.data(), 32, 24);
  const float err1 = (mapped + float(a1.scale()) * a1.B() * a1.A() - orig).norm() / orig.norm();
  const bool written_in_place = buffer != original && layer1.weight().data() == buffer.data();

  // 2. An existing row-major Eigen::Matrix, wrapped by reference (no copy).
  RowMajor w = RowMajor::Random(16, 40);
  const RowMajor w0 = w;
  milora::WeightRef<B> layer2(w);
  milora::PiSSA<B> a2(layer2, {.rank = 2, .alpha = 2});
  const float err2 = (w + float(a2.scale()) * a2.B() * a2.A() - w0).norm() / w0.norm();

  // 3. A bf16 weight (a torch.bfloat16 tensor, a BF16 safetensors tensor) wrapped in place: W' is
  //    written back in bf16, so the contract holds to bf16's roundoff (2^-8 per entry), and A, B
  //    and their gradients stay float.
  using RowMajorBf16 = B::bf16_matrix;
  std::vector<Eigen::bfloat16> bf16_buffer(32 * 24);
  for (std::size_t i = 0; i < bf16_buffer.size(); ++i) bf16_buffer[i] = Eigen::bfloat16(original[i]);
  const RowMajor w3 = Eigen::Map<RowMajorBf16>(bf16_buffer.data(), 32, 24).cast<float>();  // W as stored
  Eigen::Map<RowMajorBf16> mapped3(bf16_buffer.data(), 32, 24);
  milora::WeightRef<B, milora::Bf16Weights> layer3(mapped3);
  milora::MiLoRA<B, milora::ExactSVD, milora::Bf16Weights> a3(layer3, {.rank = 4, .alpha = 4});
  const RowMajor w3_res = mapped3.cast<float>();
  const float err3 = (w3_res + float(a3.scale()) * a3.B() * a3.A() - w3).cwiseAbs().maxCoeff() /
                     w3_res.cwiseAbs().maxCoeff();
  const bool bf16_in_place = a3.weight().data() == bf16_buffer.data() && w3_res != w3;

  std::printf("buffer: written in place %s, contract error %.1e\n", written_in_place ? "yes" : "no", err1);
  std::printf("Eigen::Matrix: contract error %.1e (weight storage %s)\n", err2,
              a2.weight().data() == w.data() ? "shared" : "COPIED");
  std::printf("bf16 buffer: written in place %s, contract error %.1e (max entry, relative; bf16 roundoff 3.9e-3)\n",
              bf16_in_place ? "yes" : "no", err3);
  const bool ok = written_in_place && err1 < 1e-5f && err2 < 1e-5f && a2.weight().data() == w.data() && bf16_in_place &&
                  err3 <= 0x1p-8f;
  return ok ? 0 : 1;
}
