// MpiCommunicator: the communicator policy (communicator.hpp) over MPI, on host buffers. Open MPI
// from Debian (libopenmpi-dev); the CMake target milora::mpi (FindMPI's MPI::MPI_CXX) defines
// MILORA_HAS_MPI and is created only where MPI is found.
//
// The communicator owns the job's MPI: the first one made initialises MPI (threads: funneled, as
// only the thread that made it communicates) and the last one destroyed finalises it. It works on
// its own duplicate of MPI_COMM_WORLD with errors returned, not fatal, so that a failed collective
// is a communication_error naming the call; abort() is MPI_Abort, which takes every rank down
// (mpirun then exits non-zero).
#pragma once

#if !defined(MILORA_HAS_MPI)
#error "milora/distributed/mpi.hpp needs MPI: link milora::mpi (Debian: libopenmpi-dev)"
#endif

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <iostream>
#include <string>

#include "milora/distributed/communicator.hpp"

namespace milora::distributed {

class MpiCommunicator {
 public:
  static constexpr bool kDeviceBuffers = false;

  MpiCommunicator() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  ~MpiCommunicator() {
    MPI_Comm_free(&comm_);
    if (owns_mpi_) {
      int finalised = 0;
      MPI_Finalized(&finalised);
      if (!finalised) MPI_Finalize();
    }
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm comm() const { return comm_; }

  template <class T>
  void all_reduce_sum(T* data, std::size_t n) {
    for_chunks(n, [&](std::size_t offset, int count) {
      check(MPI_Allreduce(MPI_IN_PLACE, data + offset, count, type<T>(), MPI_SUM, comm_), "MPI_Allreduce");
    });
  }
  template <class T>
  void broadcast(T* data, std::size_t n, int root) {
    for_chunks(n, [&](std::size_t offset, int count) { check(MPI_Bcast(data + offset, count, type<T>(), root, comm_), "MPI_Bcast"); });
  }
  void barrier() { check(MPI_Barrier(comm_), "MPI_Barrier"); }
  /// Prints `message` and ends every rank of the job with exit status 1.
  [[noreturn]] void abort(const std::string& message) {
    std::cerr << message << std::endl;
    MPI_Abort(comm_, 1);
    std::abort();  // MPI_Abort does not return; if an implementation did, this rank still ends
  }

 private:
  template <class T>
  static MPI_Datatype type() {
    if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
    else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
    else static_assert(sizeof(T) == 0, "MpiCommunicator: float or double buffers");
  }
  // MPI counts are int: a buffer of more than INT_MAX numbers goes in pieces.
  template <class F>
  static void for_chunks(std::size_t n, F f) {
    for (std::size_t offset = 0; offset < n;) {
      const std::size_t count = std::min<std::size_t>(n - offset, INT_MAX);
      f(offset, int(count));
      offset += count;
    }
  }
  void check(int status, const char* call) const {
    if (status == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    MPI_Error_string(status, text, &length);
    throw communication_error("rank " + std::to_string(rank_) + ": " + call + " failed: " + std::string(text, std::size_t(length)));
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool owns_mpi_ = false;
};
static_assert(Communicator<MpiCommunicator>);

}  // namespace milora::distributed
