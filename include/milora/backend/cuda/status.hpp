// Every CUDA runtime, cuBLAS and cuSOLVER status goes through check(), which turns a failure into
// milora::device_error naming the call and the library's own name for the status. Kernels are
// checked with check_launch() right after their launch (cudaGetLastError), so a bad launch
// configuration is reported where it happened, not at the next synchronisation.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <climits>
#include <string>

#include "milora/core/errors.hpp"

namespace milora::cuda {

inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw device_error(detail::concat(call, " failed: ", cudaGetErrorName(status), " (",
                                      cudaGetErrorString(status), ")"));
}

inline void check(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw device_error(detail::concat(call, " failed: ", cublasGetStatusName(status), " (",
                                      cublasGetStatusString(status), ")"));
}

inline const char* status_name(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "cusolverStatus_t";
  }
}

inline void check(cusolverStatus_t status, const char* call) {
  if (status != CUSOLVER_STATUS_SUCCESS)
    throw device_error(detail::concat(call, " failed: ", status_name(status), " (", int(status), ")"));
}

/// After a kernel launch: a launch error (bad configuration, no kernel image for this GPU) is
/// reported here, naming the kernel.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

/// cuBLAS and cuSOLVER take int sizes; a larger one is refused with its name rather than wrapped.
inline int to_int(Index value, const char* what) {
  if (value < 0 || value > INT_MAX)
    throw shape_error(detail::concat(what, " = ", value, " does not fit cuBLAS/cuSOLVER's int"));
  return static_cast<int>(value);
}

}  // namespace milora::cuda
