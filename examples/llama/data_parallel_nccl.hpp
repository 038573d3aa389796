// NcclReplicas: data_parallel.hpp's Replicas for CudaBackend over NCCL, on device buffers. The
// gradients are copied into one device bucket (cudaMemcpy2DAsync: a view may have a leading
// dimension), all-reduced in place on the CUDA context's stream, and copied back, without a trip
// through the host; the few host numbers (losses, checksums) go through a small device buffer.
#pragma once

#if !defined(MILORA_HAS_NCCL)
#error "data_parallel_nccl.hpp needs NCCL: link milora::nccl"
#endif

#include <algorithm>

#include "data_parallel.hpp"
#include "milora/backend/cuda.hpp"
#include "milora/distributed/nccl.hpp"

namespace llama {

template <class T>
class NcclReplicas final : public Replicas<milora::CudaBackend<T>> {
 public:
  using BE = milora::CudaBackend<T>;
  explicit NcclReplicas(milora::distributed::NcclCommunicator& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }

  // With one rank too: the copies and the collective run, which is how one GPU tests them.
  void sum_gradients(const std::vector<milora::Parameter<BE>>& params) override {
    std::size_t n = 0;
    for (const auto& p : params) n += std::size_t(p.grad.rows() * p.grad.cols());
    if (bucket_.size() != n) bucket_ = milora::cuda::DeviceBuffer<T>(n);
    std::size_t offset = 0;
    for (const auto& p : params) {  // gradient -> bucket
      copy_rows(p.grad.data(), std::size_t(p.grad.ld()), bucket_.data() + offset, std::size_t(p.grad.cols()), p.grad);
      offset += std::size_t(p.grad.rows() * p.grad.cols());
    }
    comm_.all_reduce_sum(bucket_.data(), n);
    offset = 0;
    for (const auto& p : params) {  // bucket -> gradient
      copy_rows(bucket_.data() + offset, std::size_t(p.grad.cols()), p.grad.data(), std::size_t(p.grad.ld()), p.grad);
      offset += std::size_t(p.grad.rows() * p.grad.cols());
    }
  }
  void sum(std::span<double> values) override {
    through_device(values, [&](double* d, std::size_t n) { comm_.all_reduce_sum(d, n); });
  }
  void broadcast(std::span<double> values) override {
    through_device(values, [&](double* d, std::size_t n) { comm_.broadcast(d, n, 0); });
  }

 private:
  static cudaStream_t stream() { return milora::cuda::context().stream(); }
  static void copy_rows(const T* from, std::size_t from_ld, T* to, std::size_t to_ld, const milora::view_t<BE>& shape) {
    milora::cuda::check(cudaMemcpy2DAsync(to, to_ld * sizeof(T), from, from_ld * sizeof(T), std::size_t(shape.cols()) * sizeof(T),
                                          std::size_t(shape.rows()), cudaMemcpyDeviceToDevice, stream()),
                        "cudaMemcpy2DAsync (gradient bucket)");
  }
  template <class F>
  void through_device(std::span<double> values, F collective) {
    if (values.empty()) return;
    milora::cuda::DeviceBuffer<double> d(values.size());
    milora::cuda::check(cudaMemcpyAsync(d.data(), values.data(), values.size_bytes(), cudaMemcpyHostToDevice, stream()),
                        "cudaMemcpyAsync (to the device)");
    collective(d.data(), values.size());
    milora::cuda::check(cudaMemcpyAsync(values.data(), d.data(), values.size_bytes(), cudaMemcpyDeviceToHost, stream()),
                        "cudaMemcpyAsync (to the host)");
    milora::cuda::context().synchronize("NcclReplicas");
  }

  milora::distributed::NcclCommunicator& comm_;
  milora::cuda::DeviceBuffer<T> bucket_;
};

}  // namespace llama
