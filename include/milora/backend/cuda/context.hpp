// The per-thread CUDA context of CudaBackend: one stream and the cuBLAS and cuSOLVER handles bound
// to it, created on first use on the thread's current device (cudaSetDevice before the first call
// picks another one).
//
// Why per thread: CudaBackend has static members only (the Backend concept), so the handles cannot
// live in an object the caller passes. cuBLAS and cuSOLVER handles must not be shared between
// threads without locking, and a stream per thread lets two threads' adapters overlap. All work of
// one thread is ordered on its stream; results reach the host only through to_host (and the few
// scalars all_finite / squared_norm / a solver's info return), which synchronise that stream.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "milora/backend/cuda/status.hpp"

namespace milora::cuda {

/// Number of CUDA devices; 0 when there is no driver or no device (never throws).
inline int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error for later calls
    return 0;
  }
  return n;
}

/// Why there is no usable device, for skip messages and errors; empty when there is one.
inline std::string no_device_reason() {
  int n = 0;
  const cudaError_t status = cudaGetDeviceCount(&n);
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    return detail::concat("cudaGetDeviceCount: ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
  }
  return n == 0 ? std::string("cudaGetDeviceCount: 0 devices") : std::string();
}

class Context {
 public:
  Context() {
    if (const std::string why = no_device_reason(); !why.empty())
      throw device_error("CudaBackend needs a CUDA device: " + why);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    try {
      enable_stream_ordered_memory();
      check(cublasCreate(&blas_), "cublasCreate");
      check(cublasSetStream(blas_, stream_), "cublasSetStream");
      check(cusolverDnCreate(&solver_), "cusolverDnCreate");
      check(cusolverDnSetStream(solver_, stream_), "cusolverDnSetStream");
    } catch (...) {
      release();
      throw;
    }
  }
  ~Context() { release(); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  cudaStream_t stream() const { return stream_; }
  /// Whether device memory comes from the device's stream-ordered pool (cudaMallocAsync on this
  /// thread's stream; every device since Pascal offers it), else from plain cudaMalloc.
  bool stream_ordered_memory() const { return pooled_; }
  /// True until this context is destroyed (its thread exits): a buffer freed after that is freed with
  /// cudaFree, its stream being gone (milora/backend/cuda/memory.hpp).
  std::shared_ptr<const std::atomic<bool>> alive() const { return alive_; }
  cublasHandle_t blas() const { return blas_; }
  cusolverDnHandle_t solver() const { return solver_; }

  /// Float matrix products (cublasSgemm and the other single-precision routines of this handle) on
  /// tensor cores in TF32: inputs rounded to a 10-bit mantissa, float accumulation. Several times
  /// cuBLAS's float rate on an A100 / H100 / H200, at ~1e-3 relative error per product instead of
  /// ~1e-7. Off by default, as in PyTorch (torch.backends.cuda.matmul.allow_tf32). Double products
  /// are not affected. Turn it on for training, after SVD-based initialisation: a randomized SVD in
  /// float would lose its accuracy to it.
  void allow_tf32(bool on) {
    check(cublasSetMathMode(blas_, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    tf32_ = on;
  }
  bool tf32() const { return tf32_; }

  /// Waits for the thread's queued work; a failure of an earlier asynchronous kernel surfaces here.
  void synchronize(const char* after) const {
    check(cudaStreamSynchronize(stream_), after);
  }

 private:
  // cudaFree synchronises the whole device, and a training step frees a few matrices per layer, so
  // device memory comes from the stream-ordered pool instead: cudaMallocAsync / cudaFreeAsync on this
  // thread's stream, reused in stream order without a synchronisation. The default pool would give
  // freed memory back to the driver at every synchronisation (release threshold 0); it keeps it
  // instead (threshold: unlimited), as PyTorch's caching allocator does. cudaMemPoolTrimTo gives it
  // back. The pool is the device's default one, shared by the whole process.
  void enable_stream_ordered_memory() {
    int device = 0, supported = 0;
    check(cudaGetDevice(&device), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device),
          "cudaDeviceGetAttribute (cudaDevAttrMemoryPoolsSupported)");
    if (supported == 0) return;
    cudaMemPool_t pool = nullptr;
    check(cudaDeviceGetDefaultMemPool(&pool, device), "cudaDeviceGetDefaultMemPool");
    std::uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute (cudaMemPoolAttrReleaseThreshold)");
    pooled_ = true;
  }

  void release() noexcept {
    // Finish the stream's work (its pending cudaFreeAsync included) before it goes: buffers that
    // outlive the context are then freed with a plain cudaFree.
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_);
    alive_->store(false);
    if (solver_ != nullptr) cusolverDnDestroy(solver_);
    if (blas_ != nullptr) cublasDestroy(blas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    solver_ = nullptr;
    blas_ = nullptr;
    stream_ = nullptr;
  }

  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  cusolverDnHandle_t solver_ = nullptr;
  bool tf32_ = false;
  bool pooled_ = false;
  std::shared_ptr<std::atomic<bool>> alive_ = std::make_shared<std::atomic<bool>>(true);
};

/// The calling thread's context, created on first use.
inline Context& context() {
  thread_local Context ctx;
  return ctx;
}

}  // namespace milora::cuda
