// Each CPU kernel of the reference LLaMA against finite differences in double precision: for a
// kernel y = f(x) and a fixed random R, L(x) = sum(R * f(x)) has gradient backward(R), which central
// differences (h = 1e-6) must match to 1e-7 relative to the largest gradient entry.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "llama/kernels_cpu.hpp"
#include "llama/kernels_rows.hpp"
#include "llama_test_util.hpp"

using BE = milora::EigenBackend<double>;
using K = llama::LlamaKernels<BE>;
using M = BE::matrix;
using llama::Index;
using llama::Token;

namespace {

constexpr double kStep = 1e-6, kTol = 1e-7;

// dL/dx by central differences, every entry.
M numeric_gradient(const std::function<double(const M&)>& loss, const M& x) {
  M g(x.rows(), x.cols());
  for (Index i = 0; i < x.size(); ++i) {
    M xp = x, xm = x;
    xp.data()[i] += kStep;
    xm.data()[i] -= kStep;
    g.data()[i] = (loss(xp) - loss(xm)) / (2 * kStep);
  }
  return g;
}

void check_gradient(const M& analytic, const M& numeric, const char* what) {
  CAPTURE(std::string(what));
  const double scale = std::max(1.0, numeric.cwiseAbs().maxCoeff());
  const double err = (analytic - numeric).cwiseAbs().maxCoeff() / scale;
  CAPTURE(err);
  CHECK(err < kTol);
}

M randn(Index r, Index c, unsigned seed, double std = 1.0) { return llama_test::randn<BE>(r, c, seed, std); }

}  // namespace

TEST_CASE("rmsnorm: forward is w * x / rms, backward matches finite differences (accumulating into dx)") {
  const Index n = 3, c = 7;
  const double eps = 1e-5;
  const M x = randn(n, c, 1), w = randn(1, c, 2), R = randn(n, c, 3);
  M y(n, c), rstd(1, n);
  K::rmsnorm_forward(x, w, eps, y, rstd);
  for (Index i = 0; i < n; ++i) {  // independent formula
    const double rms = std::sqrt(x.row(i).squaredNorm() / c + eps);
    for (Index j = 0; j < c; ++j) CHECK(y(i, j) == doctest::Approx(w(0, j) * x(i, j) / rms).epsilon(1e-14));
  }
  M dx = M::Constant(n, c, 0.25);  // accumulates: start from a nonzero gradient
  K::rmsnorm_backward(R, x, w, rstd, dx);
  auto loss = [&](const M& xx) {
    M yy(n, c), rr(1, n);
    K::rmsnorm_forward(xx, w, eps, yy, rr);
    return (R.array() * yy.array()).sum();
  };
  check_gradient(dx.array() - 0.25, numeric_gradient(loss, x), "rmsnorm dx");
}

TEST_CASE("rope: rotate-half layout, inverse with sign -1, backward = inverse rotation") {
  const Index seq = 4, hd = 6, heads = 2, rows = 2 * seq;
  M cos(seq, hd / 2), sin(seq, hd / 2);
  for (Index t = 0; t < seq; ++t)
    for (Index i = 0; i < hd / 2; ++i) {
      const double a = t * std::pow(10000.0, -2.0 * i / hd);
      cos(t, i) = std::cos(a);
      sin(t, i) = std::sin(a);
    }
  const M x = randn(rows, heads * hd, 4), R = randn(rows, heads * hd, 5);
  M y = x;
  K::rope(y, cos, sin, seq, hd, +1);
  // transformers: q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1), cos = cat(c, c)
  for (Index r = 0; r < rows; ++r)
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < hd; ++i) {
        const Index t = r % seq, f = i % (hd / 2), o = h * hd;
        const double rot = i < hd / 2 ? -x(r, o + i + hd / 2) : x(r, o + i - hd / 2);
        CHECK(y(r, o + i) == doctest::Approx(x(r, o + i) * cos(t, f) + rot * sin(t, f)).epsilon(1e-14));
      }
  M back = y;
  K::rope(back, cos, sin, seq, hd, -1);
  CHECK((back - x).cwiseAbs().maxCoeff() < 1e-14);
  M dx = R;
  K::rope(dx, cos, sin, seq, hd, -1);
  auto loss = [&](const M& xx) {
    M yy = xx;
    K::rope(yy, cos, sin, seq, hd, +1);
    return (R.array() * yy.array()).sum();
  };
  check_gradient(dx, numeric_gradient(loss, x), "rope dx");
}

