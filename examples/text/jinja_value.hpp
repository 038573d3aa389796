// The values a chat template computes with: Jinja's (Python's) undefined, none, booleans, integers,
// floats, strings, lists, dicts (insertion-ordered, as Python's) and namespace() objects, with
// Python's truthiness, equality and printing.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "jinja_error.hpp"
#include "milora/core/errors.hpp"

namespace milora::text::jinja {

struct Value;
using List = std::vector<Value>;
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(const std::string& key, Value v);
};

struct Undefined {
  std::string name;  // what was looked up, for messages
};

struct Value {
  std::variant<Undefined, std::nullptr_t, bool, long long, double, std::string, std::shared_ptr<List>, std::shared_ptr<Dict>> v;

  Value() = default;
  Value(Undefined u) : v(std::move(u)) {}
  Value(std::nullptr_t) : v(nullptr) {}
  Value(bool b) : v(b) {}
  Value(long long i) : v(i) {}
  Value(int i) : v(static_cast<long long>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(List l) : v(std::make_shared<List>(std::move(l))) {}
  Value(Dict d) : v(std::make_shared<Dict>(std::move(d))) {}

  bool undefined() const { return std::holds_alternative<Undefined>(v); }
  bool none() const { return std::holds_alternative<std::nullptr_t>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<long long>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<std::shared_ptr<List>>(v); }
  bool is_dict() const { return std::holds_alternative<std::shared_ptr<Dict>>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  long long integer() const { return std::get<long long>(v); }
  double number() const { return is_int() ? double(integer()) : is_bool() ? double(std::get<bool>(v)) : std::get<double>(v); }
  const List& list() const { return *std::get<std::shared_ptr<List>>(v); }
  List& list() { return *std::get<std::shared_ptr<List>>(v); }
  const Dict& dict() const { return *std::get<std::shared_ptr<Dict>>(v); }
  Dict& dict() { return *std::get<std::shared_ptr<Dict>>(v); }

  /// Python's truthiness.
  bool truthy() const {
    return std::visit(
        [](const auto& x) -> bool {
          using X = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<X, Undefined> || std::is_same_v<X, std::nullptr_t>) return false;
          else if constexpr (std::is_same_v<X, bool>) return x;
          else if constexpr (std::is_same_v<X, long long> || std::is_same_v<X, double>) return x != 0;
          else if constexpr (std::is_same_v<X, std::string>) return !x.empty();
          else if constexpr (std::is_same_v<X, std::shared_ptr<List>>) return !x->empty();
          else return !x->items.empty();
        },
        v);
  }

  /// The type's name, for error messages.
  const char* type_name() const {
    static constexpr const char* names[] = {"undefined", "none", "boolean", "integer", "float", "string", "list", "dict"};
    if (is_dict() && dict().is_namespace) return "namespace";
    return names[v.index()];
  }
};

inline const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, val] : items)
    if (k == key) return &val;
  return nullptr;
}
inline Value* Dict::find(std::string_view key) {
  for (auto& [k, val] : items)
    if (k == key) return &val;
  return nullptr;
}
inline void Dict::set(const std::string& key, Value val) {
  if (Value* existing = find(key)) *existing = std::move(val);
  else items.emplace_back(key, std::move(val));
}

/// Python's ==, for the values templates compare (numbers across int / float / bool).
inline bool equal(const Value& a, const Value& b) {
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) return a.number() == b.number();
  if (a.v.index() != b.v.index()) return a.none() && b.none();
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    if (a.list().size() != b.list().size()) return false;
    for (std::size_t i = 0; i < a.list().size(); ++i)
      if (!equal(a.list()[i], b.list()[i])) return false;
    return true;
  }
  if (a.is_dict()) {
    if (a.dict().items.size() != b.dict().items.size()) return false;
    for (const auto& [k, val] : a.dict().items) {
      const Value* other = b.dict().find(k);
      if (!other || !equal(val, *other)) return false;
    }
    return true;
  }
  return a.undefined() || a.none();
}

/// Python's repr of a float: the shortest text that reads back the same, with ".0" for integers.
inline std::string float_text(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string repr(const Value& v);

/// What {{ v }} prints: Python's str().
inline std::string to_text(const Value& v) {
  if (v.undefined()) return "";
  if (v.none()) return "None";
  if (v.is_bool()) return std::get<bool>(v.v) ? "True" : "False";
  if (v.is_int()) return std::to_string(v.integer());
  if (v.is_float()) return float_text(std::get<double>(v.v));
  if (v.is_string()) return v.str();
  return repr(v);
}

/// Python's repr(): strings quoted (single quotes unless the string holds one and no double quote).
inline std::string repr(const Value& v) {
  if (v.is_string()) {
    const std::string& s = v.str();
    const char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
    std::string out(1, q);
    for (const char c : s) {
      if (c == q || c == '\\') out += '\\';
      if (c == '\n') out += "\\n";
      else if (c == '\t') out += "\\t";
      else if (c == '\r') out += "\\r";
      else out += c;
    }
    return out + q;
  }
  if (v.is_list()) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.list().size(); ++i) out += (i ? ", " : "") + repr(v.list()[i]);
    return out + "]";
  }
  if (v.is_dict()) {
    std::string out = "{";
    for (std::size_t i = 0; i < v.dict().items.size(); ++i)
      out += (i ? ", " : "") + repr(Value(v.dict().items[i].first)) + ": " + repr(v.dict().items[i].second);
    return out + "}";
  }
  return to_text(v);
}

/// A JSON value (a conversation, tools) as template values.
inline Value from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value(nullptr);
    case nlohmann::json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return Value(j.get<long long>());
    case nlohmann::json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return Value(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.items.emplace_back(k, from_json(e));
      return Value(std::move(d));
    }
    default: return Value(Undefined{"a binary JSON value"});
  }
}

/// Template values as JSON (the tojson filter).
inline nlohmann::ordered_json to_json(const Value& v) {
  if (v.undefined() || v.none()) return nullptr;
  if (v.is_bool()) return std::get<bool>(v.v);
  if (v.is_int()) return v.integer();
  if (v.is_float()) return std::get<double>(v.v);
  if (v.is_string()) return v.str();
  if (v.is_list()) {
    auto a = nlohmann::ordered_json::array();
    for (const auto& e : v.list()) a.push_back(to_json(e));
    return a;
  }
  auto o = nlohmann::ordered_json::object();
  for (const auto& [k, e] : v.dict().items) o[k] = to_json(e);
  return o;
}

}  // namespace milora::text::jinja
