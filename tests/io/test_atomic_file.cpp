// AtomicFile, the one writer of every file milora writes, on a full disk: simulated without root by
// a file-size limit (RLIMIT_FSIZE) in a child process, where a write past the limit fails with
// EFBIG as one past the end of a full disk fails with ENOSPC. The write must fail with the file's
// name, and neither the file nor its partial may be left behind.
#include <doctest/doctest.h>

#include <cstdio>
#include <functional>
#include <string>

#include "io_test_util.hpp"
#include "milora/io/atomic_file.hpp"
#include "milora/io/json.hpp"
#include "milora/io/safetensors.hpp"

using namespace milora::io;
using milora_test::ScratchDir;

namespace {

// `write` in a child process under a file-size limit; exit status 3 and the message on stderr
// when it throws io_error.
milora_test::ChildResult write_with_file_size_limit(rlim_t limit, const std::function<void()>& write) {
  return milora_test::run_child(limit, [&] {
    try {
      write();
    } catch (const milora::io_error& e) {
      std::fputs(e.what(), stderr);
      ::_exit(3);
    } catch (const std::exception& e) {
      std::fputs(e.what(), stderr);
      ::_exit(4);
    }
  });
}

nlohmann::json big_json() {
  nlohmann::json j = nlohmann::json::object();
  for (int i = 0; i < 100; ++i) j["key_" + std::to_string(i)] = std::string(20, 'x');
  return j;
}

}  // namespace

TEST_CASE("a full disk (file-size limit) fails every writer with the file's name, and nothing is published") {
  ScratchDir dir;
  const auto json = dir / "state.json";
  SUBCASE("write_json_file: the bytes a buffered stream would only flush at close") {
    const auto r = write_with_file_size_limit(1000, [&] { write_json_file(json, big_json()); });
    CAPTURE(r.err);
    CHECK(r.status == 3);
    CHECK(r.err.find("'" + json.string() + "'") != std::string::npos);
    CHECK(r.err.find("File too large") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(json));
    CHECK_FALSE(std::filesystem::exists(json.string() + ".partial"));
  }
  SUBCASE("the same write under a limit it fits in succeeds, byte for byte") {
    const auto r = write_with_file_size_limit(1 << 20, [&] { write_json_file(json, big_json()); });
    CHECK(r.status == 0);
    CHECK(read_json_file(json) == big_json());
  }
  for (const int jobs : {1, 2}) {
    CAPTURE(jobs);
    const auto st = dir / "weights.safetensors";
    const auto r = write_with_file_size_limit(3000, [&] {
      SafetensorsWriter w;
      for (int i = 0; i < 4; ++i) w.add("t" + std::to_string(i), HostMatrix<float>(16, 16), DType::F32);
      w.write(st, jobs);
    });
    CAPTURE(r.err);
    CHECK(r.status == 3);
    CHECK(r.err.find("'" + st.string() + "'") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(st));
    CHECK_FALSE(std::filesystem::exists(st.string() + ".partial"));
  }
}

TEST_CASE("AtomicFile: the old file stays until commit, and without commit the partial is removed") {
  ScratchDir dir;
  const auto path = dir / "a.txt";
  write_file_atomically(path, "old");
  {
    AtomicFile f(path);
    f.write("new bytes");
    CHECK(milora_test::read_file(path) == "old");  // not yet published
  }  // no commit: an exception on the way would end here
  CHECK(milora_test::read_file(path) == "old");
  CHECK_FALSE(std::filesystem::exists(path.string() + ".partial"));
  {
    AtomicFile f(path);
    f.write("new bytes");
    f.commit();
  }
  CHECK(milora_test::read_file(path) == "new bytes");
  // A folder that does not exist: the error names the file being created.
  CHECK_THROWS_WITH_AS(write_file_atomically(dir / "missing" / "x.json", "{}"), doctest::Contains("missing/x.json.partial"),
                       milora::io_error);
}
