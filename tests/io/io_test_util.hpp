// Helpers shared by the file-layer tests: scratch folders and safetensors bytes built by hand,
// independently of milora's writer (the header is a string we type, the data raw little-endian).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

namespace milora_test {

/// A fresh folder under the system temp dir, removed (with its contents) at scope exit.
struct ScratchDir {
  std::filesystem::path path;
  ScratchDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("milora_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

/// 8-byte little-endian length, the header text, the data bytes: a safetensors file by hand.
inline std::string st_bytes(const std::string& header, const std::string& data, std::uint64_t length = UINT64_MAX) {
  const std::uint64_t n = length == UINT64_MAX ? header.size() : length;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

/// Little-endian bytes of float values, by memcpy (the host is little-endian, checked by dtype.hpp).
inline std::string f32_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

struct ChildResult {
  int status;       // exit status, or -1 when a signal ended the child
  std::string err;  // everything the child wrote to its standard error
};

/// Runs `body` in a child process whose files may not grow past `file_size_limit` bytes
/// (RLIMIT_FSIZE; a write past it fails with EFBIG, as one on a full disk fails with ENOSPC:
/// SIGXFSZ is ignored, so the child is not killed). Standard output goes to /dev/null; standard
/// error comes back through a pipe, which the limit does not apply to. `body` may exec a tool or
/// return (exit status 0); it must not return into the test framework otherwise.
inline ChildResult run_child(rlim_t file_size_limit, const std::function<void()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return {-2, "pipe failed"};
  const pid_t pid = ::fork();
  if (pid < 0) return {-2, "fork failed"};
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 2);
    ::close(fds[1]);
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::signal(SIGXFSZ, SIG_IGN);
    const rlimit rl{file_size_limit, file_size_limit};
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0) ::_exit(125);
    body();
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string err;
  char buf[4096];
  for (::ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) err.append(buf, std::size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, err};
}

/// `run_child` of the program `path` with `args`.
inline ChildResult run_program(rlim_t file_size_limit, const std::string& path, const std::vector<std::string>& args) {
  return run_child(file_size_limit, [&] {
    std::vector<char*> argv{const_cast<char*>(path.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(path.c_str(), argv.data());
    ::_exit(127);
  });
}

}  // namespace milora_test
