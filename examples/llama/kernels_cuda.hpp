// LlamaKernels for CudaBackend<float|double>: the same model (model.hpp) on a GPU.
//
// Host code, for the host compiler: checks (shapes, tokens, targets: on the host, where the token
// lists are), the token upload, and launchers declared here and defined in kernels_cuda.cuh, which
// a program compiles once with nvcc by adding kernels_cuda.cu to its sources (as milora's own
// kernels.cu). Each kernel runs the row math of kernels_rows.hpp, one thread per row or element:
// the math is tested on the CPU in CI, where there is no GPU, against the CPU kernels.
//
// A first, plain version: the attention keeps the (batch*heads*seq) x seq probabilities like the
// CPU kernels (the interface's probs), its products go through cuBLAS one (sequence, head) at a
// time, and the row kernels use one thread per row. A fused (flash-style) attention and bf16
// storage are the next steps of issue 8; they change this file and kernels_cuda.cuh, not the model.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels_cuda_launch.hpp"
#include "milora/backend/cuda.hpp"

namespace llama {

template <class T>
struct LlamaKernels<milora::CudaBackend<T>> {
  using BE = milora::CudaBackend<T>;
  using view = typename BE::view;
  using const_view = typename BE::const_view;

  static void embed(const_view table, std::span<const Token> tokens, view out) {
    require(out.rows() == Index(tokens.size()) && out.cols() == table.cols(), "embed: output shape");
    check_tokens(tokens, table.rows());
    const auto dev = upload(tokens);
    cuda_launch::embed<T>(table, dev.data(), out, stream());
    synchronize_before_free("embed");
  }

  static void embed_backward(const_view dout, std::span<const Token> tokens, view dtable) {
    require(dout.rows() == Index(tokens.size()) && dout.cols() == dtable.cols(), "embed_backward: shapes");
    const auto dev = upload(tokens);
    cuda_launch::embed_backward<T>(dout, dev.data(), dtable, stream());
    synchronize_before_free("embed_backward");
  }

  static void rmsnorm_forward(const_view x, const_view w, double eps, view y, view rstd) {
    require(w.cols() == x.cols() && y.rows() == x.rows() && rstd.cols() == x.rows(), "rmsnorm_forward: shapes");
    cuda_launch::rmsnorm_forward<T>(x, w.data(), eps, y, rstd.data(), stream());
  }
  static void rmsnorm_backward(const_view dy, const_view x, const_view w, const_view rstd, view dx) {
    require(w.cols() == x.cols() && dx.rows() == x.rows() && rstd.cols() == x.rows(), "rmsnorm_backward: shapes");
    cuda_launch::rmsnorm_backward<T>(dy, x, w.data(), rstd.data(), dx, stream());
  }
  static void rmsnorm_backward_weight(const_view dy, const_view x, const_view rstd, view dw) {
    require(dw.cols() == x.cols() && rstd.cols() == x.rows(), "rmsnorm_backward_weight: shapes");
    cuda_launch::rmsnorm_backward_weight<T>(dy, x, rstd.data(), dw.data(), stream());
  }
  static void rope(view x, const_view cos, const_view sin, Index seq, Index head_dim, double sign) {
    cuda_launch::rope<T>(x, cos, sin, seq, head_dim, sign, stream());
  }

