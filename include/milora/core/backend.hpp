// The backend concepts: everything the adapter, the init policies, the spectral solvers and AdamW
// need from a tensor library, stated in one place, in layers, so that a backend (or a caller) names
// only what it uses:
//
//   BackendTypes       the types and their conversions
//   ProductBackend     + memory, BLAS products, element-wise work, random fills: enough for an
//                      adapter with LoRA's start, its training (AdamW) and calibration statistics
//   Backend            + the dense factorisations: what the spectral solvers and the SVD / QR based
//                      init policies call; every backend milora ships is one
//   Bf16Backend        + bf16 storage: frozen weights and kept activations in bfloat16
//   RandomizedSvdBackend  + the backend's own randomized SVD (CusolverRandomizedSVD uses it)
//   (Rebindable, CastableBackend: the same backend in another scalar, milora/core/precision.hpp)
//
// A backend is a type with static members only (like mdspan's accessor policies): no object to
// carry around, so `Adapter<EigenBackend<float>, ...>` names everything about where the numbers live.
//
// Layout contract (../docs/design.md): matrices are logically row-major, a weight is out x in and a
// batch of activations is tokens x features, exactly as in PyTorch and safetensors. Vectors (a bias,
// singular values, a diagonal) are matrices with one row; functions that take a vector accept any
// matrix with the right number of elements.
//
// Requirements, in the order the concepts check them:
//   types    scalar; matrix (owning, movable); view (mutable, non-owning, cheap to copy);
//            const_view. A matrix& converts to view, a const matrix& and a view to const_view, so
//            callers pass either. A view is what lets us wrap another framework's weight in place.
//   memory   zeros(r, c), from_host(r, c, span) (row-major host data), to_host(v) -> std::vector,
//            clone(v), copy(src, dst), rows(v), cols(v), block(v, r0, c0, nr, nc), cblock(...)
//   BLAS     gemm(alpha, a, ta, b, tb, beta, c): c = alpha * op(a) * op(b) + beta * c
//            syrk(alpha, a, ta, beta, c): c = alpha * op(a) * op(a)^T + beta * c, c symmetric and
//            both triangles written (a Gram matrix at half a gemm's cost)
//            trsm(l, tl, x): x = op(l)^-1 * x in place, l lower triangular (a Cholesky factor)
//   elementwise  scale(v, a); axpy(a, x, y); add_diagonal(m, a) (m_ii += a, a shift);
//            add_row_broadcast(y, row); scale_rows(m, d);
//            scale_columns(m, d); all_finite(v); squared_norm(v); adamw_update(...)
//   random   fill_uniform(v, lo, hi, seed), fill_normal(v, mean, std, seed), with the numbers of
//            milora/core/random.hpp (element (i, j) is draw i*cols + j) so backends agree.
//   LAPACK   svd(a) thin, sigma descending; eigh(a, lo, hi) eigenpairs lo..hi (0-based, inclusive,
//            ascending); qr(a) thin; cholesky(a) lower factor.
//   bf16, randomized SVD: at Bf16Backend and RandomizedSvdBackend below.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <vector>

#include "milora/core/errors.hpp"

