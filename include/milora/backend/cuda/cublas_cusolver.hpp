// float / double overloads of the cuBLAS and cuSOLVER routines CudaBackend calls, each checking
// its status under the routine's name. Column-major arguments exactly as the libraries take them;
// the row-major bookkeeping is in milora/backend/cuda.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "milora/backend/cuda/status.hpp"

namespace milora::cuda::lib {

// ---- cuBLAS -------------------------------------------------------------------------------------
inline void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  check(cublasSgemm(h, ta, tb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc), "cublasSgemm");
}
inline void gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  check(cublasDgemm(h, ta, tb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc), "cublasDgemm");
}
/// C (float) = alpha op(A) op(B) + beta C with A and B in bf16, float accumulation (tensor cores).
inline void gemm_bf16(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                      const void* a, int lda, const void* b, int ldb, float beta, float* c, int ldc) {
  check(cublasGemmEx(h, ta, tb, m, n, k, &alpha, a, CUDA_R_16BF, lda, b, CUDA_R_16BF, ldb, &beta, c, CUDA_R_32F, ldc,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx (bf16 x bf16 -> float)");
}
inline void syrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k, float alpha,
                 const float* a, int lda, float beta, float* c, int ldc) {
  check(cublasSsyrk(h, uplo, t, n, k, &alpha, a, lda, &beta, c, ldc), "cublasSsyrk");
}
inline void syrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k, double alpha,
                 const double* a, int lda, double beta, double* c, int ldc) {
  check(cublasDsyrk(h, uplo, t, n, k, &alpha, a, lda, &beta, c, ldc), "cublasDsyrk");
}
inline void trsm(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t t, int m, int n,
                 float alpha, const float* a, int lda, float* b, int ldb) {
  check(cublasStrsm(h, side, uplo, t, CUBLAS_DIAG_NON_UNIT, m, n, &alpha, a, lda, b, ldb), "cublasStrsm");
}
inline void trsm(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t t, int m, int n,
                 double alpha, const double* a, int lda, double* b, int ldb) {
  check(cublasDtrsm(h, side, uplo, t, CUBLAS_DIAG_NON_UNIT, m, n, &alpha, a, lda, b, ldb), "cublasDtrsm");
}
/// c (m x n, column-major) = a^T where a is n x m column-major: the out-of-place transpose.
inline void transpose(cublasHandle_t h, int m, int n, const float* a, int lda, float* c, int ldc) {
  const float one = 1, zero = 0;  // with beta = 0, B is not read; c itself is passed for it
  check(cublasSgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, lda, &zero, c, ldc, c, ldc), "cublasSgeam (transpose)");
}
inline void transpose(cublasHandle_t h, int m, int n, const double* a, int lda, double* c, int ldc) {
  const double one = 1, zero = 0;
  check(cublasDgeam(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, &one, a, lda, &zero, c, ldc, c, ldc), "cublasDgeam (transpose)");
}

