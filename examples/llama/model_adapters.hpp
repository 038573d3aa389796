// The adapters on a Llama's projections, and what the data-driven inits collect before them.
//
//   add                        an adapter on every targeted projection, each started by its own
//                              policy (init_for(module)) and seed; every init runs before any
//                              weight changes, so a failing one leaves the model as it was
//   collect_input_statistics   each targeted projection's inputs over some forward passes
//                              (CorDA, EVA: milora::InputStatistics), shared by the projections
//                              that read the same input
//   collect_weight_gradients   each targeted weight's dL/dW over some forward_backward passes
//                              (LoRA-GA); the model trains nothing else meanwhile
//
// Llama's members of the same names call these and keep the model's own state (its activation
// buffers, full training) consistent with them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "milora/adapters.hpp"
#include "milora/core/errors.hpp"
#include "projection.hpp"

namespace llama {

template <milora::Backend BE, class Weights>
class ModelAdapters {
 public:
  using ProjectionT = Projection<BE, Weights>;
  using Blocks = std::vector<std::unique_ptr<Block<BE, Weights>>>;
  using AdapterT = typename ProjectionT::AdapterT;
  using matrix = milora::matrix_t<BE>;

  explicit ModelAdapters(Blocks& blocks) : blocks_(blocks) {}

  /// Adds an adapter started by init_for(module path) (a policy or an AnyInit) to every projection
  /// named in `targets`, each with its own seed (config.seed + its index), in the model's layer
  /// order. Throws value_error for an unknown name and state_error when adapters were already
  /// added; whatever a policy throws comes with the module's path; no weight changes then.
  template <class InitFor>
  void add(const std::vector<std::string>& targets, const milora::AdapterConfig& config, InitFor& init_for) {
    if (count() != 0) throw milora::state_error("Llama::add_adapters: the model already has adapters");
    check_targets(targets, "Llama::add_adapters");
    for (auto& b : blocks_)
      for (ProjectionT* p : b->projections()) config.validate(p->linear.out_features(), p->linear.in_features());
    // Two passes: every init first (an SVD that fails, e.g. on an all-zero weight, changes no
    // weight), then the adapters, whose constructors only write W' = W - s*B*A.
    std::vector<std::pair<ProjectionT*, milora::AdapterConfig>> chosen;
    std::vector<milora::AdapterFactors<BE>> factors;
    std::vector<milora::AnyInit<BE>> inits;
    std::uint64_t seed = config.seed;
    for (auto& b : blocks_)
      for (ProjectionT* p : b->projections()) {
        if (!targeted(*p, targets)) continue;
        milora::AdapterConfig c = config;
        c.seed = seed++;
        try {
          inits.emplace_back(init_for(p->module));
          factors.push_back(AdapterT::initial_factors(p->linear, c, inits.back()));
        } catch (const std::exception& e) {
          rethrow_with_context(e, p->module);
        }
        chosen.emplace_back(p, c);
      }
    for (std::size_t i = 0; i < chosen.size(); ++i)
      chosen[i].first->adapter.emplace(chosen[i].first->linear, chosen[i].second, std::move(factors[i]), inits[i]);
    config_ = config;
    targets_ = targets;
  }

  /// Every projection that has an adapter, in layer order (q, k, v, o, gate, up, down per layer).
  std::vector<ProjectionT*> adapted() const {
    std::vector<ProjectionT*> out;
    for (auto& b : blocks_)
      for (ProjectionT* p : b->projections())
        if (p->adapter) out.push_back(p);
    return out;
  }
  Index count() const { return Index(adapted().size()); }
  /// Trainable parameters: r * (in + out) per adapter (r * in where B is frozen).
  Index num_trainable() const {
    Index n = 0;
    for (ProjectionT* p : adapted()) n += p->adapter->num_trainable();
    return n;
  }
  const milora::AdapterConfig& config() const { return config_; }
  const std::vector<std::string>& targets() const { return targets_; }
  /// Folds every adapter into its weight (for generation), and back.
  void merge() {
    for (ProjectionT* p : adapted()) p->adapter->merge();
  }
  void unmerge() {
    for (ProjectionT* p : adapted()) p->adapter->unmerge();
  }

