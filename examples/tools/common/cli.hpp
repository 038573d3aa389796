// What every command-line program of milora shares: a main() wrapper that adds --version, turns
// any error into one line on stderr and a non-zero exit, and the small parsers of option values
// (comma-separated lists, module paths).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "milora/core/errors.hpp"
#include "milora/version.hpp"

namespace milora::tools {

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

/// --targets: the module names, each once. Embeddings are refused: PEFT adapts an embedding with
/// lora_embedding_A / lora_embedding_B (other keys and orientation), which milora does not write,
/// so such an adapter would be one PEFT and milora-eval cannot load.
inline std::vector<std::string> parse_targets(const std::string& list) {
  const auto targets = split_list(list);
  if (targets.empty()) throw value_error("--targets is empty");
  for (std::size_t i = 0; i < targets.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j)
      if (targets[j] == targets[i]) throw value_error(detail::concat("--targets lists '", targets[i], "' twice"));
    const auto& t = targets[i];
    if (t.find("embed") != std::string::npos || t == "wte" || t == "wpe")
      throw value_error(detail::concat("--targets: '", t, "' is an embedding; milora adapts linear layers (PEFT's lora_A / lora_B)"));
  }
  return targets;
}

// Checks of numeric option values. CLI11's Range, PositiveNumber and NonNegativeNumber compare
// with < and >, which NaN passes ("--alpha nan" would reach the code as NaN), and it parses "-1"
// into an unsigned option as 2^64 - 1. These parse the text themselves and refuse both.
inline bool parse_finite_number(const std::string& text, double& x) {
  if (text.empty()) return false;
  char* end = nullptr;
  x = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(x);
}

/// A finite number in [lo, hi].
inline CLI::Validator finite_in(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double x = 0;
        if (!parse_finite_number(text, x) || x < lo || x > hi)
          return "'" + text + "' is not a finite number in [" + CLI::detail::to_string(lo) + ", " + CLI::detail::to_string(hi) + "]";
        return {};
      },
      "FINITE in [" + CLI::detail::to_string(lo) + ", " + CLI::detail::to_string(hi) + "]");
}

/// A finite number > 0.
inline const CLI::Validator finite_positive(
    [](std::string& text) -> std::string {
      double x = 0;
      return parse_finite_number(text, x) && x > 0 ? std::string() : "'" + text + "' is not a finite number > 0";
    },
    "FINITE > 0");

/// A finite number >= 0.
inline const CLI::Validator finite_non_negative(
    [](std::string& text) -> std::string {
      double x = 0;
      return parse_finite_number(text, x) && x >= 0 ? std::string() : "'" + text + "' is not a finite number >= 0";
    },
    "FINITE >= 0");

/// A whole number >= 0, written in digits (no sign, no exponent).
inline const CLI::Validator whole_number(
    [](std::string& text) -> std::string {
      const bool digits = !text.empty() && text.size() <= 19 &&
                          std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
      return digits ? std::string() : "'" + text + "' is not a whole number >= 0";
    },
    "UINT");

/// Runs a tool's body: CLI11's own exits for --help and --version ("<tool> <milora's version>"),
/// one "<tool>: error: ..." line and a non-zero exit for a usage error (CLI11's own exit code) and
/// for everything else (exit status 1).
template <class Body>
int run_tool(const char* tool, CLI::App& app, int argc, char** argv, Body body) {
  app.set_version_flag("--version", std::string(tool) + " " + MILORA_VERSION_STRING);
  app.failure_message([tool](const CLI::App*, const CLI::Error& e) {
    return std::string(tool) + ": error: " + e.what() + " (see " + tool + " --help)\n";
  });
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
