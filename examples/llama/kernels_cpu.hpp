// LlamaKernels for EigenBackend<float|double>: the CPU kernels, forward and backward.
//
// Plain loops over rows, written to be read next to docs/llama.md; the attention's products go
// through the backend's gemm (OpenBLAS), one (sequence, head) pair at a time, on strided blocks of
// the q/k/v activations, so nothing is transposed or copied. Reductions run in double: the kernels
// are a reference, and a float sum over 4096 features loses digits the PyTorch comparison would see.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "kernels.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/core/checks.hpp"

namespace llama {

template <class T>
struct LlamaKernels<milora::EigenBackend<T>> {
  using BE = milora::EigenBackend<T>;
  using view = typename BE::view;
  using const_view = typename BE::const_view;

  /// out[i, :] = table[tokens[i], :]. Throws value_error for a token outside the table.
  static void embed(const_view table, std::span<const Token> tokens, view out) {
    require(out.rows() == Index(tokens.size()) && out.cols() == table.cols(), "embed: output shape");
    check_tokens(tokens, table.rows());  // all of them before the first row is written
    for (std::size_t i = 0; i < tokens.size(); ++i) out.row(Index(i)) = table.row(tokens[i]);
  }

  /// dtable[tokens[i], :] += dout[i, :]: the embedding's gradient (full training only).
  static void embed_backward(const_view dout, std::span<const Token> tokens, view dtable) {
    require(dout.rows() == Index(tokens.size()) && dout.cols() == dtable.cols(), "embed_backward: shapes");
    for (std::size_t i = 0; i < tokens.size(); ++i) dtable.row(tokens[i]) += dout.row(Index(i));
  }

  /// y = w * x * rstd per row, rstd = 1/sqrt(mean(x^2) + eps) (saved for backward, 1 x rows).
  static void rmsnorm_forward(const_view x, const_view w, double eps, view y, view rstd) {
    const Index n = x.rows(), c = x.cols();
    for (Index i = 0; i < n; ++i) {
      double ss = 0;
      for (Index j = 0; j < c; ++j) ss += double(x(i, j)) * double(x(i, j));
      const T r = T(1 / std::sqrt(ss / double(c) + eps));
      rstd(0, i) = r;
      // transformers: weight * (x * rsqrt(var + eps)); the same two roundings in this order
      for (Index j = 0; j < c; ++j) y(i, j) = w(0, j) * (x(i, j) * r);
    }
  }

  /// dx += rstd * (w*dy) - rstd^3 / C * x * sum(w*dy*x), per row (the weight is frozen: no dw).
  static void rmsnorm_backward(const_view dy, const_view x, const_view w, const_view rstd, view dx) {
    const Index n = x.rows(), c = x.cols();
    for (Index i = 0; i < n; ++i) {
      const double r = rstd(0, i);
      double dot = 0;
      for (Index j = 0; j < c; ++j) dot += double(w(0, j)) * double(dy(i, j)) * double(x(i, j));
      const double k = r * r * r * dot / double(c);
      for (Index j = 0; j < c; ++j) dx(i, j) += T(r * double(w(0, j)) * double(dy(i, j)) - k * double(x(i, j)));
    }
  }

  /// dw_j += sum_i dy_ij x_ij rstd_i: the norm weight's gradient (full training only).
  static void rmsnorm_backward_weight(const_view dy, const_view x, const_view rstd, view dw) {
    std::vector<double> acc(std::size_t(x.cols()), 0.0);
    for (Index i = 0; i < x.rows(); ++i) {
      const double r = rstd(0, i);
      for (Index j = 0; j < x.cols(); ++j) acc[std::size_t(j)] += double(dy(i, j)) * double(x(i, j)) * r;
    }
    for (Index j = 0; j < x.cols(); ++j) dw(0, j) += T(acc[std::size_t(j)]);
  }

