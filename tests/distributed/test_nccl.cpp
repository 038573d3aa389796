// NcclCommunicator and NcclReplicas (data-parallel gradients on the GPUs): every rank's device
// buffer summed and broadcast, and the adapters' gradients (CudaBackend<float>, one of them a view
// whose rows are further apart than its columns) summed as one device bucket, against the values
// each rank computes alone. One process per GPU: CTest runs it as one rank (a single-rank NCCL
// communicator still runs every copy and collective); `mpirun -np <GPUs>` runs the multi-GPU case.
// Without a GPU every case exits with CTest's skip code (tests/cuda/test_main.cpp).
#include <doctest/doctest.h>

#include <vector>

#include "llama/data_parallel_nccl.hpp"

namespace {

using GB = milora::CudaBackend<float>;

struct Ranks {
  milora::distributed::MpiCommunicator mpi;
  milora::distributed::NcclCommunicator nccl{mpi};
};
Ranks& ranks() {
  static Ranks r;  // MPI and NCCL live as long as the test program
  return r;
}

}  // namespace

TEST_CASE("NcclCommunicator: sums and broadcasts of float and double device buffers") {
  auto& nccl = ranks().nccl;
  const int r = nccl.rank(), n = nccl.size();
  auto m = GB::from_host(1, 3, std::vector<float>{float(1 + r), 2.0f, float(3 * r)});
  nccl.all_reduce_sum(m.data(), 3);
  const float sum_r = float(n * (n - 1) / 2);
  CHECK(GB::to_host(m) == std::vector<float>{float(n) + sum_r, 2.0f * float(n), 3 * sum_r});
  using DB = milora::CudaBackend<double>;
  auto d = DB::from_host(1, 2, std::vector<double>{double(r), 7.0 + r});
  nccl.broadcast(d.data(), 2, n - 1);
  CHECK(DB::to_host(d) == std::vector<double>{double(n - 1), 7.0 + (n - 1)});
  nccl.barrier();
}

TEST_CASE("NcclReplicas: the adapters' gradients summed as one device bucket (a strided view among them), host numbers "
          "through the device, the ranks' checksums equal") {
  auto& nccl = ranks().nccl;
  const int r = nccl.rank(), n = nccl.size();
  auto a = GB::from_host(2, 3, std::vector<float>(6, 1.0f));
  auto ga = GB::from_host(2, 3, std::vector<float>{1, 2, 3, 4, 5, float(r)});
  auto wide = GB::from_host(2, 5, std::vector<float>{9, 9, 9, 9, 9, 9, 9, 9, 9, 9});
  auto b = GB::from_host(2, 2, std::vector<float>(4, 2.0f));
  auto gb = GB::block(wide, 0, 1, 2, 2);  // rows 5 floats apart: the bucket's 2-D copies
  GB::copy(GB::from_host(2, 2, std::vector<float>{1, -1, float(r), 0.5f}), gb);
  const std::vector<milora::Parameter<GB>> params = {{"lora_A", a, ga}, {"lora_B", b, gb}};
  llama::NcclReplicas<float> replicas(nccl);
  replicas.sum_gradients(params);
  const float sum_r = float(n * (n - 1) / 2), fn = float(n);
  CHECK(GB::to_host(ga) == std::vector<float>{fn, 2 * fn, 3 * fn, 4 * fn, 5 * fn, sum_r});
  CHECK(GB::to_host(wide) == std::vector<float>{9, fn, -fn, 9, 9, 9, sum_r, 0.5f * fn, 9, 9});  // the rest untouched
  std::vector<double> host = {double(r), 1.0};
  replicas.sum(host);
  CHECK(host == std::vector<double>{double(sum_r), double(n)});
  CHECK(llama::ranks_differing<GB>(replicas, params).empty());
}
