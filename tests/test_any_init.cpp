// AnyInit<B>, the type-erased init policy: an Adapter<B, AnyInit<B>> must start exactly as the
// Adapter<B, Init> of the policy it wraps (the same factors and W', bit for bit: one code path
// behind a virtual call), keep the wrapped policy's retained() copy, and fail as the policy fails.
#include <memory>

#include "milora/init/any.hpp"
#include "test_util.hpp"

using namespace test;

namespace {

// The adapter of policy `init`, and the adapter of AnyInit(init), on two copies of w0: identical
// factors, weight, and flags.
template <class B, class Init>
void check_same_start(const HostMatrix& w0, const Init& init, const milora::AdapterConfig& cfg) {
  CAPTURE(Init::name);
  milora::Linear<B> direct_layer(device<B>(w0)), erased_layer(device<B>(w0));
  milora::Adapter<B, Init> direct(direct_layer, cfg, init);
  milora::Adapter<B, milora::AnyInit<B>> erased(erased_layer, cfg, init);
  CHECK(erased.init().policy_name() == Init::name);
  CHECK(erased.init().template target<Init>() != nullptr);
  CHECK(erased.residual() == direct.residual());
  CHECK(erased.frozen_B() == direct.frozen_B());
  CHECK(erased.num_trainable() == direct.num_trainable());
  CHECK(host<B>(erased.A()) == host<B>(direct.A()));
  CHECK(host<B>(erased.B()) == host<B>(direct.B()));
  CHECK(host<B>(erased_layer.weight()) == host<B>(direct_layer.weight()));
}

}  // namespace

namespace any_init_test {
struct Counting {  // a policy of the caller's own, counting its calls
  static constexpr std::string_view name = "counting";
  int* calls;
  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig& c) const {
    ++*calls;
    return milora::KaimingUniform{}.initialize<B>(w, c);
  }
};
}  // namespace any_init_test

static_assert(milora::InitPolicy<milora::AnyInit<milora::EigenBackend<float>>, milora::EigenBackend<float>>);
static_assert(!std::is_convertible_v<milora::AnyInit<milora::EigenBackend<float>>, milora::AnyInit<milora::EigenBackend<double>>>,
              "an AnyInit is for one backend");

TEST_CASE_TEMPLATE("AnyInit: an adapter through the erased policy starts bit for bit as through the policy itself",
                   B, MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = with_spectrum(14, 11, gapped_spectrum(11, 4), 601);
  const milora::AdapterConfig cfg{.rank = 4, .alpha = 6, .seed = 17};  // even: OrthogonalInit splits r in halves
  check_same_start<B>(w0, milora::KaimingUniform{}, cfg);
  check_same_start<B>(w0, milora::MinorSVD<>{}, cfg);
  check_same_start<B>(w0, milora::PrincipalSVD<>{}, cfg);
  check_same_start<B>(w0, milora::MinorLeftSingular<>{}, cfg);  // B frozen
  check_same_start<B>(w0, milora::LeadingQR{}, cfg);
  check_same_start<B>(w0, milora::OrthogonalInit{}, cfg);
}

TEST_CASE_TEMPLATE("AnyInit: names, target, the LoRA default, and copies that share the policy", B, MILORA_TEST_BACKENDS) {
  const milora::AnyInit<B> lora;  // default: plain LoRA, as Adapter's Init{} default asks
  CHECK(lora.policy_name() == "lora");
  CHECK(milora::AnyInit<B>::name == "any");
  CHECK(lora.template target<milora::KaimingUniform>() != nullptr);
  CHECK(lora.template target<milora::MinorSVD<>>() == nullptr);

  int calls = 0;
  using Counting = any_init_test::Counting;
  const milora::AnyInit<B> counting = Counting{&calls};
  const milora::AnyInit<B> copy = counting;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the point
  CHECK(copy.policy_name() == "counting");
  CHECK(copy.template target<Counting>() == counting.template target<Counting>());  // one policy, shared
  milora::Linear<B> layer(device<B>(random_normal(6, 5, 602)));
  milora::Adapter<B, milora::AnyInit<B>> ad(layer, {.rank = 2, .alpha = 2}, copy);
  CHECK(calls == 1);
  CHECK(ad.init().template target<Counting>()->calls == &calls);
}

TEST_CASE_TEMPLATE("AnyInit: a calibrated policy's statistics are released once the adapter exists, and a failing policy "
                   "fails through it with the layer untouched",
                   B, MILORA_TEST_BACKENDS) {
  using Corda = milora::ContextOrientedSVD<B>;
  auto stats = std::make_shared<milora::InputStatistics<B>>(5);
  stats->observe(device<B>(random_normal(40, 5, 603)));
  const milora::AnyInit<B> with_stats = Corda{stats};
  CHECK(with_stats.policy_name() == "corda-kpm");
  const HostMatrix w0 = random_normal(7, 5, 604);
  milora::Linear<B> layer(device<B>(w0));
  milora::Adapter<B, milora::AnyInit<B>> ad(layer, {.rank = 2, .alpha = 4}, with_stats);
  CHECK(ad.residual());
  REQUIRE(ad.init().template target<Corda>() != nullptr);
  CHECK(ad.init().template target<Corda>()->inputs == nullptr);   // the adapter's copy: retained()
  CHECK(with_stats.template target<Corda>()->inputs == stats);    // the caller's policy still has them
  CHECK(rel_err(host<B>(layer.weight()) + ad.scale() * host<B>(ad.B()) * host<B>(ad.A()), w0) <= 10 * contract_tol<B>);

  // the retained copy cannot initialise (no statistics): CorDA's state_error comes through, W unchanged
  milora::Linear<B> other(device<B>(w0));
  CHECK_THROWS_WITH_AS((milora::Adapter<B, milora::AnyInit<B>>(other, {.rank = 2, .alpha = 4}, ad.init())),
                       doctest::Contains("no calibration statistics"), milora::state_error);
  CHECK(host<B>(other.weight()) == host<B>(device<B>(w0)));
}
