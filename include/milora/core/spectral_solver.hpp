// SpectralSolver: how an init policy obtains singular triplets. "Which subspace" (the init policy)
// and "how to compute it" (the solver) vary independently, e.g. MinorSVD<ExactSVD>.
//
// A solver provides one or both of
//   top<B>(w, r)     the r largest singular triplets of w   (PrincipalSolver, used by PiSSA)
//   bottom<B>(w, r)  the r smallest singular triplets of w  (MinorSolver, used by MiLoRA)
// each returning SVDResult{U (m x r), S (1 x r, descending), Vt (r x n)}, and a `name` for logs.
// A solver need not be exact: the adapter computes the residual from the factors actually produced,
// so W' + s*B*A = W holds whatever the solver's accuracy.
#pragma once

#include <concepts>
#include <string_view>

#include "milora/core/backend.hpp"

namespace milora {

/// The r selected singular triplets: U m x r, S 1 x r (descending), Vt r x n.
template <Backend B>
using Triplets = SVDResult<matrix_t<B>>;

template <class S, class B>
concept PrincipalSolver = Backend<B> && requires(const S& solver, const_view_t<B> w, Index r) {
  { S::name } -> std::convertible_to<std::string_view>;
  { solver.template top<B>(w, r) } -> std::same_as<Triplets<B>>;
};

template <class S, class B>
concept MinorSolver = Backend<B> && requires(const S& solver, const_view_t<B> w, Index r) {
  { S::name } -> std::convertible_to<std::string_view>;
  { solver.template bottom<B>(w, r) } -> std::same_as<Triplets<B>>;
};

template <class S, class B>
concept SpectralSolver = PrincipalSolver<S, B> || MinorSolver<S, B>;

}  // namespace milora
