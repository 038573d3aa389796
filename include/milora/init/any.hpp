// AnyInit<B>: any init policy for backend B behind one type, chosen at run time.
//
// Adapter<B, Init> is a distinct type per policy, which is what a user who picks one policy wants
// (no indirection, the policy's members visible through init()). A program that picks the policy
// at run time, from a command line say, would instead compile everything that holds adapters once
// per policy: the reference LLaMA with its trainer is one such unit, fifteen policies times two
// backends. Adapter<B, AnyInit<B>> is one type for all of them:
//
//   milora::Adapter<B, milora::AnyInit<B>> a(layer, cfg, milora::MinorSVD<>{});
//   a.init().policy_name();               // "milora"
//   a.init().target<milora::MinorSVD<>>() // the wrapped policy, or nullptr for another type
//
// The factors are exactly those of the wrapped policy: initialize() forwards to it through one
// virtual call per adapter (at initialisation only; forward and backward never see the policy).
// The wrapped policy is immutable and shared between copies. retained() forwards too, so a
// calibrated policy's statistics are released once the adapter exists, as with the policy itself.
#pragma once

#include <concepts>
#include <memory>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "milora/core/init_policy.hpp"
#include "milora/init/kaiming.hpp"

namespace milora {

template <ProductBackend BE>
class AnyInit {
 public:
  /// The erased type's own name; policy_name() is the wrapped policy's.
  static constexpr std::string_view name = "any";

  /// LoRA's start (KaimingUniform), as Adapter's default argument Init{} expects of a policy.
  AnyInit() : AnyInit(KaimingUniform{}) {}

  /// Wraps `init`, any policy for BE (not another AnyInit: that one is copied, not nested).
  template <class Init>
    requires(!std::same_as<std::remove_cvref_t<Init>, AnyInit>) && InitPolicy<std::remove_cvref_t<Init>, BE>
  AnyInit(Init&& init)  // NOLINT(google-explicit-constructor): a policy is an AnyInit wherever one is asked for
      : impl_(std::make_shared<const Held<std::remove_cvref_t<Init>>>(std::forward<Init>(init))) {}

  /// The wrapped policy's name: "lora", "milora", "corda-kpm", ...
  std::string_view policy_name() const { return impl_->policy_name(); }

  /// The wrapped policy when it is an Init, else nullptr (as std::function::target).
  template <class Init>
  const Init* target() const {
    if (impl_->type() != typeid(Init)) return nullptr;
    return &static_cast<const Held<Init>&>(*impl_).init;
  }

  template <ProductBackend B>
    requires std::same_as<B, BE>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    return impl_->initialize(w, cfg);
  }

  /// What an adapter keeps: the wrapped policy's retained() where it has one, else this policy.
  AnyInit retained() const {
    auto kept = impl_->retained();
    return kept ? AnyInit(std::move(kept)) : *this;
  }

 private:
  struct Erased {
    virtual ~Erased() = default;
    virtual std::string_view policy_name() const = 0;
    virtual const std::type_info& type() const = 0;
    virtual AdapterFactors<BE> initialize(const_view_t<BE> w, const AdapterConfig& cfg) const = 0;
    virtual std::shared_ptr<const Erased> retained() const = 0;  // null: keep this one
  };
  template <class Init>
  struct Held final : Erased {
    Init init;
    explicit Held(Init i) : init(std::move(i)) {}
    std::string_view policy_name() const override { return Init::name; }
    const std::type_info& type() const override { return typeid(Init); }
    AdapterFactors<BE> initialize(const_view_t<BE> w, const AdapterConfig& cfg) const override {
      return init.template initialize<BE>(w, cfg);
    }
    std::shared_ptr<const Erased> retained() const override {
      if constexpr (requires { { init.retained() } -> std::same_as<Init>; })
        return std::make_shared<const Held>(init.retained());
      else return nullptr;
    }
  };
  explicit AnyInit(std::shared_ptr<const Erased> impl) : impl_(std::move(impl)) {}

  std::shared_ptr<const Erased> impl_;
};

}  // namespace milora