  /// Rotary embedding in Hugging Face's rotate-half layout, in place on every head of every row:
  ///   x1' = x1 cos - x2 sin,  x2' = x2 cos + x1 sin   (x1, x2 = first / second half of a head)
  /// at position t = row % seq. `sign` = -1 applies the inverse rotation, which is the backward
  /// pass (a rotation's Jacobian is the rotation, its transpose the inverse rotation).
  /// cos, sin: max_positions x head_dim/2 tables (model.hpp builds them once).
  static void rope(view x, const_view cos, const_view sin, Index seq, Index head_dim, double sign) {
    rotate_heads(x, cos, sin, head_dim, sign, [seq](Index r) { return r % seq; });
  }

  /// rope for packed rows: the position of row r is its place in its example, r % seq minus the
  /// start of that example (AttentionShape::segment_start), so every example starts at position 0.
  static void rope_segmented(view x, const_view cos, const_view sin, Index seq, Index head_dim, double sign,
                             const std::int32_t* segment_start) {
    rotate_heads(x, cos, sin, head_dim, sign, [seq, segment_start](Index r) { return r % seq - segment_start[r]; });
  }

  /// rope at positions[r] for row r (generation: each new row's position in its sequence).
  static void rope_positions(view x, const_view cos, const_view sin, Index head_dim, std::span<const std::int32_t> positions) {
    require(Index(positions.size()) == x.rows(), "rope_positions: one position per row");
    rotate_heads(x, cos, sin, head_dim, 1.0, [positions](Index r) { return Index(positions[std::size_t(r)]); });
  }

  /// The CPU keeps the attention weights: (batch*heads*seq) x seq, zero above the diagonal. Plain
  /// and fast with BLAS-3 products at the sequence lengths a CPU trains on; the CUDA kernels keep
  /// one logsumexp per row instead (kernels_rows.hpp, FusedAttention).
  static MatrixShape attention_saved_shape(const AttentionShape& s) { return {s.batch * s.heads * s.seq, s.seq}; }

  /// out = softmax(Q K^T / sqrt(d) + causal mask) V for every (sequence, head); query head h reads
  /// key/value head h / group (transformers' repeat_kv). probs (attention_saved_shape) keeps the
  /// attention weights for backward.
  static void attention_forward(const_view q, const_view k, const_view v, const AttentionShape& s, view out,
                                view probs) {
    const T scale = T(1 / std::sqrt(double(s.head_dim)));
    for (Index b = 0; b < s.batch; ++b)
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        auto qh = BE::cblock(q, b * s.seq, h * s.head_dim, s.seq, s.head_dim);
        auto kh = BE::cblock(k, b * s.seq, g * s.head_dim, s.seq, s.head_dim);
        auto vh = BE::cblock(v, b * s.seq, g * s.head_dim, s.seq, s.head_dim);
        auto p = BE::block(probs, (b * s.heads + h) * s.seq, 0, s.seq, s.seq);
        BE::gemm(scale, qh, milora::Trans::no, kh, milora::Trans::yes, 0, p);
        for (Index i = 0; i < s.seq; ++i)
          softmax_causal_row(&p(i, 0), s.segment_start ? s.segment_start[b * s.seq + i] : 0, i, s.seq);
        BE::gemm(1, p, milora::Trans::no, vh, milora::Trans::no, 0,
                 BE::block(out, b * s.seq, h * s.head_dim, s.seq, s.head_dim));
      }
  }