TEST_CASE("attention: causal grouped-query forward against a direct formula, backward against finite differences") {
  const llama::AttentionShape s{2, 4, 4, 2, 3};  // batch 2, seq 4, 4 query heads sharing 2 kv heads
  const Index n = s.batch * s.seq, cq = s.heads * s.head_dim, ckv = s.kv_heads * s.head_dim;
  const M q = randn(n, cq, 6), k = randn(n, ckv, 7), v = randn(n, ckv, 8), R = randn(n, cq, 9);
  const llama::MatrixShape saved = K::attention_saved_shape(s);
  CHECK(saved.rows == s.batch * s.heads * s.seq);
  CHECK(saved.cols == s.seq);
  M out(n, cq), probs(saved.rows, saved.cols);
  K::attention_forward(q, k, v, s, out, probs);
  for (Index b = 0; b < s.batch; ++b)
    for (Index h = 0; h < s.heads; ++h)
      for (Index i = 0; i < s.seq; ++i) {  // softmax over j <= i, written out
        const Index g = h / s.group(), qi = b * s.seq + i;
        std::vector<double> w(std::size_t(i + 1));
        double z = 0;
        for (Index j = 0; j <= i; ++j) {
          double dot = 0;
          for (Index d = 0; d < s.head_dim; ++d) dot += q(qi, h * s.head_dim + d) * k(b * s.seq + j, g * s.head_dim + d);
          z += w[std::size_t(j)] = std::exp(dot / std::sqrt(double(s.head_dim)));
        }
        for (Index d = 0; d < s.head_dim; ++d) {
          double expect = 0;
          for (Index j = 0; j <= i; ++j) expect += w[std::size_t(j)] / z * v(b * s.seq + j, g * s.head_dim + d);
          CHECK(out(qi, h * s.head_dim + d) == doctest::Approx(expect).epsilon(1e-12));
        }
      }
  M dq(n, cq), dk(n, ckv), dv(n, ckv);
  K::attention_backward(R, q, k, v, out, probs, s, dq, dk, dv);
  auto loss_of = [&](int which) {
    return [&, which](const M& x) {
      M o(n, cq), p(s.batch * s.heads * s.seq, s.seq);
      K::attention_forward(which == 0 ? x : q, which == 1 ? x : k, which == 2 ? x : v, s, o, p);
      return (R.array() * o.array()).sum();
    };
  };
  check_gradient(dq, numeric_gradient(loss_of(0), q), "attention dq");
  check_gradient(dk, numeric_gradient(loss_of(1), k), "attention dk");
  check_gradient(dv, numeric_gradient(loss_of(2), v), "attention dv");
}

TEST_CASE("swiglu: silu(gate) * up and its backward") {
  const M gate = randn(3, 5, 10, 2.0), up = randn(3, 5, 11), R = randn(3, 5, 12);
  M out(3, 5), dgate(3, 5), dup(3, 5);
  K::swiglu_forward(gate, up, out);
  for (Index i = 0; i < gate.size(); ++i)
    CHECK(out.data()[i] == doctest::Approx(gate.data()[i] / (1 + std::exp(-gate.data()[i])) * up.data()[i]).epsilon(1e-14));
  K::swiglu_backward(R, gate, up, dgate, dup);
  auto loss_gate = [&](const M& g) { M o(3, 5); K::swiglu_forward(g, up, o); return (R.array() * o.array()).sum(); };
  auto loss_up = [&](const M& u) { M o(3, 5); K::swiglu_forward(gate, u, o); return (R.array() * o.array()).sum(); };
  check_gradient(dgate, numeric_gradient(loss_gate, gate), "swiglu dgate");
  check_gradient(dup, numeric_gradient(loss_up, up), "swiglu dup");
}

