// The job a tool runs in: alone, or as one rank of several when launched by mpirun or srun with more
// than one process (docs/distributed.md).
//
//   milora::tools::run_as_rank("milora-init", [&](milora::tools::Job job) { ... });
//
// With several ranks (and a build with MPI: the tool links milora::mpi) the body gets the job's
// MPI communicator; a rank whose body throws ends the whole job (MPI_Abort) after printing
// "<tool>: rank R of N: error: ...", so the others never wait forever in their next collective.
// Launched with several ranks by a build without MPI, the tool refuses rather than let every rank
// do the whole job alone.
#pragma once

#include <exception>
#include <optional>

#include "milora/core/errors.hpp"
#include "milora/distributed/communicator.hpp"
#if defined(MILORA_HAS_MPI)
#include "milora/distributed/mpi.hpp"
#endif

namespace milora::tools {

struct Job {
  int rank = 0, size = 1;
#if defined(MILORA_HAS_MPI)
  milora::distributed::MpiCommunicator* mpi = nullptr;  // set when size > 1
#endif
};

template <class Body>
void run_as_rank(const char* tool, Body body) {
#if defined(MILORA_HAS_MPI)
  std::optional<milora::distributed::MpiCommunicator> mpi;
  Job job;
  if (milora::distributed::launched_with_several_ranks()) {
    mpi.emplace();
    job = {mpi->rank(), mpi->size(), &*mpi};
  }
  try {
    body(job);
  } catch (const std::exception& e) {
    if (job.size > 1) mpi->abort(detail::concat(tool, ": rank ", job.rank, " of ", job.size, ": error: ", e.what()));
    throw;
  }
#else
  if (milora::distributed::launched_with_several_ranks())
    throw value_error(detail::concat(tool, " was launched with several ranks, but this build has no MPI (install libopenmpi-dev "
                                           "and rebuild): each rank would do the whole job alone"));
  body(Job{});
#endif
}

}  // namespace milora::tools
