// The communicator policy over MPI (milora/distributed/mpi.hpp) and the trainer's replicas over it
// (examples/llama/data_parallel.hpp), run by CTest as `mpirun -np 2` (every rank runs every case):
// sums and broadcasts of float and double buffers against the values each rank can compute alone,
// the adapters' gradients summed as one bucket, the checksum comparison naming the rank that
// differs, and RankBatches handing micro-batch k to rank k mod N.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "llama/data.hpp"
#include "llama/data_parallel.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/distributed/mpi.hpp"

namespace {

using milora::distributed::MpiCommunicator;
using BE = milora::EigenBackend<float>;

MpiCommunicator& world() {
  static MpiCommunicator comm;  // MPI lives as long as the test program
  return comm;
}

}  // namespace

TEST_CASE("MpiCommunicator: all_reduce_sum, all_reduce_mean and broadcast of float and double buffers, on 2 ranks") {
  auto& comm = world();
  REQUIRE(comm.size() == 2);
  const int r = comm.rank();
  std::vector<double> d = {1.0 + r, 10.0 * r, -0.5};
  comm.all_reduce_sum(d.data(), d.size());
  CHECK(d == std::vector<double>{3.0, 10.0, -1.0});
  std::vector<float> f = {float(r), 2.0f};
  milora::distributed::all_reduce_mean(comm, f.data(), f.size());
  CHECK(f == std::vector<float>{0.5f, 2.0f});
  std::vector<double> b = {double(r) + 7, double(r) * 3};
  comm.broadcast(b.data(), b.size(), 1);
  CHECK(b == std::vector<double>{8.0, 3.0});
  comm.barrier();
  milora::distributed::SingleProcess one;
  CHECK(one.size() == 1);
  one.all_reduce_sum(d.data(), d.size());  // the identity
  CHECK(d[0] == 3.0);
}

TEST_CASE("CommunicatorReplicas: the gradients of every parameter summed as one bucket; the checksum names the rank that differs") {
  auto& comm = world();
  const int r = comm.rank();
  BE::matrix a = BE::matrix::Constant(2, 3, 1.0f), ga = BE::matrix::Constant(2, 3, float(r + 1));
  BE::matrix b = BE::matrix::Constant(4, 1, 2.0f), gb(4, 1);
  gb << 1, 2, 3, float(4 * r);
  const std::vector<milora::Parameter<BE>> params = {{"lora_A", a, ga}, {"lora_B", b, gb}};
  llama::CommunicatorReplicas<BE, MpiCommunicator> replicas(comm);
  replicas.sum_gradients(params);
  CHECK(ga.isApprox(BE::matrix::Constant(2, 3, 3.0f)));
  BE::matrix want(4, 1);
  want << 2, 4, 6, 4;
  CHECK(gb == want);
  CHECK(llama::ranks_differing<BE>(replicas, params).empty());
  if (r == 1) b(3, 0) = std::nextafter(2.0f, 3.0f);  // one bit of one parameter
  CHECK(llama::ranks_differing<BE>(replicas, params) == std::vector<int>{1});
}

TEST_CASE("RankBatches: rank r of N reads micro-batches r, r + N, ... of the global stream; the cursor stays global") {
  auto& comm = world();
  std::vector<llama::Token> tokens(200);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = llama::Token(i);
  llama::DataLoader global(tokens, 1, 4);
  llama::RankBatches mine(std::make_unique<llama::DataLoader>(tokens, 1, 4), comm.rank(), comm.size());
  std::vector<llama::Token> in, tg, gin, gtg;
  for (int step = 0; step < 3; ++step) {
    mine.next(in, tg);
    for (int k = 0; k < comm.size(); ++k) {
      global.next(gin, gtg);
      if (k == comm.rank()) CHECK(in == gin);
    }
    CHECK(mine.cursor() == global.cursor());
  }
}