TEST_CASE("cross_entropy: mean over non-ignored targets, gradient, bad targets refused") {
  const M logits = randn(4, 6, 13, 3.0);
  const std::vector<Token> targets = {2, llama::kIgnoreIndex, 5, 0};
  M dlogits(4, 6);
  const double loss = K::cross_entropy(logits, targets, 0.5, dlogits);
  double expect = 0;
  for (Index i : {0, 2, 3}) {
    const double lse = std::log(logits.row(i).array().exp().sum());
    expect += lse - logits(i, targets[std::size_t(i)]);
  }
  CHECK(loss == doctest::Approx(expect / 3).epsilon(1e-14));
  CHECK(dlogits.row(1).cwiseAbs().maxCoeff() == 0.0);
  auto loss_fn = [&](const M& z) {
    M none(0, 0);
    return 0.5 * K::cross_entropy(z, targets, 1.0, none);
  };
  check_gradient(dlogits, numeric_gradient(loss_fn, logits), "cross-entropy dlogits");

  M none(0, 0);
  const std::vector<Token> bad = {2, 6, 0, 0};
  CHECK_THROWS_WITH_AS(K::cross_entropy(logits, bad, 1.0, none), "target 6 at row 1 is outside the vocabulary of 6",
                       milora::value_error);
  const std::vector<Token> all_ignored(4, llama::kIgnoreIndex);
  CHECK(K::cross_entropy(logits, all_ignored, 1.0, dlogits) == 0.0);
  CHECK(dlogits.cwiseAbs().maxCoeff() == 0.0);
}

TEST_CASE("embed: rows of the table, a token outside the vocabulary is named") {
  const M table = randn(5, 3, 14);
  M out(3, 3);
  const std::vector<Token> tokens = {4, 0, 4};
  K::embed(table, tokens, out);
  CHECK(out.row(0) == table.row(4));
  CHECK(out.row(1) == table.row(0));
  const std::vector<Token> bad = {1, 5, 0};
  CHECK_THROWS_WITH_AS(K::embed(table, bad, out), "token 5 at position 1 is outside the vocabulary of 5",
                       milora::value_error);
}

// The CUDA kernels (kernels_cuda.cuh) run the row math of kernels_rows.hpp, one thread per row;
// here, on the CPU, that same math is checked against the CPU kernels above (written separately,
// with Eigen), so CI, which has no GPU, tests what the GPU computes. Double throughout, both sides
// reduce in double: agreement to 1e-13 relative.
TEST_CASE("kernels_rows (the CUDA kernels' math) equals the CPU kernels: rmsnorm, rope, swiglu, "
          "cross-entropy, forward and backward") {
  namespace rows = llama::rows;
  constexpr double tol = 1e-13;
  auto same = [](const M& a, const M& b) { return (a - b).cwiseAbs().maxCoeff() <= tol * std::max(1.0, b.cwiseAbs().maxCoeff()); };
  const Index n = 6, c = 10;
  const M x = randn(n, c, 31), w = randn(1, c, 32), dy = randn(n, c, 33);

  // rmsnorm forward / backward (the backward accumulates into dx)
  M y(n, c), rstd(1, n), y2(n, c), rstd2(1, n);
  K::rmsnorm_forward(x, w, 1e-5, y, rstd);
  for (Index i = 0; i < n; ++i) rstd2(0, i) = rows::rmsnorm_forward(&x(i, 0), w.data(), c, 1e-5, &y2(i, 0));
  CHECK(same(y2, y));
  CHECK(same(rstd2, rstd));
  M dx = randn(n, c, 34), dx2 = dx;
  K::rmsnorm_backward(dy, x, w, rstd, dx);
  for (Index i = 0; i < n; ++i) rows::rmsnorm_backward(&dy(i, 0), &x(i, 0), w.data(), rstd(0, i), c, &dx2(i, 0));
  CHECK(same(dx2, dx));

  // rope, both directions, 3 heads of 4 at positions row % seq
  const Index seq = 3, hd = 4, heads = 3;
  const M cosines = randn(seq, hd / 2, 35), sines = randn(seq, hd / 2, 36);
  for (double sign : {1.0, -1.0}) {
    M r1 = randn(n, heads * hd, 37), r2 = r1;
    K::rope(r1, cosines, sines, seq, hd, sign);
    for (Index r = 0; r < n; ++r)
      for (Index h = 0; h < heads; ++h) rows::rope_head(&r2(r, h * hd), &cosines(r % seq, 0), &sines(r % seq, 0), hd / 2, sign);
    CHECK(same(r2, r1));
  }

  // swiglu
  const M gate = randn(n, c, 41, 2.0), up = randn(n, c, 42);
  M o1(n, c), o2(n, c), dg1(n, c), du1(n, c), dg2(n, c), du2(n, c);
  K::swiglu_forward(gate, up, o1);
  K::swiglu_backward(dy, gate, up, dg1, du1);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < c; ++j) {
      o2(i, j) = rows::swiglu_forward(gate(i, j), up(i, j));
      rows::swiglu_backward(dy(i, j), gate(i, j), up(i, j), &dg2(i, j), &du2(i, j));
    }
  CHECK(same(o2, o1));
  CHECK(same(dg2, dg1));
  CHECK(same(du2, du1));

  // cross-entropy with an ignored row: the mean loss and dlogits (k = grad_scale / count)
  const M logits = randn(4, 7, 43, 3.0);
  const std::vector<Token> targets = {3, llama::kIgnoreIndex, 0, 6};
  M d1(4, 7), d2 = M::Zero(4, 7);
  const double loss = K::cross_entropy(logits, targets, 0.5, d1);
  double total = 0;
  for (Index i = 0; i < 4; ++i)
    if (targets[std::size_t(i)] != llama::kIgnoreIndex)
      total += rows::cross_entropy(&logits(i, 0), 7, targets[std::size_t(i)], 0.5 / 3, &d2(i, 0));
  CHECK(std::abs(total / 3 - loss) <= tol * std::abs(loss));
  CHECK(same(d2, d1));
  CHECK(rows::cross_entropy(&logits(0, 0), 7, 3, 1.0, static_cast<double*>(nullptr)) ==
        doctest::Approx(rows::cross_entropy(&logits(0, 0), 7, 3, 1.0, &d2(0, 0))).epsilon(1e-15));
}