// ---- cuSOLVER: workspace queries ----------------------------------------------------------------
inline int gesvd_lwork(cusolverDnHandle_t h, int m, int n, float) {
  int lwork = 0;
  check(cusolverDnSgesvd_bufferSize(h, m, n, &lwork), "cusolverDnSgesvd_bufferSize");
  return lwork;
}
inline int gesvd_lwork(cusolverDnHandle_t h, int m, int n, double) {
  int lwork = 0;
  check(cusolverDnDgesvd_bufferSize(h, m, n, &lwork), "cusolverDnDgesvd_bufferSize");
  return lwork;
}
inline int syevdx_lwork(cusolverDnHandle_t h, int n, const float* a, int lda, int il, int iu, const float* w) {
  int lwork = 0, meig = 0;
  check(cusolverDnSsyevdx_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, n, a,
                                     lda, 0.0f, 0.0f, il, iu, &meig, w, &lwork),
        "cusolverDnSsyevdx_bufferSize");
  return lwork;
}
inline int syevdx_lwork(cusolverDnHandle_t h, int n, const double* a, int lda, int il, int iu, const double* w) {
  int lwork = 0, meig = 0;
  check(cusolverDnDsyevdx_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, n, a,
                                     lda, 0.0, 0.0, il, iu, &meig, w, &lwork),
        "cusolverDnDsyevdx_bufferSize");
  return lwork;
}
inline int geqrf_lwork(cusolverDnHandle_t h, int m, int n, float* a, int lda) {
  int lwork = 0;
  check(cusolverDnSgeqrf_bufferSize(h, m, n, a, lda, &lwork), "cusolverDnSgeqrf_bufferSize");
  return lwork;
}
inline int geqrf_lwork(cusolverDnHandle_t h, int m, int n, double* a, int lda) {
  int lwork = 0;
  check(cusolverDnDgeqrf_bufferSize(h, m, n, a, lda, &lwork), "cusolverDnDgeqrf_bufferSize");
  return lwork;
}
inline int orgqr_lwork(cusolverDnHandle_t h, int m, int n, int k, const float* a, int lda, const float* tau) {
  int lwork = 0;
  check(cusolverDnSorgqr_bufferSize(h, m, n, k, a, lda, tau, &lwork), "cusolverDnSorgqr_bufferSize");
  return lwork;
}
inline int orgqr_lwork(cusolverDnHandle_t h, int m, int n, int k, const double* a, int lda, const double* tau) {
  int lwork = 0;
  check(cusolverDnDorgqr_bufferSize(h, m, n, k, a, lda, tau, &lwork), "cusolverDnDorgqr_bufferSize");
  return lwork;
}
inline int potrf_lwork(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float* a, int lda) {
  int lwork = 0;
  check(cusolverDnSpotrf_bufferSize(h, uplo, n, a, lda, &lwork), "cusolverDnSpotrf_bufferSize");
  return lwork;
}
inline int potrf_lwork(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, double* a, int lda) {
  int lwork = 0;
  check(cusolverDnDpotrf_bufferSize(h, uplo, n, a, lda, &lwork), "cusolverDnDpotrf_bufferSize");
  return lwork;
}

// ---- cuSOLVER: the factorisations (info is a device int, read by the caller) --------------------
inline void gesvd(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* s, float* u, int ldu, float* vt,
                  int ldvt, float* work, int lwork, float* rwork, int* info) {
  check(cusolverDnSgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, rwork, info), "cusolverDnSgesvd");
}
inline void gesvd(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* s, double* u, int ldu, double* vt,
                  int ldvt, double* work, int lwork, double* rwork, int* info) {
  check(cusolverDnDgesvd(h, 'S', 'S', m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, rwork, info), "cusolverDnDgesvd");
}
inline void syevdx(cusolverDnHandle_t h, int n, float* a, int lda, int il, int iu, int* meig, float* w, float* work,
                   int lwork, int* info) {
  check(cusolverDnSsyevdx(h, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, n, a, lda, 0.0f,
                          0.0f, il, iu, meig, w, work, lwork, info),
        "cusolverDnSsyevdx");
}
inline void syevdx(cusolverDnHandle_t h, int n, double* a, int lda, int il, int iu, int* meig, double* w, double* work,
                   int lwork, int* info) {
  check(cusolverDnDsyevdx(h, CUSOLVER_EIG_MODE_VECTOR, CUSOLVER_EIG_RANGE_I, CUBLAS_FILL_MODE_LOWER, n, a, lda, 0.0, 0.0,
                          il, iu, meig, w, work, lwork, info),
        "cusolverDnDsyevdx");
}
inline void geqrf(cusolverDnHandle_t h, int m, int n, float* a, int lda, float* tau, float* work, int lwork, int* info) {
  check(cusolverDnSgeqrf(h, m, n, a, lda, tau, work, lwork, info), "cusolverDnSgeqrf");
}
inline void geqrf(cusolverDnHandle_t h, int m, int n, double* a, int lda, double* tau, double* work, int lwork, int* info) {
  check(cusolverDnDgeqrf(h, m, n, a, lda, tau, work, lwork, info), "cusolverDnDgeqrf");
}
inline void orgqr(cusolverDnHandle_t h, int m, int n, int k, float* a, int lda, const float* tau, float* work, int lwork,
                  int* info) {
  check(cusolverDnSorgqr(h, m, n, k, a, lda, tau, work, lwork, info), "cusolverDnSorgqr");
}
inline void orgqr(cusolverDnHandle_t h, int m, int n, int k, double* a, int lda, const double* tau, double* work,
                  int lwork, int* info) {
  check(cusolverDnDorgqr(h, m, n, k, a, lda, tau, work, lwork, info), "cusolverDnDorgqr");
}
inline void potrf(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, float* a, int lda, float* work, int lwork, int* info) {
  check(cusolverDnSpotrf(h, uplo, n, a, lda, work, lwork, info), "cusolverDnSpotrf");
}
inline void potrf(cusolverDnHandle_t h, cublasFillMode_t uplo, int n, double* a, int lda, double* work, int lwork,
                  int* info) {
  check(cusolverDnDpotrf(h, uplo, n, a, lda, work, lwork, info), "cusolverDnDpotrf");
}

