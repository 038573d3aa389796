// What the three command-line tools share: staged output folders (nothing partial is ever left
// under the final name), a per-matrix progress line, target-module matching, and a main() wrapper
// that turns any error into one line on stderr and a non-zero exit.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

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

/// "[#####.....]  3/14  model.layers.0.self_attn.q_proj  4096x4096  2.31 s" per matrix on stderr;
/// rewritten in place on a terminal, one line each otherwise (logs, CI). Each matrix's clock is its
/// own (start() returns it), and done() may be called from several threads at once (--jobs).
class Progress {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Progress(std::size_t total) : total_(total), tty_(::isatty(2) != 0) {}
  [[nodiscard]] static Clock::time_point start() { return Clock::now(); }
  void done(const std::string& what, Index rows, Index cols, Clock::time_point started) {
    const double s = std::chrono::duration<double>(Clock::now() - started).count();
    std::lock_guard lock(mutex_);
    ++count_;
    const std::size_t width = 20, filled = total_ ? width * count_ / total_ : width;
    std::ostringstream line;
    line << '[' << std::string(filled, '#') << std::string(width - filled, '.') << "] " << count_ << '/' << total_
         << "  " << what << "  " << rows << 'x' << cols << "  ";
    line.setf(std::ios::fixed);
    line.precision(2);
    line << s << " s";
    std::cerr << (tty_ ? "\r\033[K" : "") << line.str() << (tty_ && count_ < total_ ? "" : "\n") << std::flush;
  }

 private:
  std::size_t total_, count_ = 0;
  bool tty_;
  std::mutex mutex_;
};

/// The last component of a module path: "model.layers.3.mlp.up_proj" -> "up_proj".
inline std::string module_leaf(const std::string& module) {
  const auto dot = module.rfind('.');
  return dot == std::string::npos ? module : module.substr(dot + 1);
}

/// Splits "a,b,c" into its non-empty parts.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string p; std::getline(in, p, ',');)
    if (!p.empty()) parts.push_back(p);
  return parts;
}

/// Runs a tool's body: CLI11's own exits for --help and usage errors, one "<tool>: error: ..."
/// line and exit status 1 for everything else.
template <class Body>
int run_tool(const char* tool, CLI::App& app, int argc, char** argv, Body body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << (::isatty(2) ? "\n" : "") << tool << ": error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace milora::tools
