// StagedOutput: a tool's output folder is written under a temporary name and renamed into place by
// commit(), so that nothing partial is ever found under the final name: a tool that fails (or is
// killed) leaves the name free for the next attempt.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "milora/core/errors.hpp"

namespace milora::tools {

/// Outputs are written into "<out>.partial-<pid>" and renamed to <out> by commit(); if the tool
/// fails first, the destructor removes the staging folder. <out> must not exist beforehand.
class StagedOutput {
 public:
  explicit StagedOutput(const std::filesystem::path& out) : final_(std::filesystem::absolute(out).lexically_normal()) {
    if (!final_.has_filename()) final_ = final_.parent_path();  // "out/" names the folder "out"
    if (std::filesystem::exists(final_))
      throw io_error(detail::concat("output '", out.string(), "' already exists; remove it or choose another --out"));
    staging_ = final_.parent_path() / (final_.filename().string() + ".partial-" + std::to_string(::getpid()));
    std::filesystem::remove_all(staging_);
    std::filesystem::create_directories(staging_);
  }
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;
  ~StagedOutput() {
    if (committed_) return;
    std::error_code ec;
    std::filesystem::remove_all(staging_, ec);
  }
  const std::filesystem::path& dir() const { return staging_; }
  void commit() {
    std::filesystem::rename(staging_, final_);
    committed_ = true;
  }

 private:
  std::filesystem::path final_, staging_;
  bool committed_ = false;
};

}  // namespace milora::tools
