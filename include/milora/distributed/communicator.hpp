// The communicator policy: what data-parallel training and a model's init ask of the other
// processes of a job, beside the backend policy (milora/core/backend.hpp). Written once against
// this concept, the same trainer runs in one process (SingleProcess, the default: no dependency),
// over MPI (mpi.hpp: Open MPI, host buffers) or over NCCL (nccl.hpp: device buffers, bootstrapped
// over MPI).
//
//   rank(), size()                   this process's place in the job
//   all_reduce_sum(data, n)          every rank's n numbers summed, on every rank, in place
//   broadcast(data, n, root)         root's n numbers on every rank
//   barrier()                        no rank leaves before every rank has entered
//   abort(message)                   ends the whole job from any rank (never returns)
//
// kDeviceBuffers says where `data` lives: host memory (MPI, SingleProcess) or the CUDA device's
// (NCCL). The operations are collective: every rank calls them in the same order with the same n.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdlib>
#include <iostream>
#include <stdexcept>
#include <string>

namespace milora::distributed {

/// A collective operation failed (a peer died, the transport broke): the job cannot go on.
struct communication_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class C>
concept Communicator = requires(C& c, const C& cc, float* f, double* d, std::size_t n, int root, const std::string& message) {
  { cc.rank() } -> std::convertible_to<int>;
  { cc.size() } -> std::convertible_to<int>;
  { C::kDeviceBuffers } -> std::convertible_to<bool>;
  c.all_reduce_sum(f, n);
  c.all_reduce_sum(d, n);
  c.broadcast(f, n, root);
  c.broadcast(d, n, root);
  c.barrier();
  c.abort(message);
};

/// One process: every collective is the identity.
struct SingleProcess {
  static constexpr bool kDeviceBuffers = false;
  int rank() const { return 0; }
  int size() const { return 1; }
  template <class T>
  void all_reduce_sum(T*, std::size_t) {}
  template <class T>
  void broadcast(T*, std::size_t, int) {}
  void barrier() {}
  [[noreturn]] void abort(const std::string& message) {
    std::cerr << message << std::endl;
    std::exit(1);
  }
};
static_assert(Communicator<SingleProcess>);

/// data = the mean over the ranks of data (host buffers; divide device buffers with the backend).
template <Communicator C, class T>
  requires(!C::kDeviceBuffers)
void all_reduce_mean(C& comm, T* data, std::size_t n) {
  comm.all_reduce_sum(data, n);
  if (comm.size() > 1)
    for (std::size_t i = 0; i < n; ++i) data[i] /= T(comm.size());
}

/// The rank among the processes of this job on this host (Open MPI's, then SLURM's variable; 0
/// when neither is set): which GPU a rank takes.
inline int local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* v = std::getenv(name); v != nullptr && *v != '\0') return std::atoi(v);
  return 0;
}

/// Whether this process was started by a launcher of several processes (mpirun, srun) with more
/// than one of them: the tools then join the job over MPI.
inline bool launched_with_several_ranks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS"})
    if (const char* v = std::getenv(name); v != nullptr && std::atoi(v) > 1) return true;
  return false;
}

}  // namespace milora::distributed
