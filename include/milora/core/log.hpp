// One-line log messages for events a user should know about but that are not errors, e.g. a fast
// solver falling back to the exact one. The sink is a process-wide function, std::clog by default;
// frameworks route it into their own logging, tests capture it.
#pragma once

#include <functional>
#include <iostream>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace milora {

using LogSink = std::function<void(std::string_view)>;

namespace detail {
struct LogState {
  std::mutex mutex;
  LogSink sink = [](std::string_view line) { std::clog << "milora: " << line << '\n'; };
};
inline LogState& log_state() {
  static LogState state;
  return state;
}
}  // namespace detail

/// Replaces the sink; returns the previous one (so a caller can restore it).
inline LogSink set_log_sink(LogSink sink) {
  auto& s = detail::log_state();
  std::lock_guard lock(s.mutex);
  return std::exchange(s.sink, std::move(sink));
}

inline void log(std::string_view line) {
  auto& s = detail::log_state();
  std::lock_guard lock(s.mutex);
  if (s.sink) s.sink(line);
}

}  // namespace milora
