// Progress: one line per adapted matrix on stderr, for tools that work through a model's weights.
#pragma once

#include <unistd.h>

#include <chrono>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>

#include "milora/core/errors.hpp"

namespace milora::tools {

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

}  // namespace milora::tools
