// Moving a matrix between precisions of one backend family (float <-> double), for the algorithms
// that need double internally (the Gram matrix of the fast minor solver). A backend opts in with a
// member alias template `rebind<U>` naming itself in scalar U (Rebindable). The copy uses the
// backend's `cast<U>(view)` when it has one (CastableBackend: one pass, one allocation), else goes
// through the host.
#pragma once

#include <type_traits>
#include <vector>

#include "milora/core/backend.hpp"

namespace milora {

/// B's sibling in scalar U, when B declares `template <class U> using rebind = ...`.
template <class B, class U>
concept Rebindable = Backend<B> && requires { typename B::template rebind<U>; } &&
                     Backend<typename B::template rebind<U>>;

template <class B, class U>
  requires Rebindable<B, U>
using rebind_t = typename B::template rebind<U>;

/// A backend that converts its matrices into backend To's (its sibling in another scalar) in one
/// pass: From::cast<scalar_t<To>>(view).
template <class From, class To>
concept CastableBackend = Backend<From> && Backend<To> && requires(const_view_t<From> m) {
  { From::template cast<scalar_t<To>>(m) } -> std::same_as<matrix_t<To>>;
};

/// A copy of m (a From matrix) as a To matrix, converting the scalar.
template <Backend To, Backend From>
matrix_t<To> convert(const_view_t<From> m) {
  if constexpr (std::is_same_v<To, From>) {
    return From::clone(m);
  } else if constexpr (CastableBackend<From, To>) {
    return From::template cast<scalar_t<To>>(m);  // the backend converts in one pass
  } else {
    const auto h = From::to_host(m);
    const std::vector<scalar_t<To>> c(h.begin(), h.end());
    return To::from_host(From::rows(m), From::cols(m), c);
  }
}

}  // namespace milora
