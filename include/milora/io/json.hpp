// JSON from outside: parsed with nlohmann/json, but strictly. nlohmann keeps the last of two equal
// keys; a config or checkpoint header that two readers would interpret differently is refused here.
#pragma once

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "milora/core/errors.hpp"
#include "milora/io/atomic_file.hpp"

namespace milora::io {

/// Parses [first, last) as JSON, refusing duplicate keys at any depth. `where` starts every
/// message ("config.json in 'dir'", "safetensors file 'x'").
inline nlohmann::json parse_json_strict(const char* first, const char* last, const std::string& where) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty()) {
      if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
        duplicate = parsed.get<std::string>();
    }
    return true;
  };
  // nlohmann's lexer takes a NUL byte for the end of the input and would ignore whatever follows
  // it; JSON text can hold no raw NUL (strings escape it), so one anywhere is an error, as in
  // Python's json and serde_json.
  if (const void* nul = std::memchr(first, 0, static_cast<std::size_t>(last - first)))
    throw format_error(detail::concat(where, ": not valid JSON: a NUL byte at offset ", static_cast<const char*>(nul) - first));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(first, last, callback);
  } catch (const nlohmann::json::exception& e) {
    throw format_error(detail::concat(where, ": not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) throw format_error(detail::concat(where, ": the key '", duplicate, "' appears twice"));
  return j;
}

/// Reads and strictly parses a JSON file; the top level must be an object.
inline nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error(detail::concat("cannot open '", path.string(), "'"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string where = detail::concat("'", path.string(), "'");
  nlohmann::json j = parse_json_strict(text.data(), text.data() + text.size(), where);
  if (!j.is_object()) throw format_error(detail::concat(where, ": top level is not a JSON object"));
  return j;
}

/// Writes `j` indented, atomically (AtomicFile: every write checked, fsync, rename).
inline void write_json_file(const std::filesystem::path& path, const nlohmann::json& j) {
  write_file_atomically(path, j.dump(2) + '\n');
}

}  // namespace milora::io
