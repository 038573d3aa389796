// safetensors: round trips through milora's writer for every float dtype, files built by hand
// (independently of the writer) read correctly, and a corpus of malformed files each refused with
// a message naming the file, the tensor and the rule broken.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "io_test_util.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/io/safetensors.hpp"

using namespace milora::io;
using milora_test::ScratchDir;
using milora_test::st_bytes;

namespace {

HostMatrix<double> ramp(milora::Index r, milora::Index c) {
  HostMatrix<double> m(r, c);
  for (milora::Index i = 0; i < r; ++i)
    for (milora::Index j = 0; j < c; ++j) m(i, j) = std::sin(1.0 + 0.37 * double(i * c + j)) * 3.0;
  return m;
}

// Relative rounding of one conversion to `d`: half an ulp of its significand.
double unit_roundoff(DType d) {
  switch (d) {
    case DType::F16: return 0x1p-11;
    case DType::BF16: return 0x1p-8;
    case DType::F32: return 0x1p-24;
    default: return 0x1p-53;
  }
}

}  // namespace

TEST_CASE("safetensors round trip: every float dtype, shapes 2-D / 1-D / 0-D, metadata kept") {
  ScratchDir dir;
  const auto m = ramp(3, 5);
  for (DType d : {DType::F16, DType::BF16, DType::F32, DType::F64}) {
    CAPTURE(std::string(dtype_name(d)));
    SafetensorsWriter w;
    w.set_metadata({{"format", "pt"}, {"note", "round trip"}});
    w.add("w", m, d);
    w.add("bias", HostMatrix<double>(1, 5, {1, 2, 3, 4, 5}), d, std::vector<std::int64_t>{5});
    w.add("scalar", HostMatrix<double>(1, 1, {0.5}), d, std::vector<std::int64_t>{});
    w.add("empty", HostMatrix<double>(0, 4), d);
    const auto path = dir / (std::string(dtype_name(d)) + ".safetensors");
    w.write(path);
    CHECK_FALSE(std::filesystem::exists(path.string() + ".partial"));

    const SafetensorsFile f(path);
    CHECK(f.metadata().at("note") == "round trip");
    CHECK(f.tensors().size() == 4);
    CHECK(f.info("w").dtype == d);
    CHECK(f.info("w").shape == std::vector<std::int64_t>{3, 5});
    CHECK(f.info("bias").shape == std::vector<std::int64_t>{5});
    CHECK(f.info("scalar").shape.empty());
    const auto back = f.load<double>("w");
    REQUIRE(back.rows == 3);
    REQUIRE(back.cols == 5);
    for (std::size_t i = 0; i < m.data.size(); ++i)
      CHECK(std::fabs(back.data[i] - m.data[i]) <= unit_roundoff(d) * std::fabs(m.data[i]));
    const auto b = f.load<float>("bias");
    CHECK(b.rows == 1);
    CHECK(b.cols == 5);
    CHECK(b.data[4] == 5.0f);
    CHECK(f.load<float>("scalar").data.at(0) == 0.5f);
    CHECK(f.load<float>("empty").rows == 0);
    // The data region is 8-byte aligned, as the reference writer leaves it.
    const std::string bytes = milora_test::read_file(path);
    std::uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= std::uint64_t(std::uint8_t(bytes[i])) << (8 * i);
    CHECK(n % 8 == 0);
  }
}

