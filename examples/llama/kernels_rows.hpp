// The LLaMA kernels' math, one row (or one element) at a time, for host and device.
//
// The CUDA kernels (kernels_cuda.cuh) run these functions, one GPU thread per row or element;
// compiled by the host compiler they are the same code, which is how CI, which has no GPU,
// checks the math the GPU runs: tests/llama/test_kernels.cpp compares them with the CPU kernels
// (kernels_cpu.hpp, written separately with Eigen) on random rows. Only the launch geometry and
// the upload of tokens are left to the GPU parity test (tests/cuda/test_llama_parity.cpp).
//
// Reductions and exponentials run in double, as in the CPU kernels. Pointers address contiguous
// rows; a 1 x n vector (a norm weight, 1/rms) is a plain array.
//
// The attention (FusedAttention, at the end) is the exception to "one row of one matrix": it is a
// fused causal attention that never forms the seq x seq probabilities (docs/llama.md, "Fused
// attention"), one query row (or, backward, one key row) per call. CachedAttention is its
// counterpart for generation: new query rows against a key/value cache, forward only.
#pragma once

#include <cmath>
#include <cstdint>

#include "milora/core/backend.hpp"
#include "milora/core/host_device.hpp"

namespace llama::rows {

using milora::Index;

/// Who walks a row: the row reductions below split a row's elements between `lanes` workers, worker
/// `lane` taking j = lane, lane + lanes, ..., and combine the partial sums and maxima with sum() /
/// max(). On the host one worker walks the whole row (this struct); on a GPU a warp's 32 lanes share
/// it and combine with shuffles (kernels_cuda.cuh). Either way the formulas are these functions, so
/// CI, without a GPU, checks the math the GPU's warps run.
struct OneLane {
  Index lane = 0;
  static constexpr Index lanes = 1;
  MILORA_HOST_DEVICE double sum(double v) const { return v; }
  template <class T>
  MILORA_HOST_DEVICE T max(T v) const { return v; }
  MILORA_HOST_DEVICE void sync() const {}
};

/// y = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps); returns rstd (to every lane).
template <class T, class Lanes = OneLane>
MILORA_HOST_DEVICE T rmsnorm_forward(const T* x, const T* w, Index c, double eps, T* y, const Lanes& l = {}) {
  double ss = 0;
  for (Index j = l.lane; j < c; j += l.lanes) ss += double(x[j]) * double(x[j]);
  const T r = T(1 / sqrt(l.sum(ss) / double(c) + eps));
  for (Index j = l.lane; j < c; j += l.lanes) y[j] = w[j] * (x[j] * r);  // transformers' two roundings, in its order
  return r;
}

/// dx += r * (w*dy) - r^3 / c * x * sum(w*dy*x).
template <class T, class Lanes = OneLane>
MILORA_HOST_DEVICE void rmsnorm_backward(const T* dy, const T* x, const T* w, double r, Index c, T* dx, const Lanes& l = {}) {
  double dot = 0;
  for (Index j = l.lane; j < c; j += l.lanes) dot += double(w[j]) * double(dy[j]) * double(x[j]);
  const double k = r * r * r * l.sum(dot) / double(c);
  for (Index j = l.lane; j < c; j += l.lanes) dx[j] += T(r * double(w[j]) * double(dy[j]) - k * double(x[j]));
}

/// Pair i of one head in place, rotate-half layout: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin
/// with x1 = p[i], x2 = p[i + half] (sign = -1: the inverse rotation, which is the backward pass).
template <class T>
MILORA_HOST_DEVICE void rope_pair(T* p, T cos, T sin, Index i, Index half, double sign) {
  const T s = T(sign) * sin;
  const T a = p[i], b = p[i + half];
  p[i] = a * cos - b * s;
  p[i + half] = b * cos + a * s;
}

/// One head in place (every pair). cos, sin: the position's row.
template <class T>
MILORA_HOST_DEVICE void rope_head(T* p, const T* cos, const T* sin, Index half, double sign) {
  for (Index i = 0; i < half; ++i) rope_pair(p, cos[i], sin[i], i, half, sign);
}

template <class T>
MILORA_HOST_DEVICE T sigmoid(T g) {
  return T(1 / (1 + exp(-double(g))));
}

/// silu(g) * u, silu(g) = g * sigmoid(g).
template <class T>
MILORA_HOST_DEVICE T swiglu_forward(T g, T u) {
  return g * sigmoid(g) * u;
}

/// dgate = dout * u * sigma(g) (1 + g (1 - sigma(g))), dup = dout * silu(g).
template <class T>
MILORA_HOST_DEVICE void swiglu_backward(T dout, T g, T u, T* dgate, T* dup) {
  const T sg = sigmoid(g);
  *dup = dout * g * sg;
  *dgate = dout * u * sg * (T(1) + g * (T(1) - sg));
}

/// logsumexp(z) - z[t] for one row of logits (to every lane); unless d is null,
/// d = k * softmax(z) - k * onehot(t).
template <class T, class Lanes = OneLane>
MILORA_HOST_DEVICE double cross_entropy(const T* z, Index vocab, std::int32_t t, double k, T* d, const Lanes& l = {}) {
  T mx = z[0];
  for (Index j = l.lane; j < vocab; j += l.lanes) mx = z[j] > mx ? z[j] : mx;
  mx = l.max(mx);
  double sum = 0;
  for (Index j = l.lane; j < vocab; j += l.lanes) sum += exp(double(z[j] - mx));
  sum = l.sum(sum);
  if (d != nullptr) {
    const double scale = k / sum;
    for (Index j = l.lane; j < vocab; j += l.lanes) d[j] = T(exp(double(z[j] - mx)) * scale);
    l.sync();  // the lane that wrote d[t] is done
    if (l.lane == 0) d[t] -= T(k);
  }
  return double(mx) + log(sum) - double(z[t]);
}

/// Rows of a row-major matrix: row i starts at data + i * ld (a view's data() and ld()).
template <class P>
struct RowPtr {
  P* data;
  Index ld;
  MILORA_HOST_DEVICE P* row(Index i) const { return data + i * ld; }
};

template <class T>
MILORA_HOST_DEVICE double dot(const T* a, const T* b, Index n) {
  double s = 0;
  for (Index d = 0; d < n; ++d) s += double(a[d]) * double(b[d]);
  return s;
}

/// The running maximum and sum of an online softmax, started with the first score (weight 1).
/// add(s) returns the factor by which to rescale what was accumulated (exp(m_old - m_new) when s is
/// a new maximum, else 1) and the weight of the new term against the running maximum.
struct OnlineSoftmax {
  double max, sum = 1;
  struct Added {
    double rescale, weight;
  };
  MILORA_HOST_DEVICE Added add(double s) {
    if (s > max) {
      const double c = exp(max - s);
      sum = sum * c + 1;
      max = s;
      return {c, 1};
    }
    const double w = exp(s - max);
    sum += w;
    return {1, w};
  }
  MILORA_HOST_DEVICE double logsumexp() const { return max + log(sum); }
};

/// Causal grouped-query attention without the seq x seq matrix. q is (batch*seq) x (heads*head_dim),
/// k and v (batch*seq) x (kv_heads*head_dim); query head h reads key/value head h / group.
/// Per query row the forward keeps only the row's logsumexp L (online softmax: a running maximum m
/// and sum l, the output rescaled by exp(m_old - m_new) when the maximum grows); the backward
/// recomputes every P_ij = exp(s_ij - L_i) from q, k and L:
///   D_i = dO_i . O_i  (= sum_j P_ij dP_ij),  dS_ij = P_ij (dO_i . v_j - D_i),
///   dq_i = scale sum_{j<=i} dS_ij k_j,   dk_j = scale sum_{h in group, i>=j} dS_ij q_i,
///   dv_j = sum_{h in group, i>=j} P_ij dO_i.
/// dq is one pass over query rows and dk, dv one over key rows, so every output row has a single
/// writer (no atomics, the same sums in the same order on every run).
/// Per-query-row arrays (L, D) are indexed r = (b * heads + h) * seq + i, r < batch*heads*seq (the
/// "query rows"); key rows are r = (b * kv_heads + g) * seq + j, r < batch*kv_heads*seq.
template <class T>
struct FusedAttention {
  Index seq, heads, kv_heads, head_dim;
  double scale;  // 1 / sqrt(head_dim)
  RowPtr<const T> q, k, v;