// The fused attention of the CUDA kernels (FusedAttention: online softmax forward keeping one
// logsumexp per row, backward recomputing the probabilities) against the CPU attention, which
// forms P with BLAS and is itself checked against finite differences above. The calls below go
// row by row over the same index ranges as the CUDA launches (query rows, then key rows), with the
// matrices' real leading dimensions (blocks of wider matrices, as a strided view would be).
// Tolerances, relative to the largest entry: double 1e-13 (both sides reduce in double; the fused
// output accumulates in the storage type with rescaling, the CPU's P V is one GEMM; measured
// <= 4.1e-16); float 5e-6 (float roundings of sums of up to seq = 40 terms; measured <= 4.6e-7).
template <class T>
void check_fused_attention(const llama::AttentionShape& s, double tol) {
  using FB = milora::EigenBackend<T>;
  using FM = typename FB::matrix;
  using FK = llama::LlamaKernels<FB>;
  namespace rows = llama::rows;
  CAPTURE(s.batch);
  CAPTURE(s.seq);
  CAPTURE(s.heads);
  CAPTURE(s.kv_heads);
  CAPTURE(s.head_dim);
  const Index n = s.batch * s.seq, cq = s.heads * s.head_dim, ckv = s.kv_heads * s.head_dim;
  // Wider storage: the fused math must honour ld; columns beyond cq / ckv hold garbage it must not read.
  const Index pad = 3;
  const FM qw = randn(n, cq + pad, 50).template cast<T>(), kw = randn(n, ckv + pad, 51, 2.0).template cast<T>();
  const FM vw = randn(n, ckv + pad, 52).template cast<T>(), dow = randn(n, cq + pad, 53).template cast<T>();
  const FM q = qw.leftCols(cq), k = kw.leftCols(ckv), v = vw.leftCols(ckv), dout = dow.leftCols(cq);

  FM out(n, cq), probs(s.batch * s.heads * s.seq, s.seq), dq(n, cq), dk(n, ckv), dv(n, ckv);
  FK::attention_forward(q, k, v, s, out, probs);
  FK::attention_backward(dout, q, k, v, out, probs, s, dq, dk, dv);

  const rows::FusedAttention<T> f{s.seq, s.heads, s.kv_heads, s.head_dim, 1 / std::sqrt(double(s.head_dim)),
                                  {qw.data(), qw.cols()}, {kw.data(), kw.cols()}, {vw.data(), vw.cols()}};
  FM out2 = FM::Constant(n, cq + pad, T(7)), dq2 = FM::Constant(n, cq + pad, T(7));  // overwritten, not accumulated
  FM dk2 = FM::Constant(n, ckv + pad, T(7)), dv2 = FM::Constant(n, ckv + pad, T(7));
  FM lse(1, s.batch * s.heads * s.seq), delta(1, s.batch * s.heads * s.seq);
  for (Index r = 0; r < lse.cols(); ++r) lse(0, r) = f.forward(r, {out2.data(), out2.cols()});
  for (Index r = 0; r < lse.cols(); ++r)
    delta(0, r) = f.delta(r, {dow.data(), dow.cols()}, {static_cast<const T*>(out2.data()), out2.cols()});
  for (Index r = 0; r < lse.cols(); ++r) f.dq(r, {dow.data(), dow.cols()}, lse.data(), delta.data(), {dq2.data(), dq2.cols()});
  for (Index r = 0; r < s.batch * s.kv_heads * s.seq; ++r)
    f.dkv(r, {dow.data(), dow.cols()}, lse.data(), delta.data(), {dk2.data(), dk2.cols()}, {dv2.data(), dv2.cols()});

  auto close = [tol](const FM& a, const FM& b, const char* what) {
    CAPTURE(std::string(what));
    const double err = double((a - b).cwiseAbs().maxCoeff()) / std::max(1.0, double(b.cwiseAbs().maxCoeff()));
    CAPTURE(err);
    CHECK(err <= tol);
  };
  close(out2.leftCols(cq), out, "out");
  close(dq2.leftCols(cq), dq, "dq");
  close(dk2.leftCols(ckv), dk, "dk");
  close(dv2.leftCols(ckv), dv, "dv");
  // The padding columns are untouched: the fused kernels write only their heads' columns.
  CHECK((out2.rightCols(pad).array() == T(7)).all());
  CHECK((dq2.rightCols(pad).array() == T(7)).all());
  CHECK((dk2.rightCols(pad).array() == T(7)).all());
  CHECK((dv2.rightCols(pad).array() == T(7)).all());

  // L is the logsumexp of the scaled scores of the row, from the saved probabilities: P_ij = exp(s_ij - L_i).
  for (Index b = 0; b < s.batch; ++b)
    for (Index h = 0; h < s.heads; ++h)
      for (Index i = 0; i < s.seq; ++i) {
        const Index r = (b * s.heads + h) * s.seq + i, g = h / s.group();
        const double sij = double(q.row(b * s.seq + i).segment(h * s.head_dim, s.head_dim).template cast<double>().dot(
                               k.row(b * s.seq).segment(g * s.head_dim, s.head_dim).template cast<double>())) /
                           std::sqrt(double(s.head_dim));
        CHECK(std::exp(sij - double(lse(0, r))) == doctest::Approx(double(probs(r, 0))).epsilon(tol * 10));
      }
}

