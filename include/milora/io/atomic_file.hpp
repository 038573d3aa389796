// AtomicFile: the one way milora writes a file. The bytes go to "<path>.partial" with write(2),
// each call checked; commit() fsync()s the file, checks close(2), renames it to <path> and fsync()s
// the folder. So a full disk (ENOSPC), a file-size limit (EFBIG) or an I/O error surfaces as an
// io_error naming the file and errno's text, never as a short or empty file under <path>: a
// buffered std::ofstream reports a failed final write only at close, which its destructor ignores.
// Without commit() (an exception, a failed write) the partial file is removed and <path>, if it
// existed, is left as it was.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "milora/core/errors.hpp"

namespace milora::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path path) : path_(std::move(path)), partial_(path_.string() + ".partial") {
    fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create", partial_);
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) {
      std::error_code ec;
      std::filesystem::remove(partial_, ec);
    }
  }

  const std::filesystem::path& path() const { return path_; }

  /// Appends `n` bytes; throws io_error (with errno's text) unless all of them were written.
  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail("cannot write", path_);  // w == 0 does not happen for regular files; treat it as an error
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }

  /// Makes the bytes durable and publishes them under path().
  void commit() {
    if (::fsync(fd_) != 0) fail("cannot write", path_);  // delayed write errors (NFS, ENOSPC on some file systems)
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("cannot write", path_);
    std::error_code ec;
    std::filesystem::rename(partial_, path_, ec);
    if (ec)
      throw io_error(detail::concat("cannot rename '", partial_.string(), "' to '", path_.string(), "': ", ec.message()));
    committed_ = true;
    sync_folder(path_.has_parent_path() ? path_.parent_path() : std::filesystem::path("."));
  }

  /// fsync()s a folder, so that a rename into it survives a power cut.
  static void sync_folder(const std::filesystem::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) fail("cannot open folder", dir);
    const int rc = ::fsync(fd);
    const int saved = errno;
    ::close(fd);
    errno = saved;
    if (rc != 0) fail("cannot sync folder", dir);
  }

 private:
  [[noreturn]] static void fail(const char* what, const std::filesystem::path& p) {
    const int e = errno;
    throw io_error(detail::concat(what, " '", p.string(), "': ", std::strerror(e),
                                  e == EFBIG || e == ENOSPC || e == EDQUOT ? " (disk full or file-size limit)" : ""));
  }

  std::filesystem::path path_, partial_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes `bytes` to `path` through an AtomicFile.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

/// Copies the file `from` to `to` through an AtomicFile (a model folder's config and tokenizer files).
inline void copy_file_atomically(const std::filesystem::path& from, const std::filesystem::path& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) throw io_error(detail::concat("cannot open '", from.string(), "': ", std::strerror(errno)));
  try {
    AtomicFile out(to);
    char buffer[1 << 16];
    for (;;) {
      const ::ssize_t n = ::read(in, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw io_error(detail::concat("cannot read '", from.string(), "': ", std::strerror(errno)));
      if (n == 0) break;
      out.write(buffer, static_cast<std::size_t>(n));
    }
    out.commit();
  } catch (...) {
    ::close(in);
    throw;
  }
  ::close(in);
}

}  // namespace milora::io
