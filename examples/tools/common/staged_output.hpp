// StagedOutput: a tool's output folder is written under a temporary name and renamed into place by
// commit(), so that nothing partial is ever found under the final name: a tool that fails (or is
// killed) leaves the name free for the next attempt.
#pragma once

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "milora/core/errors.hpp"

namespace milora::tools {

/// Whether process `pid` is alive (or exists under another user): a staging folder named after it
/// may still be written to.
inline bool process_alive(long pid) { return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM); }

/// This machine's name, which staging folders carry: on a shared file system, a folder of a live
/// process on another machine must not be taken for a dead one's.
inline std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "host";
  std::string s(name);
  for (char& c : s)
    if (c == '/' || c == '\0') c = '_';
  return s.empty() ? "host" : s;
}

/// Outputs are written into "<out>.partial-<host>-<pid>" and renamed to <out> by commit(); if the tool
/// fails first, the destructor removes the staging folder and the parent folders it created.
/// Everything that can be checked before the work is checked here: <out> must not exist (not even
/// as a dangling symlink, which only the final rename would find) and its folder must accept a new
/// folder. Staging folders "<out>.partial-<host>-<pid>" of this machine's processes that no longer
/// run (a killed tool's) are removed; those of a live process, or of another machine, are left alone.
class StagedOutput {
 public:
  explicit StagedOutput(const std::filesystem::path& out) : final_(std::filesystem::absolute(out).lexically_normal()) {
    namespace fs = std::filesystem;
    if (!final_.has_filename()) final_ = final_.parent_path();  // "out/" names the folder "out"
    std::error_code ec;
    if (fs::symlink_status(final_, ec).type() != fs::file_type::not_found)
      throw io_error(detail::concat("output '", out.string(), "' already exists; remove it or choose another --out"));
    const std::string prefix = final_.filename().string() + ".partial-" + host_name() + "-";
    if (fs::is_directory(final_.parent_path(), ec))
      for (const auto& e : fs::directory_iterator(final_.parent_path(), ec)) {
        const std::string name = e.path().filename().string();
        if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
        const std::string pid = name.substr(prefix.size());
        if (pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
        if (!process_alive(std::stol(pid))) fs::remove_all(e.path(), ec);
      }
    staging_ = final_.parent_path() / (prefix + std::to_string(::getpid()));
    for (auto p = final_.parent_path(); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
      created_.push_back(p);
      if (p == p.root_path()) break;
    }
    fs::remove_all(staging_, ec);
    if (!fs::create_directories(staging_, ec) && ec) {
      remove_created();
      throw io_error(detail::concat("cannot create the output folder '", staging_.string(), "': ", ec.message()));
    }
  }
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;
  ~StagedOutput() {
    if (committed_) return;
    std::error_code ec;
    std::filesystem::remove_all(staging_, ec);
    remove_created();
  }
  const std::filesystem::path& dir() const { return staging_; }
  void commit() {
    std::filesystem::rename(staging_, final_);
    committed_ = true;
  }

 private:
  void remove_created() noexcept {
    std::error_code ec;
    for (const auto& p : created_) std::filesystem::remove(p, ec);  // innermost first; only if still empty
  }

  std::filesystem::path final_, staging_;
  std::vector<std::filesystem::path> created_;  // parent folders of <out> this object created, innermost first
  bool committed_ = false;
};

}  // namespace milora::tools
