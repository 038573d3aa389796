// Whether a method differs from the baseline by more than the seeds' spread: the per-seed paired
// difference (method - baseline on the same seed: the same data order and adapter seed) with a
// Student-t 95% interval. Pairing removes what the seed does to both runs alike, so a difference
// can be resolved when the two methods' own spreads overlap.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <vector>

#include "milora/core/errors.hpp"

namespace compare {

/// t_{0.975, df}: the two-sided 95% quantile of Student's t (tables to df 30, the normal's 1.96 beyond,
/// which errs by under 2 % there).
inline double t_quantile_975(std::size_t df) {
  static constexpr std::array<double, 30> table = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                                   2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                                   2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) throw milora::value_error("t_quantile_975: no degrees of freedom (one seed)");
  return df <= table.size() ? table[df - 1] : 1.96;
}

struct PairedDifference {
  double mean = 0, low = 0, high = 0;
  std::size_t n = 0;
  /// The interval excludes 0 (needs two seeds or more).
  bool resolved() const { return n >= 2 && (low > 0 || high < 0); }
};

/// method[s] - baseline[s] over the seeds s: mean and 95% interval (none, low = high = mean, for one seed).
inline PairedDifference paired_difference(const std::vector<double>& method, const std::vector<double>& baseline) {
  if (method.size() != baseline.size() || method.empty())
    throw milora::value_error("paired_difference: the method and the baseline need the same seeds, at least one");
  PairedDifference d;
  d.n = method.size();
  std::vector<double> diff(d.n);
  for (std::size_t s = 0; s < d.n; ++s) d.mean += (diff[s] = method[s] - baseline[s]) / double(d.n);
  d.low = d.high = d.mean;
  if (d.n < 2) return d;
  double ss = 0;
  for (double x : diff) ss += (x - d.mean) * (x - d.mean);
  const double half = t_quantile_975(d.n - 1) * std::sqrt(ss / double(d.n - 1) / double(d.n));
  d.low = d.mean - half;
  d.high = d.mean + half;
  return d;
}

}  // namespace compare
