// LlamaKernels for CudaBackend<float|double>: the same model (model.hpp) on a GPU.
//
// Host code, for the host compiler: checks (shapes, tokens, targets: on the host, where the token
// lists are), the token upload, and launchers declared here and defined in kernels_cuda.cuh, which
// a program compiles once with nvcc by adding kernels_cuda.cu to its sources (as milora's own
// kernels.cu). The element-wise kernels run the row math of kernels_rows.hpp, one thread per
// element; the row reductions (RMSNorm, cross-entropy) the same formulas with a warp per row. The
// math is tested on the CPU in CI, where there is no GPU, against the CPU kernels.
//
// The attention is fused (FusedAttention in kernels_rows.hpp): it keeps one logsumexp per query
// row instead of the seq x seq probabilities, and its backward recomputes them. For float and
// head_dim 16/32/64/128 it runs in shared-memory tiles of 64 rows (attention_tiled.cuh), its
// products on tensor cores in TF32 when the context allows TF32 (attention_tensor_cores.cuh); double
// and other head sizes keep one thread per row. docs/benchmarks.md has the H200 profile.
#pragma once

#include <algorithm>
#include <cmath>
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

  static void rope_positions(view x, const_view cos, const_view sin, Index head_dim, std::span<const std::int32_t> positions) {
    require(Index(positions.size()) == x.rows(), "rope_positions: one position per row");
    const auto dev = upload(positions);
    cuda_launch::rope_positions<T>(x, cos, sin, head_dim, dev.data(), stream());
    synchronize_before_free("rope_positions");
  }

  /// One logsumexp per query row (1 x batch*heads*seq), not the CPU's seq x seq probabilities:
  /// the attention is fused (kernels_rows.hpp, FusedAttention), so its memory grows with seq, not
  /// seq^2.
  static MatrixShape attention_saved_shape(const AttentionShape& s) { return {1, s.batch * s.heads * s.seq}; }

  /// out = softmax(Q K^T / sqrt(d) + causal mask) V, online softmax over key tiles (or rows);
  /// lse keeps each row's logsumexp for the backward.
  static void attention_forward(const_view q, const_view k, const_view v, const AttentionShape& s, view out, view lse) {
    check_attention(q, k, v, s, out, lse);
    cuda_launch::attention_forward<T>(fused(q, k, v, s), s.batch, out, lse.data(), stream());
  }

  /// dq, and dk, dv summed over the query heads that share them; the probabilities are recomputed
  /// from q, k and lse (the formulas: FusedAttention in kernels_rows.hpp).
  static void attention_backward(const_view dout, const_view q, const_view k, const_view v, const_view out,
                                 const_view lse, const AttentionShape& s, view dq, view dk, view dv) {
    check_attention(q, k, v, s, out, lse);
    require(dout.rows() == q.rows() && dout.cols() == q.cols() && dq.rows() == q.rows() && dq.cols() == q.cols() &&
                dk.rows() == k.rows() && dk.cols() == k.cols() && dv.rows() == v.rows() && dv.cols() == v.cols(),
            "attention_backward: gradient shapes");
    milora::cuda::DeviceBuffer<T> delta(std::size_t(std::max<Index>(lse.cols(), 1)));
    cuda_launch::attention_backward<T>(fused(q, k, v, s), s.batch, dout, out, lse.data(), delta.data(), dq, dk, dv,
                                       stream());
    synchronize_before_free("attention_backward");
  }

  /// New query rows against the key/value caches (rows::CachedAttention: a warp per query row, its
  /// lanes sharing the head's dimensions).
  static void attention_cached(const_view q, const_view k_cache, const_view v_cache, const CachedAttentionShape& s,
                               std::span<const std::int32_t> start, view out) {
    require(s.batch > 0 && s.seq > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0 && s.head_dim > 0 &&
                s.past + s.seq <= s.capacity && Index(start.size()) == s.batch,
            "attention_cached: CachedAttentionShape");
    require(q.rows() == s.batch * s.seq && q.cols() == s.heads * s.head_dim && out.rows() == q.rows() && out.cols() == q.cols() &&
                k_cache.rows() == s.batch * s.capacity && k_cache.cols() == s.kv_heads * s.head_dim &&
                v_cache.rows() == k_cache.rows() && v_cache.cols() == k_cache.cols(),
            "attention_cached: q, caches, out shapes");
    const auto dev = upload(start);
    const rows::CachedAttention<T> a{s.seq,     s.heads, s.kv_heads, s.head_dim, s.capacity, s.past, 1 / std::sqrt(double(s.head_dim)),
                                     {q.data(), q.ld()}, {k_cache.data(), k_cache.ld()}, {v_cache.data(), v_cache.ld()}};
    cuda_launch::attention_cached<T>(a, s.batch, dev.data(), out, stream());
    synchronize_before_free("attention_cached");
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

  // Tokens (or positions, slots) to the device. cudaMemcpyAsync from pageable memory returns once the host data is
  // staged, so the span may go; the buffer itself is freed only after synchronize_before_free.
  static milora::cuda::DeviceBuffer<std::int32_t> upload(std::span<const std::int32_t> tokens) {
    milora::cuda::DeviceBuffer<std::int32_t> dev(tokens.size());
    if (!tokens.empty())
      milora::cuda::check(cudaMemcpyAsync(dev.data(), tokens.data(), tokens.size_bytes(), cudaMemcpyHostToDevice, stream()),
                          "cudaMemcpyAsync (tokens)");
    return dev;
  }
  // cudaFree waits anyway; this names the kernel if an asynchronous failure surfaces here.
  static void synchronize_before_free(const char* kernel) { milora::cuda::context().synchronize(kernel); }

  static rows::FusedAttention<T> fused(const_view q, const_view k, const_view v, const AttentionShape& s) {
    return {s.seq, s.heads, s.kv_heads, s.head_dim, 1 / std::sqrt(double(s.head_dim)),
            {q.data(), q.ld()}, {k.data(), k.ld()}, {v.data(), v.ld()}};
  }
  static void check_attention(const_view q, const_view k, const_view v, const AttentionShape& s, const_view out,
                              const_view lse) {
    require(s.batch > 0 && s.seq > 0 && s.kv_heads > 0 && s.heads % s.kv_heads == 0 && s.head_dim > 0,
            "attention: AttentionShape");
    const Index n = s.batch * s.seq;
    require(q.rows() == n && q.cols() == s.heads * s.head_dim && out.rows() == n && out.cols() == q.cols() &&
                k.rows() == n && k.cols() == s.kv_heads * s.head_dim && v.rows() == n && v.cols() == k.cols(),
            "attention: q, k, v, out shapes");
    require(lse.rows() == 1 && lse.cols() == s.batch * s.heads * s.seq, "attention: saved logsumexp shape");
  }

  static void require(bool ok, const char* what) {
    if (!ok) throw milora::shape_error(milora::detail::concat("LlamaKernels<CudaBackend>::", what, " mismatch"));
  }
};

}  // namespace llama
