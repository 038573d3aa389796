// A user's own init policy and spectral solver, written in the user's file against the public
// concepts only, plug into Adapter<B, Init> unchanged.
#include <string_view>

#include "test_util.hpp"

using namespace test;

namespace user {

// Starts the adapter from the r singular triplets in the *middle* of the spectrum.
struct MiddleSVD {
  static constexpr std::string_view name = "middle";

  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig& cfg) const {
    const auto full = B::svd(w);
    const Index k = B::cols(full.S), r = cfg.rank, c0 = (k - r) / 2;
    milora::Triplets<B> t{B::clone(B::cblock(full.U, 0, c0, B::rows(w), r)),
                          B::clone(B::cblock(full.S, 0, c0, 1, r)),
                          B::clone(B::cblock(full.Vt, c0, 0, r, B::cols(w)))};
    return milora::factors_from_triplets<B>(std::move(t), cfg.scale());
  }
};

// A solver that delegates to ExactSVD and counts its calls, to prove the policy really uses it.
struct CountingSolver {
  static constexpr std::string_view name = "counting";
  int* calls = nullptr;
  template <milora::Backend B>
  milora::Triplets<B> bottom(milora::const_view_t<B> w, Index r) const {
    ++*calls;
    return milora::ExactSVD{}.bottom<B>(w, r);
  }
};

// A broken policy: returns A with the wrong shape.
struct WrongShape {
  static constexpr std::string_view name = "wrong";
  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig& cfg) const {
    return {B::zeros(cfg.rank + 1, B::cols(w)), B::zeros(B::rows(w), cfg.rank), true};
  }
};

struct NoName {  // misses `name`: not an InitPolicy
  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B>, const milora::AdapterConfig&) const;
};

}  // namespace user

using EB = milora::EigenBackend<double>;
static_assert(milora::InitPolicy<user::MiddleSVD, EB>);
static_assert(!milora::InitPolicy<user::NoName, EB>, "a policy without a name must be rejected");
static_assert(milora::MinorSolver<user::CountingSolver, EB>);
static_assert(!milora::PrincipalSolver<user::CountingSolver, EB>, "bottom() alone is not a PrincipalSolver");

TEST_CASE_TEMPLATE("a user-defined init policy plugs into Adapter", B, MILORA_TEST_BACKENDS) {
  const Index r = 3, k = 12;
  const HostMatrix w0 = with_spectrum(12, 15, gapped_spectrum(k, 2), 111);
  milora::Linear<B> layer(device<B>(w0));
  milora::Adapter<B, user::MiddleSVD> ad(layer, {.rank = r, .alpha = 3});
  CHECK(milora::Adapter<B, user::MiddleSVD>::init_policy::name == "middle");
  // The contract holds for any residual policy, because the adapter enforces it.
  CHECK(rel_err(host<B>(layer.weight()) + ad.scale() * host<B>(ad.B()) * host<B>(ad.A()), w0) <= contract_tol<B>);
  // And it took the middle triplets: singular values (k - r)/2 .. of W.
  const ReferenceSVD ref(w0), d(HostMatrix(ad.scale() * host<B>(ad.B()) * host<B>(ad.A())));
  for (Index i = 0; i < r; ++i) CHECK(d.S(i) == doctest::Approx(ref.S((k - r) / 2 + i)).epsilon(1e-4));
}

TEST_CASE_TEMPLATE("a user-defined spectral solver plugs into MinorSVD", B, MILORA_TEST_BACKENDS) {
  int calls = 0;
  milora::Linear<B> layer(device<B>(random_normal(9, 7, 112)));
  milora::MiLoRA<B, user::CountingSolver> ad(layer, {.rank = 2, .alpha = 2},
                                             milora::MinorSVD<user::CountingSolver>{{&calls}});
  CHECK(calls == 1);
  CHECK(ad.init().solver.calls == &calls);
}

TEST_CASE_TEMPLATE("a policy returning wrong shapes is caught before the layer changes", B, MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(8, 6, 113);
  milora::Linear<B> layer(device<B>(w0));
  CHECK_THROWS_AS((milora::Adapter<B, user::WrongShape>(layer, {.rank = 2})), milora::shape_error);
  CHECK(host<B>(layer.weight()) == host<B>(device<B>(w0)));
}