  /// As the CPU kernel: per (sequence, head) S = Q K^T / sqrt(d) into probs, a causal softmax over
  /// every row of probs, then out = P V. Query head h reads key/value head h / group.
  static void attention_forward(const_view q, const_view k, const_view v, const AttentionShape& s, view out, view probs) {
    const T scale = T(1 / std::sqrt(double(s.head_dim)));
    for (Index b = 0; b < s.batch; ++b)
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        BE::gemm(scale, BE::cblock(q, b * s.seq, h * s.head_dim, s.seq, s.head_dim), milora::Trans::no,
                 BE::cblock(k, b * s.seq, g * s.head_dim, s.seq, s.head_dim), milora::Trans::yes, 0,
                 BE::block(probs, (b * s.heads + h) * s.seq, 0, s.seq, s.seq));
      }
    cuda_launch::softmax_causal<T>(probs, s.seq, stream());
    for (Index b = 0; b < s.batch; ++b)
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        BE::gemm(1, BE::cblock(probs, (b * s.heads + h) * s.seq, 0, s.seq, s.seq), milora::Trans::no,
                 BE::cblock(v, b * s.seq, g * s.head_dim, s.seq, s.head_dim), milora::Trans::no, 0,
                 BE::block(out, b * s.seq, h * s.head_dim, s.seq, s.head_dim));
      }
  }

  /// dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = dS K / sqrt(d), dK += dS^T Q / sqrt(d),
  /// dV += P^T dO (dk, dv summed over the query heads that share them).
  static void attention_backward(const_view dout, const_view q, const_view k, const_view v, const_view probs,
                                 const AttentionShape& s, view dq, view dk, view dv) {
    const T scale = T(1 / std::sqrt(double(s.head_dim)));
    BE::scale(dk, 0);
    BE::scale(dv, 0);
    auto dp = BE::zeros(s.seq, s.seq);  // reused: every use is ordered on the one stream
    for (Index b = 0; b < s.batch; ++b)
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        const Index r0 = b * s.seq, cq = h * s.head_dim, ckv = g * s.head_dim;
        const auto p = BE::cblock(probs, (b * s.heads + h) * s.seq, 0, s.seq, s.seq);
        const auto doh = BE::cblock(dout, r0, cq, s.seq, s.head_dim);
        BE::gemm(1, doh, milora::Trans::no, BE::cblock(v, r0, ckv, s.seq, s.head_dim), milora::Trans::yes, 0, dp);
        BE::gemm(1, p, milora::Trans::yes, doh, milora::Trans::no, 1, BE::block(dv, r0, ckv, s.seq, s.head_dim));
        cuda_launch::softmax_causal_backward<T>(p, dp, s.seq, stream());
        BE::gemm(scale, dp, milora::Trans::no, BE::cblock(k, r0, ckv, s.seq, s.head_dim), milora::Trans::no, 0,
                 BE::block(dq, r0, cq, s.seq, s.head_dim));
        BE::gemm(scale, dp, milora::Trans::yes, BE::cblock(q, r0, cq, s.seq, s.head_dim), milora::Trans::no, 1,
                 BE::block(dk, r0, ckv, s.seq, s.head_dim));
      }
  }

  static void swiglu_forward(const_view gate, const_view up, view out) { cuda_launch::swiglu_forward<T>(gate, up, out, stream()); }
  static void swiglu_backward(const_view dout, const_view gate, const_view up, view dgate, view dup) {
    cuda_launch::swiglu_backward<T>(dout, gate, up, dgate, dup, stream());
  }

  /// As the CPU kernel: targets are checked on the host, the per-row losses summed there in double.
  static double cross_entropy(const_view logits, std::span<const Token> targets, double grad_scale, view dlogits) {
    const Index n = logits.rows(), vocab = logits.cols();
    require(Index(targets.size()) == n, "cross_entropy: one target per row");
    const bool grad = dlogits.size() != 0;
    if (grad) require(dlogits.rows() == n && dlogits.cols() == vocab, "cross_entropy: dlogits shape");
    const Index count = count_targets(targets, vocab);
    const auto dev = upload(targets);
    milora::cuda::DeviceBuffer<double> losses(std::size_t(std::max<Index>(n, 1)));
    cuda_launch::cross_entropy<T>(logits, dev.data(), count == 0 ? 0.0 : grad_scale / double(count),
                                  grad ? dlogits : view{}, losses.data(), stream());
    std::vector<double> host(static_cast<std::size_t>(n));
    if (n > 0)
      milora::cuda::check(cudaMemcpyAsync(host.data(), losses.data(), std::size_t(n) * sizeof(double), cudaMemcpyDeviceToHost,
                                          stream()),
                          "cudaMemcpyAsync (cross_entropy losses)");
    synchronize_before_free("cross_entropy");
    double total = 0;
    for (double l : host) total += l;
    return count == 0 ? 0.0 : total / double(count);
  }

 private:
  static cudaStream_t stream() { return milora::cuda::context().stream(); }

  // Tokens to the device. cudaMemcpyAsync from pageable memory returns once the host data is
  // staged, so the span may go; the buffer itself is freed only after synchronize_before_free.
  static milora::cuda::DeviceBuffer<Token> upload(std::span<const Token> tokens) {
    milora::cuda::DeviceBuffer<Token> dev(tokens.size());
    if (!tokens.empty())
      milora::cuda::check(cudaMemcpyAsync(dev.data(), tokens.data(), tokens.size_bytes(), cudaMemcpyHostToDevice, stream()),
                          "cudaMemcpyAsync (tokens)");
    return dev;
  }
  // cudaFree waits anyway; this names the kernel if an asynchronous failure surfaces here.
  static void synchronize_before_free(const char* kernel) { milora::cuda::context().synchronize(kernel); }

  static void require(bool ok, const char* what) {
    if (!ok) throw milora::shape_error(milora::detail::concat("LlamaKernels<CudaBackend>::", what, " mismatch"));
  }
};

}  // namespace llama
