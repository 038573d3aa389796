// Init policies: the contract W' + s*B*A = W, output unchanged, and which subspace each adapter takes.
#include "test_util.hpp"

using namespace test;

namespace {

// Shapes in both orientations, and square.
constexpr std::pair<Index, Index> kInitShapes[] = {{24, 16}, {16, 24}, {20, 20}};

template <class Adapter, class B>
void check_contract(Index out, Index in, bool rslora) {
  CAPTURE(out);
  CAPTURE(in);
  CAPTURE(rslora);
  const HostMatrix w0 = random_normal(out, in, 21), bias = random_normal(1, out, 22);
  milora::Linear<B> layer(device<B>(w0), device<B>(bias));
  Adapter adapter(layer, {.rank = 4, .alpha = 6, .use_rslora = rslora});
  CHECK(adapter.residual());
  CHECK(adapter.scale() == doctest::Approx(rslora ? 6 / 2.0 : 6 / 4.0));

  const HostMatrix a = host<B>(adapter.A()), b = host<B>(adapter.B()), wres = host<B>(layer.weight());
  CHECK(rel_err(wres + adapter.scale() * b * a, w0) <= contract_tol<B>);
  CHECK(rel_err(wres, w0) > 1e-3);  // the base really changed: the contract is not vacuous

  const HostMatrix x = random_normal(5, in, 23);
  const HostMatrix y_ref = (x * w0.transpose()).rowwise() + bias.row(0);
  CHECK(rel_err(host<B>(adapter.forward(device<B>(x))), y_ref) <= 10 * contract_tol<B>);
}

}  // namespace

TEST_CASE_TEMPLATE("init contract: PiSSA and MiLoRA keep W' + s*B*A = W and the output", B, MILORA_TEST_BACKENDS) {
  for (auto [out, in] : kInitShapes)
    for (bool rslora : {false, true}) {
      check_contract<milora::PiSSA<B>, B>(out, in, rslora);
      check_contract<milora::MiLoRA<B>, B>(out, in, rslora);
    }
}

TEST_CASE_TEMPLATE("init subspace: MiLoRA takes the minor triplets, PiSSA the principal ones", B, MILORA_TEST_BACKENDS) {
  const Index r = 4;
  for (auto [out, in] : kInitShapes) {
    CAPTURE(out);
    CAPTURE(in);
    const Index k = std::min(out, in);
    const HostMatrix w0 = with_spectrum(out, in, gapped_spectrum(k, r), 31);
    const ReferenceSVD ref(w0);
    const Eigen::MatrixXd v_top = ref.V.leftCols(r), v_minor = ref.V.rightCols(r);
    const Eigen::MatrixXd u_top = ref.U.leftCols(r), u_minor = ref.U.rightCols(r);

    milora::Linear<B> l_mi(device<B>(w0)), l_pi(device<B>(w0));
    milora::MiLoRA<B> mi(l_mi, {.rank = r, .alpha = 16});
    milora::PiSSA<B> pi(l_pi, {.rank = r, .alpha = 16});

    const HostMatrix a_mi = host<B>(mi.A()), b_mi = host<B>(mi.B());
    const HostMatrix a_pi = host<B>(pi.A()), b_pi = host<B>(pi.B());
    // Rows of A span the right singular subspace, columns of B the left one.
    CHECK(overlap_rows(a_mi, v_minor) >= 0.9999);
    CHECK(overlap_rows(b_mi.transpose(), u_minor) >= 0.9999);
    CHECK(overlap_rows(a_mi, v_top) <= 1e-4);
    CHECK(overlap_rows(a_pi, v_top) >= 0.9999);
    CHECK(overlap_rows(b_pi.transpose(), u_top) >= 0.9999);
    CHECK(overlap_rows(a_pi, v_minor) <= 1e-4);

    // The singular values of s*B*A are the selected sigma.
    const ReferenceSVD d_mi(HostMatrix(mi.scale() * b_mi * a_mi)), d_pi(HostMatrix(pi.scale() * b_pi * a_pi));
    for (Index i = 0; i < r; ++i) {
      CHECK(d_mi.S(i) == doctest::Approx(ref.S(k - r + i)).epsilon(100 * contract_tol<B>));
      CHECK(d_pi.S(i) == doctest::Approx(ref.S(i)).epsilon(100 * contract_tol<B>));
    }
    // A = diag(sqrt(sigma/s)) Vt: the rows of A are orthogonal with squared norms sigma/s.
    const HostMatrix gram = a_mi * a_mi.transpose();
    for (Index i = 0; i < r; ++i)
      CHECK(gram(i, i) == doctest::Approx(ref.S(k - r + i) / mi.scale()).epsilon(100 * contract_tol<B>));
    CHECK((gram - HostMatrix(gram.diagonal().asDiagonal())).norm() < 100 * contract_tol<B>);
  }
}

