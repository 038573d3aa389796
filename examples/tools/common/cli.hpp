// What every command-line program of milora shares: a main() wrapper that adds --version, turns
// any error into one line on stderr and a non-zero exit, and the small parsers of option values
// (comma-separated lists, module paths).
#pragma once

#include <unistd.h>

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

/// Runs a tool's body: CLI11's own exits for --help, --version ("<tool> <milora's version>") and
/// usage errors, one "<tool>: error: ..." line and exit status 1 for everything else.
template <class Body>
int run_tool(const char* tool, CLI::App& app, int argc, char** argv, Body body) {
  app.set_version_flag("--version", std::string(tool) + " " + MILORA_VERSION_STRING);
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