TEST_CASE("load_bf16: a BF16 tensor's bits unchanged, other dtypes rounded to nearest even, into a backend's bf16 matrix") {
  ScratchDir dir;
  HostMatrix<double> m(3, 4);
  for (std::size_t i = 0; i < m.data.size(); ++i) m.data[i] = std::sin(1.0 + double(i)) * std::pow(10.0, double(i % 5) - 2);
  m.data[0] = 1.0 + 0x1p-8;  // a tie between two bf16 values: stays 1 (even)
  SafetensorsWriter w;
  for (DType d : {DType::BF16, DType::F32, DType::F64, DType::F16}) w.add(std::string(dtype_name(d)), m, d);
  w.add_raw("ids", DType::I64, {2}, std::as_bytes(std::span<const std::int64_t>(std::vector<std::int64_t>{1, 2})));
  const auto path = dir / "bf16.safetensors";
  w.write(path);
  const SafetensorsFile f(path);
  std::vector<std::uint16_t> want(m.data.size());
  for (std::size_t i = 0; i < want.size(); ++i) want[i] = milora::float_to_bf16(float(m.data[i]));
  for (DType d : {DType::BF16, DType::F32, DType::F64}) {
    CAPTURE(std::string(dtype_name(d)));
    const auto bits = f.load_bf16(std::string(dtype_name(d)));
    CHECK(bits.rows == 3);
    CHECK(bits.cols == 4);
    CHECK(bits.data == want);
  }
  CHECK(want[0] == 0x3f80);
  // F16 has less range and precision than float: rounding its value to bf16 again is what we get.
  const auto from_half = f.load_bf16("F16");
  const auto half = f.load<float>("F16");
  for (std::size_t i = 0; i < want.size(); ++i) CHECK(from_half.data[i] == milora::float_to_bf16(half.data[i]));
  CHECK_THROWS_AS(f.load_bf16("ids"), milora::format_error);
  CHECK_THROWS_AS(f.load_bf16("missing"), milora::format_error);

  using B = milora::EigenBackend<float>;
  const auto wb = to_backend_bf16<B>(f.load_bf16("BF16"));
  CHECK(B::bf16_rows(wb) == 3);
  CHECK(B::bf16_to_host(wb) == want);
}

TEST_CASE("a safetensors file built by hand is read correctly (unaligned offsets, mixed dtypes, I64 buffer)") {
  ScratchDir dir;
  // F16 [2] = {1.0, -2.0} (0x3c00, 0xc000), BF16 [1] = {1.0} (0x3f80), I64 [1], F32 [1, 2] = {0.25, 8}.
  const std::string data = std::string("\x00\x3c\x00\xc0", 4) + std::string("\x80\x3f", 2) + std::string(8, '\x07') +
                           milora_test::f32_bytes({0.25f, 8.0f});
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"format":"pt"},)"
      R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},"ids":{"dtype":"I64","shape":[1],"data_offsets":[6,14]},)"
      R"("f":{"dtype":"F32","shape":[1,2],"data_offsets":[14,22]}})";
  milora_test::write_file(dir / "hand.safetensors", st_bytes(header, data));
  const SafetensorsFile f(dir / "hand.safetensors");
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.load<float>("h").data == std::vector<float>{1.0f, -2.0f});
  CHECK(f.load<double>("b").data == std::vector<double>{1.0});
  CHECK(f.load<float>("f").data == std::vector<float>{0.25f, 8.0f});  // at offset 8+N+14: unaligned
  CHECK(f.raw("ids").size() == 8);
  CHECK_THROWS_WITH_AS(f.load<float>("ids"), doctest::Contains("has dtype I64, which milora cannot load"),
                       milora::format_error);
  CHECK_THROWS_WITH_AS(f.info("missing"), doctest::Contains("has no tensor 'missing'"), milora::format_error);
}

