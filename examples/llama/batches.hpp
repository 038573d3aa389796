// What the trainer reads its micro-batches from: a token stream (DataLoader, data.hpp) or examples,
// one per row or packed (ExampleLoader, instruction_data.hpp).
//
// An interface rather than a template argument of the trainer, so that Trainer<Model> (its step,
// checkpoints and resume) is compiled once per model type, not once per kind of data: one virtual
// call per micro-batch is nothing beside a forward and backward (docs/design.md, "Build time").
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels.hpp"  // Token, Index

namespace llama {

class Batches {
 public:
  virtual ~Batches() = default;
  /// The next batch: batch() * seq() inputs and as many targets (row-major).
  virtual void next(std::vector<Token>& inputs, std::vector<Token>& targets) = 0;
  /// The last batch's segment starts when its rows pack several examples (AttentionShape::
  /// segment_start), else empty.
  virtual std::span<const std::int32_t> segment_starts() const { return {}; }
  /// Where the next batch starts, which a checkpoint stores and a resume restores.
  virtual std::size_t cursor() const = 0;
  virtual void set_cursor(std::size_t cursor) = 0;
  virtual Index batch() const = 0;
  virtual Index seq() const = 0;

 protected:
  Batches() = default;
  Batches(const Batches&) = default;
  Batches(Batches&&) = default;
  Batches& operator=(const Batches&) = default;
  Batches& operator=(Batches&&) = default;
};

}  // namespace llama
