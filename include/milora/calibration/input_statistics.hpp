// InputStatistics<B>: what the data-driven init policies (CorDA, EVA) need to know about a layer's
// inputs, accumulated over calibration batches without keeping them: the token count n, the column
// sums s = 1^T X and the Gram matrix G = X^T X (X: all calibration tokens x in_features).
//
//   second_moment() = G / n             CorDA's "covariance" C (uncentred, as CorDA and PEFT use it)
//   covariance()    = G / n - mu mu^T   the centred covariance (mu = s / n), whose leading
//                                       eigenvectors are the principal components EVA starts from
//
// The sums are kept in the backend's scalar type (float for a float model, as PEFT keeps them in
// float32); both results are symmetric by construction (syrk writes both triangles).
#pragma once

#include <string>
#include <vector>

#include "milora/core/backend.hpp"
#include "milora/core/checks.hpp"

namespace milora {

template <ProductBackend B>
class InputStatistics {
 public:
  using matrix = matrix_t<B>;
  using scalar = scalar_t<B>;

  explicit InputStatistics(Index features) : gram_(B::zeros(checked(features), features)), sum_(B::zeros(1, features)) {}

  /// Adds the rows of x (tokens x features) to the statistics. A wrong width or a non-finite
  /// entry is refused before anything is added.
  void observe(const_view_t<B> x) {
    if (B::cols(x) != features())
      throw shape_error(detail::concat("InputStatistics::observe: input is ", detail::shape_str(B::rows(x), B::cols(x)),
                                       ", expected ", features(), " columns (features)"));
    detail::require_finite<B>(x, "InputStatistics::observe: input");
    const Index t = B::rows(x);
    if (t == 0) return;
    B::syrk(scalar(1), x, Trans::yes, scalar(1), gram_);
    const matrix ones = B::from_host(1, t, std::vector<scalar>(std::size_t(t), scalar(1)));
    B::gemm(scalar(1), ones, Trans::no, x, Trans::no, scalar(1), sum_);
    tokens_ += t;
  }

  Index features() const { return B::cols(gram_); }
  /// How many rows (tokens) were observed.
  Index tokens() const { return tokens_; }

  /// G / n: the mean of x x^T over the observed tokens (in x in).
  matrix second_moment() const {
    require_tokens("second_moment");
    matrix c = B::clone(gram_);
    B::scale(c, scalar(1.0 / double(tokens_)));
    return c;
  }

  /// G / n - mu mu^T: the covariance of the observed tokens (in x in), mu their mean.
  matrix covariance() const {
    require_tokens("covariance");
    matrix c = second_moment();
    matrix mu = B::clone(sum_);
    B::scale(mu, scalar(1.0 / double(tokens_)));
    B::gemm(scalar(-1), mu, Trans::yes, mu, Trans::no, scalar(1), c);
    return c;
  }

 private:
  static Index checked(Index features) {
    if (features <= 0) throw value_error(detail::concat("InputStatistics: features must be positive, got ", features));
    return features;
  }
  void require_tokens(const char* what) const {
    if (tokens_ == 0) throw state_error(std::string("InputStatistics::") + what + ": no tokens were observed");
  }

  matrix gram_, sum_;
  Index tokens_ = 0;
};

}  // namespace milora