TEST_CASE("malformed safetensors files are each refused with the rule they break") {
  ScratchDir dir;
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string b = R"("b":{"dtype":"F16","shape":[1,2],"data_offsets":[8,12]})";
  const std::string data12(12, '\x01');
  struct Case {
    const char* name;
    std::string bytes;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"valid", st_bytes("{" + a + "," + b + "}", data12), nullptr},
      {"truncated", std::string("\x10\x00\x00", 3), "fewer than the 8-byte header length"},
      {"empty", std::string(), "fewer than the 8-byte header length"},
      {"header_past_end", st_bytes("{" + a + "}", std::string(8, '\0'), 1000), "runs past the end of the file"},
      {"header_too_long", st_bytes("{}", "", 1ull << 40), "exceeds the limit of 100000000 bytes"},
      {"zero_header", st_bytes("", ""), "does not start with '{'"},
      {"not_an_object", st_bytes("[1, 2, 3]", ""), "does not start with '{'"},
      {"bad_json", st_bytes(R"({"a":{"dtype":"F32",)", ""), "not valid JSON"},
      // nlohmann's lexer stops at a NUL: what follows one must not be ignored (Python's json refuses it)
      {"nul_padding", st_bytes("{" + a + "," + b + "}" + std::string(4, '\0'), data12), "a NUL byte at offset"},
      {"nul_then_json", st_bytes("{" + a + "}" + std::string(1, '\0') + "{\"b\": 1", std::string(8, '\0')), "a NUL byte at offset"},
      {"entry_not_object", st_bytes(R"({"a":1})", ""), "tensor 'a' is not an object"},
      {"unknown_dtype", st_bytes(R"({"a":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "tensor 'a' has unknown dtype 'F17'"},
      {"no_dtype", st_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')), "tensor 'a' has no dtype"},
      {"negative_dim", st_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "a shape entry must be a non-negative integer, got -2"},
      {"float_dim", st_bytes(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "a shape entry must be a non-negative integer"},
      {"numel_overflow",
       st_bytes(R"({"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "overflows 64 bits"},
      {"offsets_arity", st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", std::string(8, '\0')),
       "tensor 'a' has no data_offsets pair"},
      {"begin_after_end", st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0')),
       "has begin > end"},
      {"out_of_range", st_bytes("{" + a + "}", std::string(4, '\0')),
       "tensor 'a': data_offsets [0, 8] run past the end of the data region (4 bytes)"},
      {"wrong_size", st_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "tensor 'a': data_offsets [0, 8] hold 8 bytes but F32 [3] needs 12"},
      {"overlap",
       st_bytes("{" + a + R"(,"b":{"dtype":"F16","shape":[1,2],"data_offsets":[4,8]}})", std::string(8, '\0')),
       "tensor 'b' (bytes 4..8) overlaps tensor 'a' (bytes 0..8)"},
      {"gap", st_bytes("{" + a + R"(,"b":{"dtype":"F16","shape":[1,2],"data_offsets":[10,14]}})", std::string(14, '\0')),
       "gap: bytes 8..10 before tensor 'b'"},
      {"trailing", st_bytes("{" + a + "," + b + "}", std::string(16, '\0')), "4 trailing bytes"},
      {"duplicate_tensor", st_bytes("{" + a + "," + a + "}", std::string(8, '\0')), "the key 'a' appears twice"},
      {"duplicate_field",
       st_bytes(R"({"a":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
       "the key 'dtype' appears twice"},
      {"metadata_not_string", st_bytes(R"({"__metadata__":{"step":1}})", ""), "__metadata__ value of 'step' is not a string"},
      {"metadata_not_object", st_bytes(R"({"__metadata__":[]})", ""), "__metadata__ is not an object"},
  };
  for (const auto& c : cases) {
    CAPTURE(std::string(c.name));
    const auto path = dir / (std::string(c.name) + ".safetensors");
    milora_test::write_file(path, c.bytes);
    if (!c.message) {
      CHECK_NOTHROW(SafetensorsFile{path});
      continue;
    }
    std::string what;
    try {
      SafetensorsFile f(path);
    } catch (const milora::format_error& e) {
      what = e.what();
    }
    CAPTURE(what);
    CHECK(what.find(c.message) != std::string::npos);
    CHECK(what.find(path.string()) != std::string::npos);  // names the file
  }
}

TEST_CASE("the writer refuses bad tensors before writing anything") {
  ScratchDir dir;
  SafetensorsWriter w;
  w.add("x", HostMatrix<float>(2, 2, {1, 2, 3, 4}));
  CHECK_THROWS_AS(w.add("x", HostMatrix<float>(1, 1, {1})), milora::value_error);       // duplicate name
  CHECK_THROWS_AS(w.add("__metadata__", HostMatrix<float>(1, 1, {1})), milora::value_error);
  CHECK_THROWS_AS(w.add("y", HostMatrix<float>(2, 2, {1, 2, 3, 4}), DType::F32, std::vector<std::int64_t>{3}), milora::shape_error);
  const std::vector<std::byte> three(3);
  CHECK_THROWS_AS(w.add_raw("z", DType::F32, {1}, three), milora::shape_error);
  CHECK(w.size() == 1);  // the failed adds left nothing behind
  w.add_raw("z", DType::I8, {3}, three);
  w.write(dir / "ok.safetensors");
  CHECK(SafetensorsFile(dir / "ok.safetensors").tensors().size() == 2);
  // A fill that throws leaves neither the file nor its partial behind.
  SafetensorsWriter bad;
  bad.add_deferred("boom", DType::F32, {1}, [](std::span<std::byte>) { throw std::runtime_error("boom"); });
  CHECK_THROWS_AS(bad.write(dir / "bad.safetensors"), std::runtime_error);
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors.partial"));
}

TEST_CASE("write with jobs: fills run side by side, at most jobs at once, and the file is the same") {
  ScratchDir dir;
  // 12 tensors of different sizes whose fills take a while and count how many run at once.
  std::atomic<int> running{0}, most{0};
  SafetensorsWriter w;
  w.set_metadata({{"format", "pt"}});
  for (int t = 0; t < 12; ++t) {
    const std::int64_t n = 1 + 37 * t;
    w.add_deferred(std::string("t").append(std::to_string(t)), DType::F32, {n}, [&, t, n](std::span<std::byte> out) {
      const int now = ++running;
      for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(t % 3 == 0 ? 30 : 5));
      std::vector<float> values(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) values[std::size_t(i)] = float(t) + 0.001f * float(i);
      std::memcpy(out.data(), values.data(), out.size());
      --running;
    });
  }
  w.write(dir / "one.safetensors");
  CHECK(most.load() == 1);
  most = 0;
  w.write(dir / "three.safetensors", 3);
  CHECK(most.load() >= 2);  // it did run fills concurrently (12 fills, the slow ones 30 ms)
  CHECK(most.load() <= 3);  // and never more than `jobs` of them
  CHECK(milora_test::read_file(dir / "one.safetensors") == milora_test::read_file(dir / "three.safetensors"));
  CHECK_THROWS_AS(w.write(dir / "zero.safetensors", 0), milora::value_error);
  CHECK_FALSE(std::filesystem::exists(dir / "zero.safetensors"));

  // Memory holds at most `jobs` tensors: while the first (slow) one is filled, only jobs - 1 others
  // may start, however fast they are.
  std::atomic<int> started{0}, started_meanwhile{-1};
  SafetensorsWriter slow_first;
  for (int t = 0; t < 10; ++t)
    slow_first.add_deferred(std::string("t").append(std::to_string(t)), DType::F32, {2}, [&, t](std::span<std::byte> out) {
      ++started;
      if (t == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        started_meanwhile = started - 1;
      }
      std::memset(out.data(), 0, out.size());
    });
  slow_first.write(dir / "window.safetensors", 3);
  CHECK(started.load() == 10);
  CHECK(started_meanwhile.load() <= 2);

  // A fill that throws among others: the first error is rethrown, nothing is left behind, and the
  // writer's threads are all joined (the test would hang or crash otherwise).
  SafetensorsWriter bad;
  for (int t = 0; t < 8; ++t)
    bad.add_deferred(std::string("t").append(std::to_string(t)), DType::F32, {4}, [t](std::span<std::byte> out) {
      if (t == 3) throw std::runtime_error("boom 3");
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      std::memset(out.data(), 0, out.size());
    });
  CHECK_THROWS_WITH_AS(bad.write(dir / "bad.safetensors", 4), "boom 3", std::runtime_error);
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors.partial"));
}
