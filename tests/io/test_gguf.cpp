// GGUF: files built byte by byte here (independently of milora's writer) read as the format says;
// the writer's files read back (every metadata type; F32 exactly, F16 / BF16 to their rounding,
// Q8_0 as ggml's block formula computed here in double); malformed files each refused with a
// message naming the file, the key or tensor and the rule broken; writer misuse refused before a
// byte is written, and a write that fails leaves no file.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "milora/io/gguf.hpp"

using namespace milora::io;
using milora_test::ScratchDir;

namespace {

// A GGUF assembled field by field.
struct Bytes {
  std::string s;
  Bytes& u8(std::uint8_t v) { return raw(&v, 1); }
  Bytes& u32(std::uint32_t v) { return raw(&v, 4); }
  Bytes& u64(std::uint64_t v) { return raw(&v, 8); }
  Bytes& f32(float v) { return raw(&v, 4); }
  Bytes& str(const std::string& t) {
    u64(t.size());
    s += t;
    return *this;
  }
  Bytes& raw(const void* p, std::size_t n) {
    s.append(static_cast<const char*>(p), n);
    return *this;
  }
  Bytes& pad(std::size_t a = 32) {
    s.append((a - s.size() % a) % a, '\0');
    return *this;
  }
};

Bytes header(std::uint64_t tensors, std::uint64_t kvs, std::uint32_t version = 3) {
  Bytes b;
  b.s = "GGUF";
  return b.u32(version).u64(tensors).u64(kvs);
}

// One F32 tensor "w" of ne {2, 3} = 0..5, after one u32 key: the valid file the corpus breaks.
Bytes valid_file() {
  Bytes b = header(1, 1);
  b.str("general.alignment").u32(4).u32(32);
  b.str("w").u32(2).u64(2).u64(3).u32(0).u64(0);
  b.pad();
  for (int i = 0; i < 6; ++i) b.f32(float(i));
  return b.pad();
}

std::string error_of(const std::string& bytes) {
  ScratchDir dir;
  milora_test::write_file(dir / "x.gguf", bytes);
  try {
    GgufFile f(dir / "x.gguf");
  } catch (const milora::format_error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("GGUF: a file built by hand reads as the format says") {
  Bytes b = header(2, 6);
  b.str("general.architecture").u32(8).str("llama");
  b.str("a.u8").u32(0).u8(200);
  b.str("a.f32").u32(6).f32(1.5f);
  b.str("a.bool").u32(7).u8(1);
  b.str("a.i32s").u32(9).u32(5).u64(3).u32(std::uint32_t(-1)).u32(2).u32(3);
  b.str("a.strings").u32(9).u32(8).u64(2).str("x").str("yz");
  b.str("m").u32(2).u64(3).u64(2).u32(0).u64(0);      // F32 2 x 3, 24 bytes
  b.str("h").u32(1).u64(4).u32(1).u64(32);             // F16 vector at the next 32-byte boundary
  b.pad();
  for (float v : {1.f, 2.f, 3.f, 4.f, 5.f, 6.f}) b.f32(v);
  b.pad();
  for (std::uint16_t h : {0x3c00, 0xc000, 0x3800, 0x0000}) b.raw(&h, 2);  // 1, -2, 0.5, 0
  b.pad();
  ScratchDir dir;
  milora_test::write_file(dir / "x.gguf", b.s);
  const GgufFile f(dir / "x.gguf");
  CHECK(f.string("general.architecture") == "llama");
  CHECK(f.uint("a.u8") == 200u);
  CHECK(f.real("a.f32") == 1.5);
  CHECK(std::get<bool>(f.value("a.bool")->items[0]));
  const auto* ints = f.value("a.i32s");
  REQUIRE(ints->is_array);
  CHECK(ints->type == GgufType::I32);
  CHECK(std::get<std::int64_t>(ints->items[0]) == -1);
  CHECK(std::get<std::string>(f.value("a.strings")->items[1]) == "yz");
  CHECK_THROWS_WITH_AS(f.uint("general.architecture"), doctest::Contains("key 'general.architecture' is string"), milora::format_error);
  CHECK(!f.string("absent"));
  const auto m = f.load<float>("m");
  CHECK(m.rows == 2);
  CHECK(m.cols == 3);
  CHECK(m.data == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(f.load<double>("h").data == std::vector<double>{1, -2, 0.5, 0});
  CHECK(f.header().data_start % 32 == 0);
  CHECK_THROWS_WITH_AS(f.load<float>("nope"), doctest::Contains("has no tensor 'nope'"), milora::format_error);
}

TEST_CASE("GGUF: the writer's files read back, and F16 / BF16 to their rounding, Q8_0 as ggml's block formula") {
  ScratchDir dir;
  GgufWriter w;
  w.set_string("general.name", "t");
  w.set_u32("k.u32", 4000000000u);
  w.set_i32("k.i32", -7);
  w.set_f32("k.f32", 0.25f);
  w.set_bool("k.bool", false);
  w.set("k.u64", GgufType::U64, std::uint64_t(1) << 40);
  w.set("k.f64", GgufType::F64, 1.0 / 3);
  w.set_array("k.strings", GgufType::STRING, {std::string("a"), std::string(""), std::string("\xe2\x96\x81the")});
  w.set_array("k.i32s", GgufType::I32, {std::int64_t(1), std::int64_t(-2)});
  HostMatrix<float> m(3, 64);
  for (std::size_t i = 0; i < m.data.size(); ++i) m.data[i] = float(std::sin(0.7 * double(i)) * (i % 32 == 5 ? 9.0 : 1.0));
  m.data[70] = 0;  // a block with a zero and a block's largest value of either sign
  w.add_matrix("f32", m, kGgmlF32);
  w.add_matrix("f16", m, kGgmlF16);
  w.add_matrix("bf16", m, kGgmlBF16);
  w.add_matrix("q8", m, kGgmlQ8_0);
  HostMatrix<float> zeros(1, 32);
  w.add_matrix("q8zero", zeros, kGgmlQ8_0, true);
  w.write(dir / "w.gguf");
  const GgufFile f(dir / "w.gguf");
  CHECK(f.uint("k.u32") == 4000000000u);
  CHECK(std::get<std::int64_t>(f.value("k.i32")->items[0]) == -7);
  CHECK(f.real("k.f32") == 0.25);
  CHECK(!std::get<bool>(f.value("k.bool")->items[0]));
  CHECK(f.uint("k.u64") == (std::uint64_t(1) << 40));
  CHECK(f.real("k.f64") == 1.0 / 3);
  CHECK(std::get<std::string>(f.value("k.strings")->items[2]) == "\xe2\x96\x81the");
  CHECK(std::get<std::int64_t>(f.value("k.i32s")->items[1]) == -2);
  CHECK(f.header().metadata.front().first == "general.name");  // keys in the order set
  CHECK(f.info("f32").ne == std::vector<std::uint64_t>{64, 3});
  CHECK(f.info("q8zero").ne == std::vector<std::uint64_t>{32});
  CHECK(f.load<float>("f32").data == m.data);
  const auto h = f.load<double>("f16"), bh = f.load<double>("bf16"), q = f.load<double>("q8");
  for (std::size_t i = 0; i < m.data.size(); ++i) {
    CHECK(std::abs(h.data[i] - m.data[i]) <= std::abs(m.data[i]) * 0x1p-11 + 0x1p-25);
    CHECK(std::abs(bh.data[i] - m.data[i]) <= std::abs(m.data[i]) * 0x1p-8);
  }
  // Q8_0 computed here: d = max|x| / 127 rounded to f16, q = round(x / d_exact) (ggml divides by the
  // unrounded d), x' = q * f16(d)
  for (std::size_t b = 0; b < m.data.size() / 32; ++b) {
    double amax = 0;
    for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::abs(double(m.data[32 * b + j])));
    const float d = float(amax) / 127.0f;
    const double d16 = half_to_float(float_to_half(d));
    for (std::size_t j = 0; j < 32; ++j) {
      const double x = m.data[32 * b + j];
      const double expected = std::round(double(float(x) * (1.0f / d))) * d16;
      CHECK(q.data[32 * b + j] == doctest::Approx(expected).epsilon(1e-12));
      CHECK(std::abs(q.data[32 * b + j] - x) <= d16 * 0.5 + amax * 0x1p-10);  // half a step, and f16's rounding of d
    }
  }
  CHECK(f.load<float>("q8zero").data == zeros.data);
}

TEST_CASE("GGUF: misuse of the writer is refused before anything is written") {
  GgufWriter w;
  w.set_u32("a", 1);
  CHECK_THROWS_WITH_AS(w.set_u32("a", 2), doctest::Contains("key 'a' set twice"), milora::value_error);
  CHECK_THROWS_WITH_AS(w.set("b", GgufType::U32, std::string("x")), doctest::Contains("not a u32"), milora::value_error);
  CHECK_THROWS_WITH_AS(w.set_array("c", GgufType::ARRAY, {}), doctest::Contains("arrays of arrays"), milora::value_error);
  HostMatrix<float> m(2, 33);
  CHECK_THROWS_WITH_AS(w.add_matrix("q", m, kGgmlQ8_0), doctest::Contains("multiple of 32, not 33"), milora::shape_error);
  CHECK_THROWS_WITH_AS(w.add_matrix(std::string(64, 'n'), m, kGgmlF32), doctest::Contains("1 to 63 bytes"), milora::value_error);
  CHECK_THROWS_WITH_AS(w.add_matrix("q", m, 99), doctest::Contains("unknown ggml type 99"), milora::value_error);
  w.add_matrix("t", m, kGgmlF32);
  CHECK_THROWS_WITH_AS(w.add_matrix("t", m, kGgmlF32), doctest::Contains("'t' added twice"), milora::value_error);
  w.add_tensor("late", kGgmlF32, {4}, [](std::span<std::byte>) { throw milora::io_error("no space left on device"); });
  ScratchDir dir;
  CHECK_THROWS_WITH_AS(w.write(dir / "w.gguf"), doctest::Contains("no space left"), milora::io_error);
  CHECK(!std::filesystem::exists(dir / "w.gguf"));  // a failed write leaves no file, nor a partial one
  CHECK(!std::filesystem::exists(dir / "w.gguf.partial"));
}

TEST_CASE("GGUF: malformed files are refused, naming the file, the key or tensor and the rule") {
  const std::string ok = valid_file().s;
  REQUIRE(error_of(ok) == "(no error)");
  auto with = [&](std::size_t at, const Bytes& b) {  // `ok` with bytes at `at` replaced
    std::string s = ok;
    s.replace(at, b.s.size(), b.s);
    return s;
  };
  // offsets into valid_file(): magic 0, version 4, tensor count 8, kv count 16, key length 24,
  // key 32..49, value type 49, value 53, tensor name length 57, name 65, n_dims 66, ne 70 / 78,
  // type 86, offset 90, data 96
  const std::vector<std::pair<std::string, std::string>> cases = {
      {ok.substr(0, 3), "the magic number runs past the end of the file"},
      {"GGUX" + ok.substr(4), "does not start with the magic \"GGUF\""},
      {with(4, Bytes().u32(1)), "version 1 (milora reads versions 2 and 3)"},
      {with(8, Bytes().u64(1ull << 60)), "tensor count 1152921504606846976 cannot fit"},
      {with(16, Bytes().u64(1ull << 40)), "key/value count 1099511627776 cannot fit"},
      {with(24, Bytes().u64(1ull << 40)), "key 0 has length 1099511627776 but only"},
      {with(49, Bytes().u32(13)), "key 'general.alignment' has value type 13, which GGUF does not define"},
      {with(49, Bytes().u32(7)), "key 'general.alignment' is a bool holding 32"},
      {with(49, Bytes().u32(9).u32(9)), "key 'general.alignment' is an array of arrays"},
      {with(49, Bytes().u32(9).u32(4).u64(1ull << 50)), "has 1125899906842624 elements, more than"},
      {with(53, Bytes().u32(48)), "general.alignment 48 is not a power of two"},
      {with(49, Bytes().u32(5)), "general.alignment is not a u32"},
      {with(66, Bytes().u32(5)), "tensor 'w' has 5 dimensions (GGUF allows 1 to 4)"},
      {with(66, Bytes().u32(0)), "tensor 'w' has 0 dimensions"},
      {with(70, Bytes().u64(0)), "tensor 'w' has dimension 0 = 0"},
      {with(70, Bytes().u64(1ull << 62)), "tensor 'w': byte size overflows 64 bits"},
      {with(70, Bytes().u64(1ull << 62).u64(1ull << 62)), "tensor 'w': element count overflows 64 bits"},
      {with(86, Bytes().u32(77)), "tensor 'w' has ggml type 77, which milora does not know"},
      {with(86, Bytes().u32(8)), "its first dimension 2 is not a multiple of Q8_0's block of 32"},
      {with(90, Bytes().u64(32)), "tensor 'w' is at offset 32 but the tensors before it end at 0"},
      {with(78, Bytes().u64(30)), "tensor 'w' (240 bytes at offset 0) runs past the end of the data region (32 bytes)"},
      {ok + std::string(32, '\0'), "the data region has 32 trailing bytes that belong to no tensor"},
      {ok.substr(0, 80), "tensor 'w''s dimension 1 runs past the end of the file"},
  };
  for (const auto& [bytes, expected] : cases) {
    CAPTURE(expected);
    const std::string e = error_of(bytes);
    CHECK_MESSAGE(e.find(expected) != std::string::npos, e);
    CHECK(e.find("GGUF file '") == 0);
  }
  // a file of keys only may end without the padding (there is no data region to align)
  Bytes keys = header(0, 1);
  keys.str("general.name").u32(8).str("k");
  CHECK(error_of(keys.s) == "(no error)");
  // duplicates: a key twice, a tensor twice
  Bytes dk = header(0, 2);
  dk.str("a").u32(4).u32(1).str("a").u32(4).u32(2);
  CHECK(error_of(dk.pad().s).find("key 'a' appears twice") != std::string::npos);
  Bytes dt = header(2, 0);
  dt.str("w").u32(1).u64(8).u32(0).u64(0).str("w").u32(1).u64(8).u32(0).u64(32);
  dt.pad().s.append(64, '\0');
  CHECK(error_of(dt.s).find("tensor 'w' appears twice") != std::string::npos);
  // decoding: a type milora validates but does not decode, and a 3-D tensor
  Bytes q4 = header(2, 0);
  q4.str("q").u32(1).u64(32).u32(2).u64(0).str("c").u32(3).u64(1).u64(1).u64(1).u32(0).u64(32);
  q4.pad().s.append(18, '\x01');
  q4.pad().s.append(4, '\0');
  q4.pad();
  ScratchDir dir;
  milora_test::write_file(dir / "q.gguf", q4.s);
  const GgufFile f(dir / "q.gguf");
  CHECK_THROWS_WITH_AS(f.load<float>("q"), doctest::Contains("is Q4_0, which milora cannot decode"), milora::format_error);
  CHECK_THROWS_WITH_AS(f.load<float>("c"), doctest::Contains("has 3 dimensions"), milora::shape_error);
}
