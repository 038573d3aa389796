// The suite's main: doctest's, failing when the filters select nothing (tests/doctest_main.hpp).
#include "doctest_main.hpp"

int main(int argc, char** argv) { return test::run_doctest(argc, argv); }