// Singular vectors have a sign ambiguity; factors_from_triplets resolves it so that every backend and
// solver gives the same A and B. Without the flip, about half the rows would fail this.
TEST_CASE_TEMPLATE("init sign convention: each row of A has its largest-magnitude entry positive", B, MILORA_TEST_BACKENDS) {
  const Index r = 6;
  const HostMatrix w0 = with_spectrum(20, 14, gapped_spectrum(14, r), 41);
  milora::Linear<B> l_mi(device<B>(w0)), l_pi(device<B>(w0));
  milora::MiLoRA<B> mi(l_mi, {.rank = r, .alpha = double(r)});
  milora::PiSSA<B> pi(l_pi, {.rank = r, .alpha = double(r)});
  for (const HostMatrix& a : {host<B>(mi.A()), host<B>(pi.A())})
    for (Index i = 0; i < r; ++i) {
      Index arg = 0;
      a.row(i).cwiseAbs().maxCoeff(&arg);
      CAPTURE(i);
      CHECK(a(i, arg) > 0);
    }
  // and the product is untouched by the flips
  CHECK(rel_err(host<B>(l_mi.weight()) + mi.scale() * host<B>(mi.B()) * host<B>(mi.A()), w0) <= contract_tol<B>);
}

TEST_CASE_TEMPLATE("init: LoRA (kaiming-uniform) and Gaussian leave the base alone and B = 0", B, MILORA_TEST_BACKENDS) {
  const Index out = 48, in = 400, r = 8;
  const HostMatrix w0 = random_normal(out, in, 41);
  milora::Linear<B> l1(device<B>(w0)), l2(device<B>(w0));
  milora::LoRA<B> lora(l1, {.rank = r, .alpha = 16, .seed = 5});
  milora::Adapter<B, milora::Gaussian> gauss(l2, {.rank = r, .alpha = 16, .seed = 5});

  CHECK(host<B>(l1.weight()) == host<B>(device<B>(w0)));  // bit-identical, not just close
  CHECK(host<B>(l2.weight()) == host<B>(device<B>(w0)));
  CHECK(host<B>(lora.B()).norm() == 0.0);
  CHECK(host<B>(gauss.B()).norm() == 0.0);
  CHECK_FALSE(lora.residual());
  CHECK_FALSE(gauss.residual());

  // PEFT's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)), variance bound^2 / 3.
  const HostMatrix a = host<B>(lora.A());
  const double bound = 1 / std::sqrt(double(in));
  CHECK(a.cwiseAbs().maxCoeff() <= bound);
  CHECK(a.cwiseAbs().maxCoeff() > 0.95 * bound);
  const double var = a.array().square().mean();
  CHECK(var == doctest::Approx(bound * bound / 3).epsilon(0.05));  // 3200 samples: ~2.5% sd

  // PEFT's "gaussian": std = 1/r.
  const HostMatrix g = host<B>(gauss.A());
  CHECK(std::sqrt(g.array().square().mean()) == doctest::Approx(1.0 / r).epsilon(0.05));

  // Same seed, same adapter; another seed, another adapter.
  milora::Linear<B> l3(device<B>(w0)), l4(device<B>(w0));
  milora::LoRA<B> same(l3, {.rank = r, .alpha = 16, .seed = 5});
  milora::LoRA<B> other(l4, {.rank = r, .alpha = 16, .seed = 6});
  CHECK(host<B>(same.A()) == a);
  CHECK(host<B>(other.A()) != a);

  // With B = 0 the output is exactly the base layer's.
  const HostMatrix x = random_normal(3, in, 42);
  CHECK(rel_err(host<B>(lora.forward(device<B>(x))), x * w0.transpose()) <= 10 * contract_tol<B>);
}

TEST_CASE_TEMPLATE("adapter: trainable parameters and their count", B, MILORA_TEST_BACKENDS) {
  milora::Linear<B> layer(device<B>(random_normal(12, 10, 51)));
  milora::MiLoRA<B> adapter(layer, {.rank = 3, .alpha = 3});
  CHECK(adapter.num_trainable() == 3 * (12 + 10));
  CHECK(adapter.rank() == 3);
  CHECK(adapter.in_features() == 10);
  CHECK(adapter.out_features() == 12);
  auto params = adapter.parameters();
  CHECK(params[0].name == "lora_A");
  CHECK(params[1].name == "lora_B");
  CHECK(B::rows(params[0].value) == 3);
  CHECK(B::cols(params[1].value) == 3);
  // The views alias the adapter's own storage.
  B::scale(params[0].value, 0);
  CHECK(host<B>(adapter.A()).norm() == 0.0);
}

TEST_CASE_TEMPLATE("adapter: wraps a weight owned elsewhere in place (no copy of W)", B, MILORA_TEST_BACKENDS) {
  auto owned = device<B>(random_normal(10, 8, 61));
  const HostMatrix w0 = host<B>(owned);
  milora::WeightRef<B> ref(owned);
  milora::MiLoRA<B> adapter(ref, {.rank = 2, .alpha = 2});
  // The residual was written into `owned` itself.
  CHECK(rel_err(host<B>(owned) + adapter.scale() * host<B>(adapter.B()) * host<B>(adapter.A()), w0) <= contract_tol<B>);
  CHECK(rel_err(host<B>(owned), w0) > 1e-6);
}