// ---- cusolverDnXgesvdr (64-bit API, randomized top-k SVD) --------------------------------------
/// The cusolverDnParams_t that the 64-bit cuSOLVER API takes (default settings), destroyed on exit.
class SolverParams {
 public:
  SolverParams() { check(cusolverDnCreateParams(&params_), "cusolverDnCreateParams"); }
  ~SolverParams() { (void)cusolverDnDestroyParams(params_); }
  SolverParams(const SolverParams&) = delete;
  SolverParams& operator=(const SolverParams&) = delete;
  cusolverDnParams_t get() const { return params_; }

 private:
  cusolverDnParams_t params_ = nullptr;
};

template <class T>
constexpr cudaDataType real_type() {
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
}

/// Device and host workspace bytes of gesvdr below (jobu = jobv = 'S').
template <class T>
std::pair<std::size_t, std::size_t> gesvdr_workspace(cusolverDnHandle_t h, const SolverParams& params, std::int64_t m,
                                                     std::int64_t n, std::int64_t k, std::int64_t p, std::int64_t niters,
                                                     const T* a, std::int64_t lda, const T* s, const T* u, std::int64_t ldu,
                                                     const T* v, std::int64_t ldv) {
  std::size_t device_bytes = 0, host_bytes = 0;
  check(cusolverDnXgesvdr_bufferSize(h, params.get(), 'S', 'S', m, n, k, p, niters, real_type<T>(), a, lda, real_type<T>(), s,
                                     real_type<T>(), u, ldu, real_type<T>(), v, ldv, real_type<T>(), &device_bytes,
                                     &host_bytes),
        "cusolverDnXgesvdr_bufferSize");
  return {device_bytes, host_bytes};
}

/// The k largest singular triplets of the column-major m x n matrix a (destroyed): s (k values,
/// descending), u (m x k, ldu), v (n x k, ldv; V, not V^T). Sketch of k + p columns, niters power
/// iterations.
template <class T>
void gesvdr(cusolverDnHandle_t h, const SolverParams& params, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t p,
            std::int64_t niters, T* a, std::int64_t lda, T* s, T* u, std::int64_t ldu, T* v, std::int64_t ldv,
            void* device_ws, std::size_t device_bytes, void* host_ws, std::size_t host_bytes, int* info) {
  check(cusolverDnXgesvdr(h, params.get(), 'S', 'S', m, n, k, p, niters, real_type<T>(), a, lda, real_type<T>(), s,
                          real_type<T>(), u, ldu, real_type<T>(), v, ldv, real_type<T>(), device_ws, device_bytes, host_ws,
                          host_bytes, info),
        "cusolverDnXgesvdr");
}

}  // namespace milora::cuda::lib
