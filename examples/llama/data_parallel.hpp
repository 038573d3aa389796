// Data-parallel fine-tuning: N processes (ranks) hold the same model and adapters, each computes
// the gradients of its own part of every global batch, and the gradients are summed over the
// ranks before the optimizer step, so every rank takes the same step.
//
//   Replicas<BE>            what the trainer asks of the other ranks (an interface: the trainer
//                           compiles once, whatever the transport)
//   CommunicatorReplicas    Replicas over a communicator policy on host buffers (MPI): the
//                           adapters' gradients as one flat bucket per step (NCCL, on device
//                           buffers: NcclReplicas, data_parallel_nccl.hpp)
//   RankBatches             rank r's share of a global stream of micro-batches: micro-batch k goes
//                           to rank k mod N, so N ranks with --accum A see the micro-batches one
//                           rank sees with --accum N*A, and the data cursor stays global
//   parameters_checksum     a hash of the trained parameters' bytes, compared between ranks
//
// docs/distributed.md has the launch, the equality and the cost model.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "batches.hpp"
#include "milora/core/parameter.hpp"
#include "milora/distributed/communicator.hpp"

namespace llama {

/// What the trainer asks of the other ranks of its job; single process when it has none.
template <milora::Backend BE>
class Replicas {
 public:
  virtual ~Replicas() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// Every rank's gradients of `params` summed, on every rank.
  virtual void sum_gradients(const std::vector<milora::Parameter<BE>>& params) = 0;
  /// Every rank's numbers summed, on every rank (host numbers: losses, flags).
  virtual void sum(std::span<double> values) = 0;
  /// Rank 0's numbers on every rank.
  virtual void broadcast(std::span<double> values) = 0;

 protected:
  Replicas() = default;
  Replicas(const Replicas&) = default;
  Replicas& operator=(const Replicas&) = default;
};

/// FNV-1a over the bytes of every parameter (in order): equal on two ranks iff, but for a 2^-64
/// chance, their parameters are bit for bit the same.
template <milora::Backend BE>
std::uint64_t parameters_checksum(const std::vector<milora::Parameter<BE>>& params) {
  std::uint64_t h = 1469598103934665603ull;
  for (const auto& p : params) {
    const auto host = BE::to_host(p.value);
    const auto* bytes = reinterpret_cast<const unsigned char*>(host.data());
    for (std::size_t i = 0; i < host.size() * sizeof(host[0]); ++i) h = (h ^ bytes[i]) * 1099511628211ull;
  }
  return h;
}

/// The ranks whose parameters differ from rank 0's (empty when all agree). Collective.
template <milora::Backend BE>
std::vector<int> ranks_differing(Replicas<BE>& replicas, const std::vector<milora::Parameter<BE>>& params) {
  const std::uint64_t mine = parameters_checksum<BE>(params);
  // 64 bits as two exact doubles of 32 bits each
  std::vector<double> root = {double(mine >> 32), double(mine & 0xffffffffull)};
  replicas.broadcast(root);
  std::vector<double> differs(std::size_t(replicas.size()), 0.0);
  differs[std::size_t(replicas.rank())] = (root[0] != double(mine >> 32) || root[1] != double(mine & 0xffffffffull)) ? 1 : 0;
  replicas.sum(differs);
  std::vector<int> out;
  for (std::size_t r = 0; r < differs.size(); ++r)
    if (differs[r] != 0) out.push_back(int(r));
  return out;
}

/// Replicas over a communicator policy on host buffers (MPI, SingleProcess): the gradients go
/// to the host as one flat bucket, back to back in the parameters' order, are summed there, and
/// come back. (NCCL, on device buffers: data_parallel_nccl.hpp.)
template <milora::Backend BE, milora::distributed::Communicator C>
  requires(!C::kDeviceBuffers)
class CommunicatorReplicas final : public Replicas<BE> {
 public:
  using T = milora::scalar_t<BE>;
  explicit CommunicatorReplicas(C& comm) : comm_(comm) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }

  void sum_gradients(const std::vector<milora::Parameter<BE>>& params) override {
    if (comm_.size() == 1) return;
    bucket_.clear();
    for (const auto& p : params) {
      const auto g = BE::to_host(p.grad);
      bucket_.insert(bucket_.end(), g.begin(), g.end());
    }
    comm_.all_reduce_sum(bucket_.data(), bucket_.size());
    std::size_t offset = 0;
    for (const auto& p : params) {
      const Index r = BE::rows(p.grad), c = BE::cols(p.grad);
      const std::span<const T> part(bucket_.data() + offset, std::size_t(r * c));
      BE::copy(BE::from_host(r, c, part), p.grad);
      offset += part.size();
    }
  }
  void sum(std::span<double> values) override { comm_.all_reduce_sum(values.data(), values.size()); }
  void broadcast(std::span<double> values) override { comm_.broadcast(values.data(), values.size(), 0); }

 private:
  C& comm_;
  std::vector<T> bucket_;
};

/// Rank r's share of a global stream of micro-batches (see the header comment). The cursor is the
/// global stream's: a checkpoint written by rank 0 resumes with any number of ranks.
class RankBatches final : public Batches {
 public:
  RankBatches(std::unique_ptr<Batches> global, int rank, int size) : global_(std::move(global)), rank_(rank), size_(size) {}
  void next(std::vector<Token>& inputs, std::vector<Token>& targets) override {
    for (int k = 0; k < size_; ++k) {
      if (k != rank_) {
        global_->next(skip_in_, skip_tg_);
        continue;
      }
      global_->next(inputs, targets);
      const auto s = global_->segment_starts();
      segments_.assign(s.begin(), s.end());
    }
  }
  std::span<const std::int32_t> segment_starts() const override { return segments_; }
  std::size_t cursor() const override { return global_->cursor(); }
  void set_cursor(std::size_t cursor) override { global_->set_cursor(cursor); }
  Index batch() const override { return global_->batch(); }
  Index seq() const override { return global_->seq(); }

 private:
  std::unique_ptr<Batches> global_;
  int rank_, size_;
  std::vector<Token> skip_in_, skip_tg_;
  std::vector<std::int32_t> segments_;
};

}  // namespace llama