  struct Position {
    Index b, h, i;  // sequence, head (query or key/value, by the call), position
  };
  MILORA_HOST_DEVICE Index group() const { return heads / kv_heads; }
  MILORA_HOST_DEVICE Position query_row(Index r) const { return {r / (heads * seq), (r / seq) % heads, r % seq}; }
  MILORA_HOST_DEVICE Position key_row(Index r) const { return {r / (kv_heads * seq), (r / seq) % kv_heads, r % seq}; }
  MILORA_HOST_DEVICE double score(const T* qi, const T* kj) const { return scale * dot(qi, kj, head_dim); }

  /// out's query row r = softmax over j <= i of the scores, times v; returns L_r = logsumexp.
  MILORA_HOST_DEVICE T forward(Index r, RowPtr<T> out) const {
    const Position p = query_row(r);
    const Index base = p.b * seq, kc = p.h / group() * head_dim, qc = p.h * head_dim;
    const T* qi = q.row(base + p.i) + qc;
    T* o = out.row(base + p.i) + qc;
    OnlineSoftmax softmax{score(qi, k.row(base) + kc)};
    for (Index d = 0; d < head_dim; ++d) o[d] = v.row(base)[kc + d];
    for (Index j = 1; j <= p.i; ++j) {
      const auto add = softmax.add(score(qi, k.row(base + j) + kc));
      if (add.rescale != 1)
        for (Index d = 0; d < head_dim; ++d) o[d] = T(double(o[d]) * add.rescale);
      const T* vj = v.row(base + j) + kc;
      for (Index d = 0; d < head_dim; ++d) o[d] += T(add.weight) * vj[d];
    }
    for (Index d = 0; d < head_dim; ++d) o[d] = T(double(o[d]) / softmax.sum);
    return T(softmax.logsumexp());
  }