  /// Given dout, writes dq and (summed over the query heads that share them) dk, dv:
  ///   dP = dO V^T,  dS = P * (dP - rowsum(P * dP)),  dQ = dS K / sqrt(d),  dK = dS^T Q / sqrt(d),
  ///   dV = P^T dO.
  /// (out, the forward's output, is not needed here: P is saved.)
  static void attention_backward(const_view dout, const_view q, const_view k, const_view v, const_view /*out*/,
                                 const_view probs, const AttentionShape& s, view dq, view dk, view dv) {
    const T scale = T(1 / std::sqrt(double(s.head_dim)));
    dk.setZero();
    dv.setZero();
    typename BE::matrix dp(s.seq, s.seq);
    for (Index b = 0; b < s.batch; ++b)
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        const Index r0 = b * s.seq, cq = h * s.head_dim, ckv = g * s.head_dim;
        auto p = BE::cblock(probs, (b * s.heads + h) * s.seq, 0, s.seq, s.seq);
        auto doh = BE::cblock(dout, r0, cq, s.seq, s.head_dim);
        BE::gemm(1, doh, milora::Trans::no, BE::cblock(v, r0, ckv, s.seq, s.head_dim), milora::Trans::yes, 0, dp);
        BE::gemm(1, p, milora::Trans::yes, doh, milora::Trans::no, 1, BE::block(dv, r0, ckv, s.seq, s.head_dim));
        for (Index i = 0; i < s.seq; ++i) {  // dp <- dS, row by row (only j <= i is nonzero)
          double dot = 0;
          for (Index j = 0; j <= i; ++j) dot += double(p(i, j)) * double(dp(i, j));
          for (Index j = 0; j <= i; ++j) dp(i, j) = T(double(p(i, j)) * (double(dp(i, j)) - dot));
          for (Index j = i + 1; j < s.seq; ++j) dp(i, j) = 0;
        }
        BE::gemm(scale, dp, milora::Trans::no, BE::cblock(k, r0, ckv, s.seq, s.head_dim), milora::Trans::no, 0,
                 BE::block(dq, r0, cq, s.seq, s.head_dim));
        BE::gemm(scale, dp, milora::Trans::yes, BE::cblock(q, r0, cq, s.seq, s.head_dim), milora::Trans::no, 1,
                 BE::block(dk, r0, ckv, s.seq, s.head_dim));
      }
  }

  /// out = softmax(Q K^T / sqrt(d) + mask) V for new query rows against the key/value caches
  /// (CachedAttentionShape: query slot t of sequence b sees the keys in slots [start[b], t]); per
  /// (sequence, head) two products with the cache rows from min(start, past) (a prefill's padding
  /// rows are computed; older ones are never read) to the last new slot.
  static void attention_cached(const_view q, const_view k_cache, const_view v_cache, const CachedAttentionShape& s,
                               std::span<const std::int32_t> start, view out) {
    require(Index(start.size()) == s.batch && q.rows() == s.batch * s.seq && out.rows() == q.rows() &&
                k_cache.rows() == s.batch * s.capacity && s.past + s.seq <= s.capacity,
            "attention_cached: shapes");
    const T scale = T(1 / std::sqrt(double(s.head_dim)));
    typename BE::matrix p;
    for (Index b = 0; b < s.batch; ++b) {
      const Index st = start[std::size_t(b)], lo = std::min(st, s.past), keys = s.past + s.seq - lo;
      p.resize(s.seq, keys);
      for (Index h = 0; h < s.heads; ++h) {
        const Index g = h / s.group();
        auto kh = BE::cblock(k_cache, b * s.capacity + lo, g * s.head_dim, keys, s.head_dim);
        auto vh = BE::cblock(v_cache, b * s.capacity + lo, g * s.head_dim, keys, s.head_dim);
        BE::gemm(scale, BE::cblock(q, b * s.seq, h * s.head_dim, s.seq, s.head_dim), milora::Trans::no, kh, milora::Trans::yes,
                 0, p);
        for (Index i = 0; i < s.seq; ++i) {
          const Index slot = s.past + i;
          softmax_causal_row(&p(i, 0), std::min(st, slot) - lo, slot - lo, keys);
        }
        BE::gemm(1, p, milora::Trans::no, vh, milora::Trans::no, 0, BE::block(out, b * s.seq, h * s.head_dim, s.seq, s.head_dim));
      }
    }
  }

  /// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
  static void swiglu_forward(const_view gate, const_view up, view out) {
    out = gate.binaryExpr(up, [](T g, T u) { return silu(g) * u; });
  }

  /// dgate = dout * up * silu'(g), silu'(g) = sigma(g) (1 + g (1 - sigma(g))); dup = dout * silu(g).
  static void swiglu_backward(const_view dout, const_view gate, const_view up, view dgate, view dup) {
    for (Index i = 0; i < gate.rows(); ++i)
      for (Index j = 0; j < gate.cols(); ++j) {
        const T g = gate(i, j), sg = T(1) / (T(1) + std::exp(-g));
        dup(i, j) = dout(i, j) * g * sg;
        dgate(i, j) = dout(i, j) * up(i, j) * sg * (T(1) + g * (T(1) - sg));
      }
  }

  /// Mean over rows with target != kIgnoreIndex of logsumexp(logits_i) - logits_i[target_i]
  /// (0 when every target is ignored). Unless dlogits is empty (0 x 0), writes
  /// dlogits = grad_scale * (softmax(logits) - onehot(target)) / count, zero on ignored rows.
  static double cross_entropy(const_view logits, std::span<const Token> targets, double grad_scale,
                              view dlogits) {
    const Index n = logits.rows(), vocab = logits.cols();
    require(Index(targets.size()) == n, "cross_entropy: one target per row");
    const bool grad = dlogits.size() != 0;
    if (grad) require(dlogits.rows() == n && dlogits.cols() == vocab, "cross_entropy: dlogits shape");
    const Index count = count_targets(targets, vocab);
    double total = 0;
    for (Index i = 0; i < n; ++i) {
      const Token t = targets[std::size_t(i)];
      if (t == kIgnoreIndex) {
        if (grad) dlogits.row(i).setZero();
        continue;
      }
      // exp once per logit, in the scalar type with Eigen's vectorised exp (a 32000-token
      // vocabulary makes this the kernel's whole cost), the sum in double
      const auto z = logits.row(i).array();
      const T mx = z.maxCoeff();
      double sum = 0;
      if (grad) {
        auto d = dlogits.row(i).array();
        d = (z - mx).exp();
        sum = d.template cast<double>().sum();
        const double k = grad_scale / double(count);
        d *= T(k / sum);
        d(t) -= T(k);
      } else {
        sum = (z - mx).exp().template cast<double>().sum();
      }
      total += double(mx) + std::log(sum) - double(z(t));
    }
    return count == 0 ? 0.0 : total / double(count);
  }

 private:
  // rope's rotation of every head of every row r, at the table row position(r).
  template <class Position>
  static void rotate_heads(view x, const_view cos, const_view sin, Index head_dim, double sign, Position position) {
    const Index half = head_dim / 2, heads = x.cols() / head_dim;
    for (Index r = 0; r < x.rows(); ++r) {
      const Index t = position(r);
      for (Index h = 0; h < heads; ++h) {
        T* p = &x(r, h * head_dim);
        for (Index i = 0; i < half; ++i) {
          const T c = cos(t, i), s = T(sign) * sin(t, i);
          const T a = p[i], b = p[i + half];
          p[i] = a * c - b * s;
          p[i + half] = b * c + a * s;
        }
      }
    }
  }

  static T silu(T g) { return g / (T(1) + std::exp(-g)); }

  // Softmax of p[0..i] in place (positions j <= i are visible to query i), zero after.
  // Row i of the attention weights: softmax over the keys [start, i], zero elsewhere (before its
  // example's start in a packed row, and after i). The backward needs no mask of its own: where
  // P is zero, dS = P (dP - rowsum) is zero too.
  static void softmax_causal_row(T* p, Index start, Index i, Index seq) {
    Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> row(p + start, i + 1 - start);
    row = (row - row.maxCoeff()).exp();  // Eigen's vectorised exp
    row *= T(1 / row.template cast<double>().sum());
    std::fill(p, p + start, T(0));
    std::fill(p + i + 1, p + seq, T(0));
  }

  static void require(bool ok, const char* what) {
    if (!ok) throw milora::shape_error(milora::detail::concat("LlamaKernels<EigenBackend>::", what, " mismatch"));
  }
};

}  // namespace llama
