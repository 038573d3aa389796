// NcclCommunicator: the communicator policy (communicator.hpp) over NCCL, on device buffers, for
// CudaBackend. NCCL ships with the CUDA toolkit on these machines; the CMake target milora::nccl
// (libnccl, with milora::cuda and milora::mpi) defines MILORA_HAS_NCCL.
//
// Bootstrapped over MPI, as NCCL's examples do: rank 0 creates the unique id and broadcasts it,
// every rank joins with ncclCommInitRank. Each rank takes GPU local_rank() % the host's GPUs,
// before milora's CUDA context exists (the constructor must run before the first CudaBackend
// call). The collectives are queued on the CUDA context's stream, so they follow the gradients'
// computation without a host synchronisation; barrier() waits for the stream and then for every
// rank. abort() aborts the NCCL communicator (a peer stuck in a collective returns) and then the
// MPI job.
#pragma once

#if !defined(MILORA_HAS_NCCL)
#error "milora/distributed/nccl.hpp needs NCCL and MPI: link milora::nccl"
#endif

#include <nccl.h>

#include <string>

#include "milora/backend/cuda/context.hpp"
#include "milora/distributed/mpi.hpp"

namespace milora::distributed {

class NcclCommunicator {
 public:
  static constexpr bool kDeviceBuffers = true;

  /// Joins the job of `mpi` (which must outlive this communicator).
  explicit NcclCommunicator(MpiCommunicator& mpi) : mpi_(mpi) {
    const int devices = milora::cuda::device_count();
    if (devices <= 0)
      throw milora::device_error("rank " + std::to_string(mpi.rank()) + ": NCCL needs a CUDA device: " + milora::cuda::no_device_reason());
    device_ = local_rank() % devices;
    cuda::check(cudaSetDevice(device_), "cudaSetDevice");
    ncclUniqueId id{};
    if (mpi.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, mpi.comm());
    check(ncclCommInitRank(&comm_, mpi.size(), id, mpi.rank()), "ncclCommInitRank");
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }

  int rank() const { return mpi_.rank(); }
  int size() const { return mpi_.size(); }
  int device() const { return device_; }

  template <class T>
  void all_reduce_sum(T* device_data, std::size_t n) {
    check(ncclAllReduce(device_data, device_data, n, type<T>(), ncclSum, comm_, stream()), "ncclAllReduce");
  }
  template <class T>
  void broadcast(T* device_data, std::size_t n, int root) {
    check(ncclBroadcast(device_data, device_data, n, type<T>(), root, comm_, stream()), "ncclBroadcast");
  }
  void barrier() {
    cuda::check(cudaStreamSynchronize(stream()), "cudaStreamSynchronize (NCCL barrier)");
    mpi_.barrier();
  }
  [[noreturn]] void abort(const std::string& message) {
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
    mpi_.abort(message);
  }

 private:
  static cudaStream_t stream() { return milora::cuda::context().stream(); }
  template <class T>
  static ncclDataType_t type() {
    if constexpr (std::is_same_v<T, float>) return ncclFloat32;
    else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
    else static_assert(sizeof(T) == 0, "NcclCommunicator: float or double buffers");
  }
  void check(ncclResult_t status, const char* call) const {
    if (status != ncclSuccess)
      throw communication_error("rank " + std::to_string(mpi_.rank()) + ": " + call + " failed: " + ncclGetErrorString(status));
  }

  MpiCommunicator& mpi_;
  ncclComm_t comm_ = nullptr;
  int device_ = 0;
};
static_assert(Communicator<NcclCommunicator>);

}  // namespace milora::distributed