  /// D_r = dO_r . O_r for query row r.
  MILORA_HOST_DEVICE T delta(Index r, RowPtr<const T> dout, RowPtr<const T> out) const {
    const Position p = query_row(r);
    const Index row = p.b * seq + p.i, qc = p.h * head_dim;
    return T(dot(dout.row(row) + qc, out.row(row) + qc, head_dim));
  }

  /// dq's query row r (overwritten), from L and D of the forward and delta().
  MILORA_HOST_DEVICE void dq(Index r, RowPtr<const T> dout, const T* lse, const T* deltas, RowPtr<T> dq_rows) const {
    const Position p = query_row(r);
    const Index base = p.b * seq, kc = p.h / group() * head_dim, qc = p.h * head_dim;
    const T* qi = q.row(base + p.i) + qc;
    const T* doi = dout.row(base + p.i) + qc;
    T* g = dq_rows.row(base + p.i) + qc;
    for (Index d = 0; d < head_dim; ++d) g[d] = T(0);
    for (Index j = 0; j <= p.i; ++j) {
      const T* kj = k.row(base + j) + kc;
      const double pij = exp(score(qi, kj) - double(lse[r]));
      const double ds = pij * (dot(doi, v.row(base + j) + kc, head_dim) - double(deltas[r]));
      for (Index d = 0; d < head_dim; ++d) g[d] += T(scale * ds) * kj[d];
    }
  }