namespace milora {

/// Transpose flag for gemm, as in BLAS: op(X) = X or X^T.
enum class Trans : bool { no = false, yes = true };

/// Thin SVD A = U * diag(S) * Vt of an m x n matrix, k = min(m, n): U m x k, S 1 x k
/// (descending, as LAPACK and Eigen return them), Vt k x n.
template <class Matrix>
struct SVDResult {
  Matrix U, S, Vt;
};

/// Selected eigenpairs of a symmetric matrix: values 1 x k ascending, vectors n x k (columns).
template <class Matrix>
struct EighResult {
  Matrix values, vectors;
};

/// Thin QR of an m x n matrix (m >= n): Q m x n with orthonormal columns, R n x n upper triangular.
template <class Matrix>
struct QRResult {
  Matrix Q, R;
};

/// Coefficients of one AdamW step, precomputed on the host so that a backend's element-wise kernel
/// is a pure function of (param, grad, m, v). The update, in PyTorch's order (torch/optim/adamw.py,
/// single-tensor path):
///   p *= 1 - lr*weight_decay;  m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g*g;
///   p -= (lr / bias_correction1) * m / (sqrt(v) / bias_correction2_sqrt + eps)
struct AdamWStep {
  double lr, beta1, beta2, eps, weight_decay;
  double bias_correction1;       // 1 - beta1^t
  double bias_correction2_sqrt;  // sqrt(1 - beta2^t)
};

// ---- the layers of a backend ----------------------------------------------------------------------

/// The types every layer names: scalar, matrix (owning), view and const_view, with the
/// conversions callers rely on (a matrix& is a view, a view is a const_view).
template <class B>
concept BackendTypes =
    requires {
      typename B::scalar;
      typename B::matrix;
      typename B::view;
      typename B::const_view;
    } &&
    std::movable<typename B::matrix> && std::default_initializable<typename B::matrix> &&
    std::convertible_to<typename B::matrix&, typename B::view> &&
    std::convertible_to<const typename B::matrix&, typename B::const_view> &&
    std::convertible_to<typename B::view, typename B::const_view> &&
    std::copy_constructible<typename B::view> && std::copy_constructible<typename B::const_view>;

/// Products: memory, BLAS, element-wise work and random fills. What an adapter with a policy that
/// needs no factorisation (LoRA, Gaussian), its layer, AdamW and the input statistics call.
template <class B>
concept ProductBackend =
    BackendTypes<B> &&
    requires(typename B::view v, typename B::const_view cv, typename B::scalar a, Index i, double d,
             std::uint64_t seed, std::span<const typename B::scalar> host, const AdamWStep& step) {
      // memory
      { B::zeros(i, i) } -> std::same_as<typename B::matrix>;
      { B::from_host(i, i, host) } -> std::same_as<typename B::matrix>;
      { B::to_host(cv) } -> std::same_as<std::vector<typename B::scalar>>;
      { B::clone(cv) } -> std::same_as<typename B::matrix>;
      B::copy(cv, v);
      { B::rows(cv) } -> std::convertible_to<Index>;
      { B::cols(cv) } -> std::convertible_to<Index>;
      { B::block(v, i, i, i, i) } -> std::same_as<typename B::view>;
      { B::cblock(cv, i, i, i, i) } -> std::same_as<typename B::const_view>;
      // BLAS
      B::gemm(a, cv, Trans::no, cv, Trans::yes, a, v);
      B::syrk(a, cv, Trans::no, a, v);
      B::trsm(cv, Trans::yes, v);
      // element-wise
      B::scale(v, a);
      B::axpy(a, cv, v);
      B::add_diagonal(v, a);
      B::add_row_broadcast(v, cv);
      B::scale_rows(v, cv);
      B::scale_columns(v, cv);
      { B::all_finite(cv) } -> std::same_as<bool>;
      { B::squared_norm(cv) } -> std::convertible_to<double>;
      B::adamw_update(v, cv, v, v, step);
      // random
      B::fill_uniform(v, d, d, seed);
      B::fill_normal(v, d, d, seed);
    };

/// A whole backend: products and the dense factorisations the spectral solvers and the SVD / QR
/// based init policies call. Every backend milora ships is one.
template <class B>
concept Backend =
    ProductBackend<B> && requires(typename B::const_view cv, Index i) {
      { B::svd(cv) } -> std::same_as<SVDResult<typename B::matrix>>;
      { B::eigh(cv, i, i) } -> std::same_as<EighResult<typename B::matrix>>;
      { B::qr(cv) } -> std::same_as<QRResult<typename B::matrix>>;
      { B::cholesky(cv) } -> std::same_as<typename B::matrix>;
    };

/// bf16 storage, for frozen weights in bfloat16 (Bf16Weights, milora/core/weight_storage.hpp) and
/// activations kept in bf16:
///   types    bf16_matrix (owning), bf16_view (mutable), bf16_const_view
///   memory   bf16_from_host(r, c, span<const uint16_t>) (the bits, row-major: a safetensors BF16
///            tensor as it lies in the file), bf16_to_host(v) -> vector<uint16_t>, bf16_rows(v),
///            bf16_cols(v), bf16_block / bf16_cblock (as block / cblock)
///   rounding to_bf16(const_view) and round_into_bf16(src, dst) (round to nearest even),
///            from_bf16(bf16_const_view) and from_bf16_into(src, dst) (widen, exact)
///   BLAS     gemm_bf16(alpha, x, tx, w, tw, beta, c): c = alpha op(round(x)) op(w) + beta c
///            add_product_to_bf16(alpha, b, a, w): w = round(w + alpha b a)
template <class B>
concept Bf16Backend =
    ProductBackend<B> &&
    requires {
      typename B::bf16_matrix;
      typename B::bf16_view;
      typename B::bf16_const_view;
    } &&
    std::movable<typename B::bf16_matrix> &&
    std::convertible_to<typename B::bf16_matrix&, typename B::bf16_view> &&
    std::convertible_to<const typename B::bf16_matrix&, typename B::bf16_const_view> &&
    std::convertible_to<typename B::bf16_view, typename B::bf16_const_view> &&
    requires(typename B::view v, typename B::const_view cv, typename B::bf16_view bv,
             typename B::bf16_const_view bcv, typename B::scalar a, Index i, std::span<const std::uint16_t> bits) {
      { B::bf16_from_host(i, i, bits) } -> std::same_as<typename B::bf16_matrix>;
      { B::bf16_to_host(bcv) } -> std::same_as<std::vector<std::uint16_t>>;
      { B::bf16_rows(bcv) } -> std::convertible_to<Index>;
      { B::bf16_cols(bcv) } -> std::convertible_to<Index>;
      { B::bf16_block(bv, i, i, i, i) } -> std::same_as<typename B::bf16_view>;
      { B::bf16_cblock(bcv, i, i, i, i) } -> std::same_as<typename B::bf16_const_view>;
      { B::to_bf16(cv) } -> std::same_as<typename B::bf16_matrix>;
      B::round_into_bf16(cv, bv);
      { B::from_bf16(bcv) } -> std::same_as<typename B::matrix>;
      B::from_bf16_into(bcv, v);
      B::gemm_bf16(a, cv, Trans::no, bcv, Trans::yes, a, v);
      B::add_product_to_bf16(a, cv, cv, bv);
    };

/// A backend with its own randomized SVD: svd_randomized_top(a, r, p, q), the r largest triplets
/// from a sketch of r + p columns and q power iterations (CudaBackend: cuSOLVER's Xgesvdr).
/// CusolverRandomizedSVD uses it where it exists.
template <class B>
concept RandomizedSvdBackend =
    Backend<B> && requires(typename B::const_view cv, Index i) {
      { B::svd_randomized_top(cv, i, i, i) } -> std::same_as<SVDResult<typename B::matrix>>;
    };

/// Short names used throughout the library.
template <BackendTypes B> using matrix_t = typename B::matrix;
template <BackendTypes B> using view_t = typename B::view;
template <BackendTypes B> using const_view_t = typename B::const_view;
template <BackendTypes B> using scalar_t = typename B::scalar;

/// Number of elements of a matrix or vector.
template <ProductBackend B>
Index numel(const_view_t<B> v) {
  return static_cast<Index>(B::rows(v)) * static_cast<Index>(B::cols(v));
}

}  // namespace milora