  /// The inputs of every projection named in `targets` over the forward passes `run` makes: module
  /// path -> statistics. Projections that read the same input (q, k and v; gate and up) share one
  /// InputStatistics, observed once per forward.
  template <class Run>
  std::map<std::string, std::shared_ptr<milora::InputStatistics<BE>>> collect_input_statistics(
      const std::vector<std::string>& targets, Run& run) {
    check_targets(targets, "Llama::collect_input_statistics");
    std::map<std::string, std::shared_ptr<milora::InputStatistics<BE>>> out;
    for (auto& b : blocks_)
      for (const auto& group : {std::vector<ProjectionT*>{&b->q, &b->k, &b->v}, {&b->o}, {&b->gate, &b->up}, {&b->down}}) {
        std::shared_ptr<milora::InputStatistics<BE>> stats;
        for (ProjectionT* p : group) {
          if (!targeted(*p, targets)) continue;
          if (!stats) {
            stats = std::make_shared<milora::InputStatistics<BE>>(p->linear.in_features());
            p->observer = stats;  // the first of the group in forward order sees the shared input
          }
          out[p->module] = stats;
        }
      }
    struct Detach {  // the observers go, whether run returns or throws
      Blocks& blocks;
      ~Detach() {
        for (auto& b : blocks)
          for (ProjectionT* p : b->projections()) p->observer.reset();
      }
    } detach{blocks_};
    run();
    return out;
  }

  /// dL/dW of every projection named in `targets`, accumulated over the forward_backward calls
  /// `run` makes: module path -> gradient. Only those weights get a gradient, and only while run
  /// runs (probing() says so); afterwards the projections are as they were.
  template <class Run>
  std::map<std::string, std::shared_ptr<const matrix>> collect_weight_gradients(const std::vector<std::string>& targets,
                                                                                Run& run) {
    if (count() != 0) throw milora::state_error("Llama::collect_weight_gradients: the model has adapters");
    check_targets(targets, "Llama::collect_weight_gradients");
    struct Release {  // the gradients go, whether run returns or throws
      ModelAdapters& m;
      ~Release() {
        for (auto& b : m.blocks_)
          for (ProjectionT* p : b->projections()) p->grad = BE::zeros(0, 0);
        m.probing_ = false;
      }
    } release{*this};
    for (auto& b : blocks_)
      for (ProjectionT* p : b->projections())
        if (targeted(*p, targets)) p->grad = BE::zeros(p->linear.out_features(), p->linear.in_features());
    probing_ = true;
    run();
    std::map<std::string, std::shared_ptr<const matrix>> out;
    for (auto& b : blocks_)
      for (ProjectionT* p : b->projections())
        if (BE::rows(p->grad) != 0) out[p->module] = std::make_shared<const matrix>(std::move(p->grad));
    return out;
  }
  /// Whether collect_weight_gradients is running: targeted weights get dL/dW.
  bool probing() const { return probing_; }

  static void check_targets(const std::vector<std::string>& targets, const char* who) {
    if (targets.empty()) throw milora::value_error(std::string(who) + ": no target modules");
    for (const auto& t : targets)
      if (std::find(kProjectionNames.begin(), kProjectionNames.end(), t) == kProjectionNames.end())
        throw milora::value_error(std::string(who) + ": '" + t +
                                  "' is not a LLaMA projection (q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)");
  }

 private:
  // Whether the projection's name (q_proj, ...) is one of `targets`.
  static bool targeted(const ProjectionT& p, const std::vector<std::string>& targets) {
    return std::find(targets.begin(), targets.end(), p.name()) != targets.end();
  }

  // The same exception type, its message prefixed with the module it came from.
  [[noreturn]] static void rethrow_with_context(const std::exception& e, const std::string& module) {
    const std::string what = module + ": " + e.what();
    if (dynamic_cast<const milora::shape_error*>(&e)) throw milora::shape_error(what);
    if (dynamic_cast<const milora::value_error*>(&e)) throw milora::value_error(what);
    if (dynamic_cast<const milora::numerical_error*>(&e)) throw milora::numerical_error(what);
    throw;
  }

  Blocks& blocks_;
  milora::AdapterConfig config_{};
  std::vector<std::string> targets_;
  bool probing_ = false;
};

}  // namespace llama