  /// dk's and dv's key row r (overwritten), summed over the query heads of its group and the
  /// positions i >= j that see it.
  MILORA_HOST_DEVICE void dkv(Index r, RowPtr<const T> dout, const T* lse, const T* deltas, RowPtr<T> dk,
                              RowPtr<T> dv) const {
    const Position p = key_row(r);
    const Index base = p.b * seq, kc = p.h * head_dim;
    const T* kj = k.row(base + p.i) + kc;
    const T* vj = v.row(base + p.i) + kc;
    T* gk = dk.row(base + p.i) + kc;
    T* gv = dv.row(base + p.i) + kc;
    for (Index d = 0; d < head_dim; ++d) gk[d] = gv[d] = T(0);
    for (Index h = p.h * group(); h < (p.h + 1) * group(); ++h)
      for (Index i = p.i; i < seq; ++i) {
        const Index qr = (p.b * heads + h) * seq + i;
        const T* qi = q.row(base + i) + h * head_dim;
        const T* doi = dout.row(base + i) + h * head_dim;
        const double pij = exp(score(qi, kj) - double(lse[qr]));
        const double ds = pij * (dot(doi, vj, head_dim) - double(deltas[qr]));
        for (Index d = 0; d < head_dim; ++d) {
          gv[d] += T(pij) * doi[d];
          gk[d] += T(scale * ds) * qi[d];
        }
      }
  }
};

/// Attention of new query rows against a key/value cache (CachedAttentionShape in kernels.hpp): q
/// and out are (batch*seq) x (heads*head_dim); k and v the caches, (batch*capacity) x
/// (kv_heads*head_dim). The online softmax of FusedAttention::forward over the visible keys
/// [lo, slot] of one query row, with the head's dimensions shared between the lanes: lane d of
/// `lanes` takes dimensions d, d + lanes, ..., the scores' dot products are combined with sum()
/// (every lane then holds the same score, maximum and sum), and each lane rescales and writes only
/// its own dimensions of the output. No lane reads what another writes.
template <class T>
struct CachedAttention {
  Index seq, heads, kv_heads, head_dim, capacity, past;
  double scale;  // 1 / sqrt(head_dim)
  RowPtr<const T> q, k, v;

  /// The query rows r = (b * heads + h) * seq + i, r < batch*heads*seq.
  MILORA_HOST_DEVICE Index sequence_of(Index r) const { return r / (heads * seq); }

  /// out's row for query row r; `start` is its sequence's first slot.
  template <class Lanes = OneLane>
  MILORA_HOST_DEVICE void forward(Index r, Index start, RowPtr<T> out, const Lanes& l = {}) const {
    const Index b = sequence_of(r), h = (r / seq) % heads, i = r % seq;
    const Index slot = past + i, lo = start <= slot ? start : slot;
    const Index kc = h / (heads / kv_heads) * head_dim, base = b * capacity;
    const T* qi = q.row(b * seq + i) + h * head_dim;
    T* o = out.row(b * seq + i) + h * head_dim;
    auto score = [&](Index j) {
      const T* kj = k.row(base + j) + kc;
      double s = 0;
      for (Index d = l.lane; d < head_dim; d += l.lanes) s += double(qi[d]) * double(kj[d]);
      return scale * l.sum(s);
    };
    OnlineSoftmax softmax{score(lo)};
    for (Index d = l.lane; d < head_dim; d += l.lanes) o[d] = v.row(base + lo)[kc + d];
    for (Index j = lo + 1; j <= slot; ++j) {
      const auto add = softmax.add(score(j));
      if (add.rescale != 1)
        for (Index d = l.lane; d < head_dim; d += l.lanes) o[d] = T(double(o[d]) * add.rescale);
      const T* vj = v.row(base + j) + kc;
      for (Index d = l.lane; d < head_dim; d += l.lanes) o[d] += T(add.weight) * vj[d];
    }
    for (Index d = l.lane; d < head_dim; d += l.lanes) o[d] = T(double(o[d]) / softmax.sum);
  }
};

}  // namespace llama::rows