TEST_CASE("fused attention (the CUDA kernels' math) equals the CPU attention: out, dq, dk, dv, float and double") {
  // grouped-query with two sequences; multi-head without grouping; one head of one position (the
  // first row has no running maximum to rescale); a longer sequence where the maximum moves often
  for (const llama::AttentionShape& s : {llama::AttentionShape{2, 7, 4, 2, 6}, llama::AttentionShape{1, 5, 3, 3, 4},
                                         llama::AttentionShape{1, 1, 1, 1, 2}, llama::AttentionShape{1, 40, 2, 1, 8}}) {
    check_fused_attention<double>(s, 1e-13);
    check_fused_attention<float>(s, 5e-6);
  }
}

namespace {

// The cached attention of two sequences, the second left-padded by `pad` slots, read as a prefill
// of `prefill` slots and then one slot at a time, against the causal attention of each sequence
// alone (attention_forward); the row math the CUDA kernel runs (rows::CachedAttention) against the
// CPU kernel at every step. Cache slots the attention may not read (after the new rows, and padding
// before an earlier call's rows) hold NaN, so reading one shows.
template <class T>
void check_cached_attention(Index heads, Index kv_heads, Index hd, Index len, Index pad, Index prefill, double tol) {
  using FB = milora::EigenBackend<T>;
  using FK = llama::LlamaKernels<FB>;
  using FM = typename FB::matrix;
  const Index cq = heads * hd, ckv = kv_heads * hd, capacity = len + 2;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // sequence 0 has len tokens from slot 0, sequence 1 has len - pad tokens from slot pad
  const FM q = randn(2 * len, cq, 61).template cast<T>(), k = randn(2 * len, ckv, 62).template cast<T>(),
           v = randn(2 * len, ckv, 63).template cast<T>();
  const std::vector<std::int32_t> start = {0, std::int32_t(pad)};
  // alone: each sequence's own causal attention
  std::vector<FM> alone;
  for (Index b = 0; b < 2; ++b) {
    const Index n = len - start[std::size_t(b)], r0 = b * len + start[std::size_t(b)];
    const llama::AttentionShape s{1, n, heads, kv_heads, hd};
    FM out(n, cq), probs(heads * n, n);
    FK::attention_forward(q.middleRows(r0, n), k.middleRows(r0, n), v.middleRows(r0, n), s, out, probs);
    alone.push_back(out);
  }
  FM kc = FM::Constant(2 * capacity, ckv, nan), vc = FM::Constant(2 * capacity, ckv, nan);
  for (Index past = 0; past < len;) {
    const Index n = past == 0 ? prefill : 1;
    FM qn(2 * n, cq);
    for (Index b = 0; b < 2; ++b) {
      qn.middleRows(b * n, n) = q.middleRows(b * len + past, n);
      kc.middleRows(b * capacity + past, n) = k.middleRows(b * len + past, n);
      vc.middleRows(b * capacity + past, n) = v.middleRows(b * len + past, n);
      if (past > 0 && b == 1) {  // padding: never read again
        kc.middleRows(capacity, std::min(pad, past)).setConstant(nan);
        vc.middleRows(capacity, std::min(pad, past)).setConstant(nan);
      }
    }
    const llama::CachedAttentionShape s{2, n, heads, kv_heads, hd, capacity, past};
    FM out = FM::Constant(2 * n, cq, T(7));
    FK::attention_cached(qn, kc, vc, s, start, out);
    const llama::rows::CachedAttention<T> f{n, heads, kv_heads, hd, capacity, past, 1 / std::sqrt(double(hd)),
                                            {qn.data(), qn.cols()}, {kc.data(), kc.cols()}, {vc.data(), vc.cols()}};
    FM out2 = FM::Constant(2 * n, cq, T(7));
    for (Index r = 0; r < 2 * heads * n; ++r) f.forward(r, start[std::size_t(f.sequence_of(r))], {out2.data(), out2.cols()});
    for (Index b = 0; b < 2; ++b)
      for (Index i = 0; i < n; ++i) {
        const Index slot = past + i, st = start[std::size_t(b)];
        if (slot < st) continue;  // a padding row: no real token reads it
        CAPTURE(b);
        CAPTURE(slot);
        const auto want = alone[std::size_t(b)].row(slot - st);
        const double scale = std::max(1.0, double(want.cwiseAbs().maxCoeff()));
        CHECK(double((out.row(b * n + i) - want).cwiseAbs().maxCoeff()) / scale < tol);
        CHECK(double((out2.row(b * n + i) - want).cwiseAbs().maxCoeff()) / scale < tol);
      }
    past += n;
  }
}

}  // namespace

TEST_CASE("cached attention (generation): a prefill, then one query at a time, equals each sequence's causal attention "
          "alone, left-padded or not, on the CPU and in the CUDA kernels' row math") {
  for (Index prefill : {1, 4, 9}) {  // one token, part of the sequence, all of it
    CAPTURE(prefill);
    check_cached_attention<double>(4, 2, 6, 9, 3, prefill, 1e-12);
    check_cached_attention<float>(4, 2, 6, 9, 3, prefill, 2e-6);
    check_cached_attention<double>(3, 3, 4, 9, 0, prefill, 1e-12);
  }
  // rope_positions at each row's own position = rope at row % seq
  const M cosines = randn(5, 2, 64), sines = randn(5, 2, 65);
  M x = randn(6, 8, 66), y = x;
  K::rope(x, cosines, sines, 3, 4, 1.0);
  const std::vector<std::int32_t> positions = {0, 1, 2, 0, 1, 2};
  K::rope_positions(y, cosines, sines, 4, positions);
  CHECK((x - y).cwiseAbs().maxCoeff() == 0);
  const std::vector<std::int32_t> too_few = {0};
  CHECK_THROWS_AS(K::rope_positions(y, cosines, sines, 4, too_few), milora::shape_error);
}
