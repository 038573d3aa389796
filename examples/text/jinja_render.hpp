// Evaluates a template read by jinja_syntax.hpp, with Jinja2's semantics where chat templates rely
// on them: Python's truthiness, `and`/`or` returning an operand, loop scopes (a {% set %} in a loop
// body does not leak out of it, which is why templates use namespace()), undefined values that print
// as nothing and fail when looked into, and the filters, tests, methods and functions the chat
// templates of LLaMA, Mistral, Qwen and Gemma use. Anything else is an error naming it.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "jinja_syntax.hpp"
#include "jinja_value.hpp"
#include "utf8.hpp"

namespace milora::text::jinja {

class Renderer {
 public:
  /// Renders `body` with the variables of `globals`.
  static std::string render(const Body& body, const Dict& globals, const std::string& where) {
    Renderer r(where);
    r.scopes_.emplace_back();
    for (const auto& [k, v] : globals.items) r.scopes_.back()[k] = v;
    std::string out;
    r.run(body, out);
    return out;
  }

 private:
  enum class Flow { Normal, Break, Continue };
  explicit Renderer(std::string where) : where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& what) const { throw template_error(where_ + ": " + what); }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it)
      if (const auto f = it->find(name); f != it->end()) return f->second;
    return Value(Undefined{name});
  }

  Flow run(const Body& body, std::string& out) {
    for (const auto& n : body) {
      switch (n->kind) {
        case Node::Kind::Text: out += n->text; break;
        case Node::Kind::Output: out += to_text(eval(*n->expr)); break;
        case Node::Kind::If: {
          bool taken = false;
          for (const auto& [cond, b] : n->branches)
            if (eval(*cond).truthy()) {
              taken = true;
              if (const Flow f = run(b, out); f != Flow::Normal) return f;
              break;
            }
          if (!taken)
            if (const Flow f = run(n->else_body, out); f != Flow::Normal) return f;
          break;
        }
        case Node::Kind::For: run_for(*n, out); break;
        case Node::Kind::Set: {
          Value v = eval(*n->expr);
          if (n->targets.size() == 1) {
            scopes_.back()[n->targets[0]] = std::move(v);
          } else {
            Value ns = lookup(n->targets[0]);
            if (!ns.is_dict() || !ns.dict().is_namespace)
              fail("{% set " + n->targets[0] + "." + n->targets[1] + " %}: '" + n->targets[0] + "' is not a namespace()");
            ns.dict().set(n->targets[1], std::move(v));  // shared: the namespace object itself changes
          }
          break;
        }
        case Node::Kind::Break: return Flow::Break;
        case Node::Kind::Continue: return Flow::Continue;
      }
    }
    return Flow::Normal;
  }

  static List items_of(const Value& v) {
    if (v.is_list()) return v.list();
    if (v.is_dict()) {
      List keys;
      for (const auto& [k, _] : v.dict().items) keys.emplace_back(k);
      return keys;
    }
    if (v.is_string()) {
      List chars;
      const std::string& s = v.str();
      for (std::size_t i = 0; i < s.size();) {
        const std::size_t start = i;
        next_code_point(s, i);
        chars.emplace_back(s.substr(start, i - start));
      }
      return chars;
    }
    return {};
  }

  void run_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.expr);
    if (!seq.is_list() && !seq.is_dict() && !seq.is_string() && !seq.undefined() && !seq.none())
      fail(std::string("cannot loop over a ") + seq.type_name());
    List items = items_of(seq);
    const auto bind = [&](std::map<std::string, Value>& scope, const Value& item) {
      if (n.targets.size() == 1) {
        scope[n.targets[0]] = item;
        return;
      }
      if (!item.is_list() || item.list().size() != n.targets.size())
        fail(milora::detail::concat("cannot unpack ", repr(item), " into ", n.targets.size(), " loop variables"));
      for (std::size_t k = 0; k < n.targets.size(); ++k) scope[n.targets[k]] = item.list()[k];
    };
    if (n.filter) {
      List kept;
      for (const auto& item : items) {
        scopes_.emplace_back();
        bind(scopes_.back(), item);
        const bool keep = eval(*n.filter).truthy();
        scopes_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      scopes_.emplace_back();
      run(n.else_body, out);
      scopes_.pop_back();
      return;
    }
    const auto len = static_cast<long long>(items.size());
    for (long long i = 0; i < len; ++i) {
      scopes_.emplace_back();
      bind(scopes_.back(), items[std::size_t(i)]);
      Dict loop;
      loop.items = {{"index", Value(i + 1)}, {"index0", Value(i)}, {"revindex", Value(len - i)}, {"revindex0", Value(len - i - 1)},
                    {"first", Value(i == 0)}, {"last", Value(i == len - 1)}, {"length", Value(len)},
                    {"previtem", i > 0 ? items[std::size_t(i - 1)] : Value(Undefined{"loop.previtem"})},
                    {"nextitem", i + 1 < len ? items[std::size_t(i + 1)] : Value(Undefined{"loop.nextitem"})}};
      scopes_.back()["loop"] = Value(std::move(loop));
      const Flow f = run(n.body, out);
      scopes_.pop_back();
      if (f == Flow::Break) break;
    }
  }

  // ---- expressions ----
  static bool is_space(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
  }
  // Python's str.strip / lstrip / rstrip: whitespace, or any of `chars`' characters.
  static std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
    std::vector<std::pair<std::size_t, std::size_t>> cps;  // [begin, end) of each code point
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t b = i;
      next_code_point(s, i);
      cps.emplace_back(b, i);
    }
    const auto strippable = [&](std::size_t k) {
      std::size_t i = cps[k].first;
      const char32_t c = next_code_point(s, i);
      if (!chars || chars->none()) return is_space(c);
      return chars->str().find(s.substr(cps[k].first, cps[k].second - cps[k].first)) != std::string::npos;
    };
    std::size_t lo = 0, hi = cps.size();
    if (left)
      while (lo < hi && strippable(lo)) ++lo;
    if (right)
      while (hi > lo && strippable(hi - 1)) --hi;
    return lo == hi ? std::string() : s.substr(cps[lo].first, cps[hi - 1].second - cps[lo].first);
  }
  static List split(const std::string& s, const Value* sep, long long maxsplit) {
    List parts;
    if (!sep || sep->none()) {  // runs of whitespace, none empty
      std::size_t i = 0;
      while (i < s.size()) {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
        if (i >= s.size()) break;
        std::size_t j = i;
        if (maxsplit >= 0 && (long long)parts.size() == maxsplit) j = s.size();
        else
          while (j < s.size() && !std::isspace(static_cast<unsigned char>(s[j]))) ++j;
        parts.emplace_back(s.substr(i, j - i));
        i = j;
      }
      return parts;
    }
    const std::string& d = sep->str();
    std::size_t last = 0;
    for (std::size_t at = s.find(d); at != std::string::npos && (maxsplit < 0 || (long long)parts.size() < maxsplit);
         at = s.find(d, last)) {
      parts.emplace_back(s.substr(last, at - last));
      last = at + d.size();
    }
    parts.emplace_back(s.substr(last));
    return parts;
  }
  static long long normalize_index(long long i, long long n) { return i < 0 ? i + n : i; }

  Value index(const Value& obj, const Value& key, const std::string& what) {
    if (obj.undefined()) fail("'" + std::get<Undefined>(obj.v).name + "' is undefined, so it has no " + what);
    if (obj.is_dict()) {
      if (!key.is_string()) return Value(Undefined{what});
      const Value* v = obj.dict().find(key.str());
      return v ? *v : Value(Undefined{what});
    }
    if ((obj.is_list() || obj.is_string()) && key.is_int()) {
      const List items = obj.is_list() ? obj.list() : items_of(obj);
      const long long i = normalize_index(key.integer(), (long long)items.size());
      return i >= 0 && i < (long long)items.size() ? items[std::size_t(i)] : Value(Undefined{what});
    }
    return Value(Undefined{what});
  }

  Value slice(const Value& obj, const Value& a, const Value& b, const Value& c) {
    if (!obj.is_list() && !obj.is_string()) fail(std::string("cannot slice a ") + obj.type_name());
    const List items = items_of(obj);
    const long long n = (long long)items.size();
    const long long step = c.is_int() ? c.integer() : 1;
    if (step == 0) fail("a slice step of 0");
    const auto clamp = [&](const Value& v, long long fallback) {
      if (!v.is_int()) return fallback;
      long long i = normalize_index(v.integer(), n);
      return step > 0 ? std::clamp(i, 0LL, n) : std::clamp(i, -1LL, n - 1);
    };
    const long long start = clamp(a, step > 0 ? 0 : n - 1), stop = clamp(b, step > 0 ? n : -1);
    List picked;
    for (long long i = start; step > 0 ? i < stop : i > stop; i += step) picked.push_back(items[std::size_t(i)]);
    if (obj.is_list()) return Value(std::move(picked));
    std::string s;
    for (const auto& ch : picked) s += ch.str();
    return Value(std::move(s));
  }

  Value call_method(const Value& obj, const std::string& name, const std::vector<Value>& args, const std::string& where) {
    const auto arg = [&](std::size_t i) -> const Value* { return i < args.size() ? &args[i] : nullptr; };
    const auto need_string = [&](const Value* v) {
      if (!v || !v->is_string()) fail(where + "(): the argument must be a string");
      return v->str();
    };
    if (obj.is_string()) {
      const std::string& s = obj.str();
      if (name == "strip") return strip(s, arg(0), true, true);
      if (name == "lstrip") return strip(s, arg(0), true, false);
      if (name == "rstrip") return strip(s, arg(0), false, true);
      if (name == "split") return split(s, arg(0), arg(1) && arg(1)->is_int() ? arg(1)->integer() : -1);
      if (name == "startswith" || name == "endswith") {
        List options = arg(0) && arg(0)->is_list() ? arg(0)->list() : List{Value(need_string(arg(0)))};
        for (const auto& o : options) {
          const std::string& p = o.str();
          if (name == "startswith" ? s.rfind(p, 0) == 0 : (s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0))
            return true;
        }
        return false;
      }
      if (name == "upper" || name == "lower") {
        std::string r = s;
        for (char& c : r) c = char(name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
        return r;
      }
      if (name == "replace") {
        const std::string from = need_string(arg(0)), to = need_string(arg(1));
        if (from.empty()) fail("replace(): an empty pattern");
        std::string r;
        std::size_t last = 0;
        for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, last)) {
          r.append(s, last, at - last).append(to);
          last = at + from.size();
        }
        return r.append(s, last);
      }
    }
    if (obj.is_dict() && !obj.dict().is_namespace) {
      if (name == "items" || name == "keys" || name == "values") {
        List out;
        for (const auto& [k, v] : obj.dict().items)
          out.push_back(name == "keys" ? Value(k) : name == "values" ? v : Value(List{Value(k), v}));
        return out;
      }
      if (name == "get") {
        const Value* v = obj.dict().find(need_string(arg(0)));
        return v ? *v : arg(1) ? *arg(1) : Value(nullptr);
      }
    }
    fail(std::string("the method '") + name + "' of a " + obj.type_name() + " is not supported");
  }

  Value call_function(const std::string& name, const std::vector<Value>& args, const std::vector<std::pair<std::string, Value>>& kwargs) {
    if (name == "raise_exception") fail("raise_exception: " + (args.empty() ? std::string() : to_text(args[0])));
    if (name == "namespace" || name == "dict") {
      Dict d;
      d.is_namespace = name == "namespace";
      for (const auto& [k, v] : kwargs) d.set(k, v);
      return Value(std::move(d));
    }
    if (name == "range") {
      long long a = 0, b = 0, c = 1;
      for (const auto& v : args)
        if (!v.is_int()) fail("range(): arguments must be integers");
      if (args.size() == 1) b = args[0].integer();
      else if (args.size() >= 2) a = args[0].integer(), b = args[1].integer(), c = args.size() > 2 ? args[2].integer() : 1;
      if (c == 0) fail("range(): a step of 0");
      List out;
      for (long long i = a; c > 0 ? i < b : i > b; i += c) out.emplace_back(i);
      return out;
    }
    fail("the function '" + name + "' is not defined");
  }

  Value filter(const std::string& name, const Value& v, const std::vector<Value>& args) {
    const auto arg = [&](std::size_t i) -> const Value* { return i < args.size() ? &args[i] : nullptr; };
    if (name == "trim") return v.is_string() ? Value(strip(v.str(), arg(0), true, true)) : Value(strip(to_text(v), arg(0), true, true));
    if (name == "length" || name == "count") {
      if (v.is_list()) return (long long)v.list().size();
      if (v.is_dict()) return (long long)v.dict().items.size();
      if (v.is_string()) return (long long)items_of(v).size();
      fail(std::string("a ") + v.type_name() + " has no length");
    }
    if (name == "string") return to_text(v);
    if (name == "upper" || name == "lower") return call_method(Value(to_text(v)), name, {}, name);
    if (name == "first" || name == "last") {
      const List items = items_of(v);
      return items.empty() ? Value(Undefined{name}) : name == "first" ? items.front() : items.back();
    }
    if (name == "list") return items_of(v);
    if (name == "reverse") {
      if (v.is_string()) return slice(v, Value(), Value(), Value(-1LL));
      List items = items_of(v);
      std::reverse(items.begin(), items.end());
      return items;
    }
    if (name == "join") {
      std::string out;
      const List items = items_of(v);
      for (std::size_t i = 0; i < items.size(); ++i) out += (i && arg(0) ? to_text(*arg(0)) : "") + to_text(items[i]);
      return out;
    }
    if (name == "default" || name == "d") {
      const bool boolean = arg(1) && arg(1)->truthy();
      return (v.undefined() || (boolean && !v.truthy())) ? (arg(0) ? *arg(0) : Value("")) : v;
    }
    if (name == "tojson") {
      // transformers' tojson: json.dumps(x, ensure_ascii=False) with Python's separators.
      const int indent = arg(0) && arg(0)->is_int() ? int(arg(0)->integer()) : -1;
      return python_json(to_json(v), indent, 0);
    }
    if (name == "int") return v.is_number() ? Value((long long)v.number()) : v.is_string() ? Value(std::stoll(v.str())) : Value(0LL);
    if (name == "items") return call_method(v, "items", {}, "items");
    fail("the filter '" + name + "' is not supported");
  }

  static std::string python_json(const nlohmann::ordered_json& j, int indent, int depth) {
    const std::string nl = indent >= 0 ? "\n" + std::string(std::size_t(indent * (depth + 1)), ' ') : "";
    const std::string close = indent >= 0 ? "\n" + std::string(std::size_t(indent * depth), ' ') : "";
    const std::string comma = indent >= 0 ? "," : ", ";
    if (j.is_array()) {
      if (j.empty()) return "[]";
      std::string out = "[";
      for (std::size_t i = 0; i < j.size(); ++i) out += (i ? comma : "") + nl + python_json(j[i], indent, depth + 1);
      return out + close + "]";
    }
    if (j.is_object()) {
      if (j.empty()) return "{}";
      std::string out = "{";
      bool first = true;
      for (const auto& [k, e] : j.items()) {
        out += (first ? "" : comma) + nl + nlohmann::ordered_json(k).dump(-1, ' ', false) + ": " + python_json(e, indent, depth + 1);
        first = false;
      }
      return out + close + "}";
    }
    return j.dump(-1, ' ', false);
  }

  bool test(const std::string& name, const Value& v, const std::vector<Value>& args) {
    if (name == "defined") return !v.undefined();
    if (name == "undefined") return v.undefined();
    if (name == "none") return v.none();
    if (name == "string") return v.is_string();
    if (name == "number") return v.is_number();
    if (name == "integer") return v.is_int();
    if (name == "float") return v.is_float();
    if (name == "boolean") return v.is_bool();
    if (name == "true") return v.is_bool() && std::get<bool>(v.v);
    if (name == "false") return v.is_bool() && !std::get<bool>(v.v);
    if (name == "mapping") return v.is_dict();
    if (name == "iterable") return v.is_list() || v.is_dict() || v.is_string();
    if (name == "sequence") return v.is_list() || v.is_string() || v.is_dict();
    if (name == "odd" || name == "even") return v.is_int() && (v.integer() % 2 != 0) == (name == "odd");
    if (name == "divisibleby") return v.is_int() && !args.empty() && args[0].is_int() && args[0].integer() != 0 && v.integer() % args[0].integer() == 0;
    if (name == "eq" || name == "equalto" || name == "sameas") return !args.empty() && equal(v, args[0]) && v.v.index() == args[0].v.index();
    fail("the test '" + name + "' is not supported");
  }

  Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") return to_text(a) + to_text(b);
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.is_string()) {
        if (!a.is_string()) fail("'in <string>' needs a string on its left");
        found = b.str().find(a.str()) != std::string::npos;
      } else if (b.is_list()) {
        found = std::any_of(b.list().begin(), b.list().end(), [&](const Value& e) { return equal(a, e); });
      } else if (b.is_dict()) {
        found = a.is_string() && b.dict().find(a.str()) != nullptr;
      } else if (!b.undefined() && !b.none()) {
        fail(std::string("'in' a ") + b.type_name());
      } else {
        fail("'in' an undefined value");
      }
      return op == "in" ? found : !found;
    }
    const bool numbers = (a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (numbers) cmp = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
      else if (a.is_string() && b.is_string()) cmp = a.str().compare(b.str());
      else fail(milora::detail::concat("cannot compare a ", a.type_name(), " with a ", b.type_name()));
      return op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) return a.str() + b.str();
      if (a.is_list() && b.is_list()) {
        List l = a.list();
        l.insert(l.end(), b.list().begin(), b.list().end());
        return l;
      }
    }
    if (op == "*" && a.is_string() && b.is_int()) {
      std::string s;
      for (long long i = 0; i < b.integer(); ++i) s += a.str();
      return s;
    }
    if (!numbers)
      fail(milora::detail::concat("unsupported operands for ", op, ": a ", a.type_name(), " (", repr(a), ") and a ", b.type_name(), " (",
                                  repr(b), ")"));
    const bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
    const long long x = ints ? (long long)a.number() : 0, y = ints ? (long long)b.number() : 0;
    if (op == "+") return ints ? Value(x + y) : Value(a.number() + b.number());
    if (op == "-") return ints ? Value(x - y) : Value(a.number() - b.number());
    if (op == "*") return ints ? Value(x * y) : Value(a.number() * b.number());
    if (op == "/") {
      if (b.number() == 0) fail("division by zero");
      return a.number() / b.number();
    }
    if (op == "//" || op == "%") {
      if (b.number() == 0) fail("division by zero");
      if (ints) {
        long long q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floors
        return op == "//" ? Value(q) : Value(r);
      }
      const double q = std::floor(a.number() / b.number());
      return op == "//" ? Value(q) : Value(a.number() - q * b.number());
    }
    if (op == "**") return ints && y >= 0 ? Value((long long)std::llround(std::pow(double(x), double(y)))) : Value(std::pow(a.number(), b.number()));
    fail("the operator '" + op + "' is not supported");
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Literal: return e.literal;
      case Expr::Kind::Name: return lookup(e.name);
      case Expr::Kind::ListLiteral: {
        List l;
        for (const auto& a : e.args) l.push_back(eval(*a));
        return l;
      }
      case Expr::Kind::DictLiteral: {
        Dict d;
        for (std::size_t i = 0; i + 1 < e.args.size(); i += 2) {
          const Value k = eval(*e.args[i]);
          if (!k.is_string()) fail("dict keys must be strings");
          d.set(k.str(), eval(*e.args[i + 1]));
        }
        return d;
      }
      case Expr::Kind::Attr: return index(eval(*e.args[0]), Value(e.name), "attribute '" + e.name + "'");
      case Expr::Kind::Item: {
        const Value key = eval(*e.args[1]);
        return index(eval(*e.args[0]), key, "item " + repr(key));
      }
      case Expr::Kind::Slice: {
        const auto part = [&](std::size_t i) { return e.args[i] ? eval(*e.args[i]) : Value(nullptr); };
        return slice(eval(*e.args[0]), part(1), part(2), part(3));
      }
      case Expr::Kind::Call: {
        std::vector<Value> args;
        for (std::size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        std::vector<std::pair<std::string, Value>> kwargs;
        for (const auto& [k, v] : e.kwargs) kwargs.emplace_back(k, eval(*v));
        const Expr& callee = *e.args[0];
        if (callee.kind == Expr::Kind::Attr) return call_method(eval(*callee.args[0]), callee.name, args, callee.name);
        if (callee.kind == Expr::Kind::Name && lookup(callee.name).undefined()) return call_function(callee.name, args, kwargs);
        fail("only functions and methods can be called");
      }
      case Expr::Kind::Filter: {
        std::vector<Value> args;
        for (std::size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        return filter(e.name, eval(*e.args[0]), args);
      }
      case Expr::Kind::Test: {
        std::vector<Value> args;
        for (std::size_t i = 1; i < e.args.size(); ++i) args.push_back(eval(*e.args[i]));
        return test(e.name, eval(*e.args[0]), args) != e.negated;
      }
      case Expr::Kind::Not: return !eval(*e.args[0]).truthy();
      case Expr::Kind::Negate: {
        const Value v = eval(*e.args[0]);
        if (v.is_int()) return -v.integer();
        if (v.is_float()) return -std::get<double>(v.v);
        fail(std::string("cannot negate a ") + v.type_name());
      }
      case Expr::Kind::Binary: {
        if (e.name == "and") {
          Value a = eval(*e.args[0]);
          return a.truthy() ? eval(*e.args[1]) : a;
        }
        if (e.name == "or") {
          Value a = eval(*e.args[0]);
          return a.truthy() ? a : eval(*e.args[1]);
        }
        return binary(e.name, eval(*e.args[0]), eval(*e.args[1]));
      }
      case Expr::Kind::Ternary:
        return eval(*e.args[0]).truthy() ? eval(*e.args[1]) : e.args[2] ? eval(*e.args[2]) : Value(Undefined{"the else branch"});
    }
    fail("an unknown expression");
  }

  std::string where_;
  std::vector<std::map<std::string, Value>> scopes_;
};

}  // namespace milora::text::jinja
