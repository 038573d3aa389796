// The registry of named init methods (milora/init/registry.hpp): each entry's policies start an
// adapter as the entry says (the residual flag the registry reads from the policy is the one its
// factors carry, the layer's output is unchanged), calibrated entries are exactly the
// CalibratedInit policies, the lookup and the dispatch by name, and the adapter's refusal of a
// policy whose factors contradict its declared `residual`.
#include <memory>
#include <set>
#include <string>
#include <tuple>

#include "milora/init/registry.hpp"
#include "test_util.hpp"

using namespace test;

namespace {

// The layer's output before and after an adapter with the registry's policy `Init` is attached,
// and the factors' residual flag against the policy's declaration.
template <class B, class Init>
void check_registered_start(const std::string& method, bool fast) {
  CAPTURE(method);
  CAPTURE(fast);
  const Index out = 40, in = 32, rank = 4;
  const HostMatrix w0 = random_normal(out, in, 811);
  milora::Linear<B> layer(device<B>(w0));
  Init init{};
  if constexpr (milora::InputCalibratedInit<Init, B>) {
    auto stats = std::make_shared<milora::InputStatistics<B>>(in);
    stats->observe(device<B>(random_normal(64, in, 812)));
    init = Init{}.with_calibration(stats);
  } else if constexpr (milora::GradientCalibratedInit<Init, B>) {
    init = Init{}.with_calibration(std::make_shared<const typename B::matrix>(device<B>(random_normal(out, in, 813))));
  }
  const milora::AdapterConfig cfg{.rank = rank, .alpha = 8, .seed = 5};
  const auto factors = init.template initialize<B>(layer.weight(), cfg);
  CHECK(factors.residual == Init::residual);
  CHECK(milora::init_method<B>(method).changes_base == Init::residual);
  milora::Adapter<B, Init> adapter(layer, cfg, init);
  CHECK(adapter.residual() == Init::residual);
  // W' + s B A = W: the start leaves the layer's output unchanged
  const HostMatrix rebuilt = host<B>(layer.weight()) + adapter.scale() * host<B>(adapter.B()) * host<B>(adapter.A());
  CHECK((rebuilt - w0).norm() <= 100 * contract_tol<B> * w0.norm());
}

template <class B, class Methods = milora::InitMethods<B>, std::size_t... I>
void check_every_method(std::index_sequence<I...>) {
  (check_registered_start<B, typename std::tuple_element_t<I, Methods>::exact>(
       std::string(std::tuple_element_t<I, Methods>::name), false),
   ...);
  (check_registered_start<B, typename std::tuple_element_t<I, Methods>::fast>(
       std::string(std::tuple_element_t<I, Methods>::name), true),
   ...);
}

// Declares residual = true but returns residual = false: the adapter must refuse it.
struct RegistryLyingPolicy {
  static constexpr std::string_view name = "lying";
  static constexpr bool residual = true;
  template <milora::Backend B>
  milora::AdapterFactors<B> initialize(milora::const_view_t<B> w, const milora::AdapterConfig& cfg) const {
    return {B::zeros(cfg.rank, B::cols(w)), B::zeros(B::rows(w), cfg.rank), /*residual=*/false};
  }
};

}  // namespace

TEST_CASE_TEMPLATE("InitMethods: each method's policies start as the registry says (residual flag, output unchanged), exact and fast",
                   B, MILORA_TEST_BACKENDS) {
  check_every_method<B>(std::make_index_sequence<std::tuple_size_v<milora::InitMethods<B>>>{});
}

TEST_CASE("InitMethods: names are the policies' own, each once, calibration and solvers read from the policies") {
  using B = milora::EigenBackend<double>;
  std::set<std::string_view> seen;
  for (const auto& m : milora::init_methods<B>()) {
    CAPTURE(std::string(m.name));
    CHECK(!m.name.empty());
    CHECK(seen.insert(m.name).second);
    CHECK(&milora::init_method<B>(m.name) == &m);
  }
  CHECK(milora::init_method_names<B>() == "lora,gaussian,pissa,milora,olora,orthogonal,mica,corda-kpm,corda-ipm,eva,lora-ga");
  // what the policies' types say, independently of the registry's own reading
  using enum milora::Calibration;
  CHECK(milora::init_method<B>("corda-kpm").calibration == input_statistics);
  CHECK(milora::init_method<B>("eva").calibration == input_statistics);
  CHECK(milora::init_method<B>("lora-ga").calibration == weight_gradient);
  CHECK(milora::init_method<B>("milora").calibration == none);
  static_assert(milora::InputCalibratedInit<milora::ActivationPCA<B>, B>);
  static_assert(milora::GradientCalibratedInit<milora::GradientApproximation<B>, B>);
  static_assert(!milora::CalibratedInit<milora::MinorSVD<>, B>);
  CHECK(milora::init_method<B>("milora").has_fast_solver);
  CHECK(!milora::init_method<B>("eva").has_fast_solver);
  CHECK(milora::init_method<B>("pissa").peft_name == "pissa");
  CHECK(milora::init_method<B>("milora").peft_name.empty());
}

TEST_CASE("with_init_method: the named method's exact or fast policy, an unknown name refused before anything runs") {
  using B = milora::EigenBackend<double>;
  const auto solver_of = [&](const char* method, bool fast) {
    return milora::with_init_method<B>(method, fast, []<class P>() -> std::string {
      if constexpr (requires { P{}.solver; }) return std::string(P::name) + "/" + std::string(decltype(P{}.solver)::name);
      else return std::string(P::name);
    });
  };
  CHECK(solver_of("milora", false) == "milora/exact");
  CHECK(solver_of("milora", true) == "milora/cholesky-krylov");
  CHECK(solver_of("pissa", true) == "pissa/randomized");
  CHECK(solver_of("corda-ipm", true) == "corda-ipm/randomized");
  CHECK(solver_of("olora", true) == "olora");
  int calls = 0;
  CHECK_THROWS_WITH_AS(milora::with_init_method<B>("dora", false, [&]<class P>() { ++calls; }),
                       "unknown init method 'dora' (lora,gaussian,pissa,milora,olora,orthogonal,mica,corda-kpm,corda-ipm,eva,lora-ga)",
                       milora::value_error);
  CHECK(calls == 0);
}

TEST_CASE_TEMPLATE("Adapter: a policy whose factors contradict its declared residual is refused, the layer untouched", B,
                   MILORA_TEST_BACKENDS) {
  const HostMatrix w0 = random_normal(12, 10, 821);
  milora::Linear<B> layer(device<B>(w0));
  using Lying = milora::Adapter<B, RegistryLyingPolicy>;
  CHECK_THROWS_WITH_AS(Lying(layer, {.rank = 2, .alpha = 2}), "init policy 'lying' declares residual = true but its factors say false",
                       milora::state_error);
  CHECK(host<B>(layer.weight()) == host<B>(device<B>(w0)));
}
