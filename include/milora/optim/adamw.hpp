// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) with PyTorch's
// semantics: torch.optim.AdamW's defaults and its single-tensor update order, so that a run here
// and a run in PyTorch from the same state take the same steps (see AdamWStep in core/backend.hpp).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "milora/core/backend.hpp"
#include "milora/core/checks.hpp"
#include "milora/core/parameter.hpp"

namespace milora {

/// torch.optim.AdamW's defaults.
struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;

  /// Throws value_error with PyTorch's wording for an out-of-range hyperparameter.
  void validate() const {
    auto bad = [](const char* what, double v) {
      return value_error(detail::concat("AdamW: invalid ", what, ": ", v));
    };
    if (!(lr >= 0) || !std::isfinite(lr)) throw bad("learning rate", lr);
    if (!(eps >= 0) || !std::isfinite(eps)) throw bad("epsilon value", eps);
    if (!(beta1 >= 0 && beta1 < 1)) throw bad("beta parameter at Index 0", beta1);
    if (!(beta2 >= 0 && beta2 < 1)) throw bad("beta parameter at Index 1", beta2);
    if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) throw bad("weight_decay value", weight_decay);
  }
};

template <ProductBackend B>
class AdamW {
 public:
  explicit AdamW(AdamWConfig config = {}) : config_(config) { config_.validate(); }

  /// Registers a parameter; its moment estimates start at zero, as in PyTorch.
  void add(Parameter<B> p) {
    detail::require_shape<B>(p.grad, B::rows(p.value), B::cols(p.value),
                             detail::concat("AdamW: gradient of ", p.name).c_str());
    state_.push_back({p, B::zeros(B::rows(p.value), B::cols(p.value)),
                      B::zeros(B::rows(p.value), B::cols(p.value))});
  }
  /// Registers every parameter of a range, e.g. adapter.parameters().
  template <class Range>
  void add_all(Range&& params) {
    for (const Parameter<B>& p : params) add(p);
  }

  /// One update of every registered parameter from its current gradient.
  void step() {
    ++steps_;
    const double t = static_cast<double>(steps_);
    const AdamWStep s{config_.lr, config_.beta1, config_.beta2, config_.eps, config_.weight_decay,
                      1 - std::pow(config_.beta1, t), std::sqrt(1 - std::pow(config_.beta2, t))};
    for (auto& st : state_) B::adamw_update(st.param.value, st.param.grad, st.m, st.v, s);
  }

  /// Sets every registered gradient to zero.
  void zero_grad() {
    for (auto& st : state_) B::scale(st.param.grad, scalar_t<B>(0));
  }

  /// For learning-rate schedules.
  void set_lr(double lr) {
    AdamWConfig c = config_;
    c.lr = lr;
    c.validate();
    config_ = c;
  }
  double lr() const { return config_.lr; }
  const AdamWConfig& config() const { return config_; }
  long long steps() const { return steps_; }
  std::size_t size() const { return state_.size(); }
  /// First and second moment estimates of parameter i (exp_avg, exp_avg_sq in PyTorch).
  const matrix_t<B>& exp_avg(std::size_t i) const { return state_.at(i).m; }
  const matrix_t<B>& exp_avg_sq(std::size_t i) const { return state_.at(i).v; }

  /// Restores parameter i's moment estimates and the step count, as saved by a checkpoint, so that
  /// training resumes bit for bit (PyTorch's optimizer.load_state_dict). Checks before writing.
  void restore(std::size_t i, const_view_t<B> exp_avg, const_view_t<B> exp_avg_sq, long long steps) {
    if (i >= state_.size())
      throw value_error(detail::concat("AdamW::restore: parameter ", i, " of ", state_.size()));
    if (steps < 0) throw value_error(detail::concat("AdamW::restore: step count ", steps, " is negative"));
    const auto& st = state_[i];
    const std::string what = detail::concat("AdamW::restore: moments of ", st.param.name);
    detail::require_shape<B>(exp_avg, B::rows(st.m), B::cols(st.m), what.c_str());
    detail::require_shape<B>(exp_avg_sq, B::rows(st.v), B::cols(st.v), what.c_str());
    B::copy(exp_avg, state_[i].m);
    B::copy(exp_avg_sq, state_[i].v);
    steps_ = steps;
  }

 private:
  struct State {
    Parameter<B> param;
    matrix_t<B> m, v;
  };
  AdamWConfig config_;
  std::vector<State> state_;
  long long steps_ = 0;
};

}  // namespace milora
