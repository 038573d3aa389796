// The main() of every test program: doctest's own, plus one rule. A run whose filters select no
// test case fails instead of passing with "0 test cases".
//
// Why: CTest runs each case by name (doctest_discover_tests). A name CMake splits (a ';' in it
// makes two CTest tests, each filtering for half a name) or a filter that matches nothing used
// to pass silently; 16 cases were "passing" that way without running.
#pragma once

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

namespace test {

/// Records how many test cases passed the filters; reports nothing.
struct SelectionListener : doctest::IReporter {
  static inline bool finished = false;
  static inline unsigned selected = 0;

  explicit SelectionListener(const doctest::ContextOptions&) {}
  void test_run_end(const doctest::TestRunStats& stats) override {
    finished = true;
    selected = stats.numTestCasesPassingFilters;
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};

/// doctest's run, failing when nothing was selected. `before_run` (may be null) is asked first
/// whether the cases can run here at all; a non-negative answer is returned as the exit status
/// (the CUDA suite answers CTest's skip code when there is no GPU).
inline int run_doctest(int argc, char** argv, int (*before_run)() = nullptr) {
  doctest::Context context(argc, argv);
  // Queries (--list-test-cases, which doctest_discover_tests runs at build time) need no device:
  // doctest marks them shouldExit() while parsing the arguments.
  if (before_run != nullptr && !context.shouldExit()) {
    const int status = before_run();
    if (status >= 0) return status;
  }
  const int status = context.run();
  if (context.shouldExit()) return status;  // --list-test-cases, --help, ...
  if (status == 0 && SelectionListener::finished && SelectionListener::selected == 0) {
    std::fprintf(stderr, "no test case matches the filters given: a misspelt or split name?\n");
    return 1;
  }
  return status;
}

}  // namespace test

REGISTER_LISTENER("selection", 1, test::SelectionListener);
