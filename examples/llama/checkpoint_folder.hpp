// CheckpointFolder: the --out folder of a fine-tuning run, claimed before any work. Trainer writes
// checkpoint-<N> there through ".checkpoint-<N>.tmp" (and, when a step is saved again, moves the
// old folder to ".checkpoint-<N>.old" for a moment); a run that was killed can leave either behind.
// Claiming the folder
//   - creates it and proves it writable (a file written and removed), so a bad --out fails in the
//     first second, not at the first checkpoint minutes later;
//   - takes an exclusive lock on ".lock" (flock, released by the kernel when the process ends,
//     however it ends), so two runs never write the same folder, and what is left from earlier
//     runs is known to be stale;
//   - restores a ".checkpoint-<N>.old" whose checkpoint-<N> is missing (a kill between the two
//     renames) and removes the other leftovers.
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "milora/core/errors.hpp"
#include "milora/io/atomic_file.hpp"

namespace llama {

class CheckpointFolder {
 public:
  explicit CheckpointFolder(const std::filesystem::path& out) : dir_(out) {
    namespace fs = std::filesystem;
    using milora::detail::concat;
    std::error_code ec;
    created_ = !fs::exists(dir_, ec);
    fs::create_directories(dir_, ec);
    if (ec || !fs::is_directory(dir_))
      throw milora::io_error(concat("cannot create the output folder '", dir_.string(), "'", ec ? ": " + ec.message() : ""));
    milora::io::write_file_atomically(dir_ / ".write-test", "");  // throws naming the folder when it is not writable
    fs::remove(dir_ / ".write-test", ec);
    const fs::path lock = dir_ / ".lock";
    fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw milora::io_error(concat("cannot open '", lock.string(), "': ", std::strerror(errno)));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      ::close(fd_);
      throw milora::io_error(e == EWOULDBLOCK ? concat("another process is writing checkpoints to '", dir_.string(), "' (", lock.string(), " is locked)")
                                              : concat("cannot lock '", lock.string(), "': ", std::strerror(e)));
    }
    recover_leftovers();
  }
  CheckpointFolder(const CheckpointFolder&) = delete;
  CheckpointFolder& operator=(const CheckpointFolder&) = delete;
  ~CheckpointFolder() {
    // A folder this run created and never wrote a checkpoint to is removed again (a run that fails
    // early leaves nothing behind); otherwise .lock stays: removing it would race a new run's lock.
    std::error_code ec;
    if (created_ && std::filesystem::exists(dir_ / ".lock", ec)) {
      bool only_lock = true;
      for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) only_lock = only_lock && e.path().filename() == ".lock";
      if (only_lock && !ec) {
        std::filesystem::remove(dir_ / ".lock", ec);
        std::filesystem::remove(dir_, ec);
      }
    }
    ::close(fd_);
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  void recover_leftovers() {
    namespace fs = std::filesystem;
    std::vector<fs::path> entries;  // listed first: the loop renames and removes entries
    for (const auto& e : fs::directory_iterator(dir_)) entries.push_back(e.path());
    for (const auto& path : entries) {
      const std::string name = path.filename().string();
      const auto ends_with = [&](std::string_view s) { return name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
      if (name.rfind(".checkpoint-", 0) != 0) continue;
      if (ends_with(".old")) {
        const fs::path checkpoint = dir_ / name.substr(1, name.size() - 5);  // ".checkpoint-N.old" -> "checkpoint-N"
        if (!fs::exists(checkpoint)) {
          fs::rename(path, checkpoint);
          continue;
        }
      } else if (!ends_with(".tmp")) {
        continue;
      }
      fs::remove_all(path);
    }
  }

  std::filesystem::path dir_;
  int fd_ = -1;
  bool created_ = false;
};

}  // namespace llama
