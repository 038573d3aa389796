// The syntax of the chat templates in tokenizer_config.json: a subset of Jinja2, read into a tree.
//
// Statements: {% if %}/{% elif %}/{% else %}/{% endif %}, {% for a[, b] in x [if c] %}/{% else %}/
// {% endfor %} (with loop.index0 & co.), {% set x = e %} and {% set ns.attr = e %}, {% break %},
// {% continue %}; {{ e }} and {# comments #}. Whitespace as transformers renders templates: the
// "-" modifiers, and trim_blocks + lstrip_blocks (the newline after a block tag is dropped, and the
// spaces before one on its line). Expressions: literals, lists, dicts, names, attributes,
// subscripts and slices, calls with keyword arguments, filters (|), tests (is [not]), the
// arithmetic, comparison, membership (in, not in), ~ and logic operators, and `a if c else b`,
// with Jinja2's precedences. Other statements (macro, call, filter, raw, generation) are refused by
// name when the template is read.
#pragma once

#include <cctype>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "jinja_value.hpp"

namespace milora::text::jinja {

struct Expr;
using ExprPtr = std::shared_ptr<const Expr>;
struct Expr {
  enum class Kind { Literal, Name, ListLiteral, DictLiteral, Attr, Item, Slice, Call, Filter, Test, Not, Negate, Binary, Ternary };
  Kind kind;
  Value literal;
  std::string name;                 // Name, Attr, Filter, Test; Binary: the operator
  std::vector<ExprPtr> args;        // operands / arguments (Slice: object, start, stop, step, any may be null)
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;             // Test: "is not"
};

struct Node;
using Body = std::vector<std::shared_ptr<const Node>>;
struct Node {
  enum class Kind { Text, Output, If, For, Set, Break, Continue };
  Kind kind;
  std::string text;                                 // Text
  ExprPtr expr;                                     // Output, Set (value), For (iterable)
  std::vector<std::pair<ExprPtr, Body>> branches;   // If: conditions and bodies
  Body body, else_body;                             // For; If's else
  std::vector<std::string> targets;                 // For's loop variables; Set: {name} or {namespace, attribute}
  ExprPtr filter;                                   // For's "if" clause
};

class Parser {
 public:
  /// Reads `source`; `where` names the template in errors.
  static Body parse(std::string_view source, const std::string& where) {
    Parser p(source, where);
    p.lex();
    std::size_t at = 0;
    Body body = p.parse_body(at, {});
    return body;
  }

 private:
  struct Token {
    enum class Kind { Name, String, Int, Float, Op, End };
    Kind kind;
    std::string text;
    std::size_t offset;
  };
  // One piece of the template: text, or a tag with its tokens.
  struct Item {
    enum class Kind { Text, Output, Statement, Comment };
    Kind kind;
    std::string text;
    std::vector<Token> tokens;
    bool strip_before = false, strip_after = false, keep_before = false;
    std::size_t offset = 0;
  };

  Parser(std::string_view s, std::string where) : src_(s), where_(std::move(where)) {}

  [[noreturn]] void fail(std::size_t offset, const std::string& what) const {
    std::size_t line = 1;
    for (std::size_t i = 0; i < offset && i < src_.size(); ++i) line += src_[i] == '\n';
    throw template_error(milora::detail::concat(where_, ", line ", line, ": ", what));
  }

  // Splits the source into items and applies the whitespace rules.
  void lex() {
    std::size_t i = 0;
    while (i < src_.size()) {
      const std::size_t open = find_open(i);
      if (open > i) items_.push_back({Item::Kind::Text, std::string(src_.substr(i, open - i)), {}, false, false, false, i});
      if (open >= src_.size()) break;
      const char kind = src_[open + 1];
      std::size_t j = open + 2;
      Item item{kind == '{' ? Item::Kind::Output : kind == '%' ? Item::Kind::Statement : Item::Kind::Comment, "", {}, false, false, false, open};
      if (j < src_.size() && src_[j] == '-') item.strip_before = true, ++j;
      else if (j < src_.size() && src_[j] == '+') item.keep_before = true, ++j;
      if (item.kind == Item::Kind::Comment) {
        const std::size_t close = src_.find("#}", j);
        if (close == std::string_view::npos) fail(open, "a comment is not closed with #}");
        item.strip_after = close > j && src_[close - 1] == '-';
        i = close + 2;
      } else {
        const std::string closer = item.kind == Item::Kind::Output ? "}}" : "%}";
        i = lex_tag(j, closer, item);
      }
      items_.push_back(std::move(item));
    }
    // Whitespace: "-" strips all of it next to the tag; block tags and comments also drop the one
    // newline after them (trim_blocks) and the spaces and tabs before them on their line
    // (lstrip_blocks), as transformers' and transformers.js's environments are set up.
    for (std::size_t k = 0; k < items_.size(); ++k) {
      Item& it = items_[k];
      if (it.kind == Item::Kind::Text) continue;
      const bool block = it.kind != Item::Kind::Output;
      if (k > 0 && items_[k - 1].kind == Item::Kind::Text) {
        std::string& t = items_[k - 1].text;
        if (it.strip_before) {
          t.erase(t.find_last_not_of(" \t\n\r\f\v") == std::string::npos ? 0 : t.find_last_not_of(" \t\n\r\f\v") + 1);
        } else if (block && !it.keep_before) {
          const std::size_t line_start = t.find_last_of('\n') == std::string::npos ? 0 : t.find_last_of('\n') + 1;
          const bool at_template_start = k - 1 == 0 || t.find('\n') != std::string::npos;
          if (at_template_start && t.find_first_not_of(" \t", line_start) == std::string::npos) t.erase(line_start);
        }
      }
      if (k + 1 < items_.size() && items_[k + 1].kind == Item::Kind::Text) {
        std::string& t = items_[k + 1].text;
        if (it.strip_after) t.erase(0, t.find_first_not_of(" \t\n\r\f\v") == std::string::npos ? t.size() : t.find_first_not_of(" \t\n\r\f\v"));
        else if (block && t.rfind("\n", 0) == 0) t.erase(0, 1);
        else if (block && t.rfind("\r\n", 0) == 0) t.erase(0, 2);
      }
    }
  }

  std::size_t find_open(std::size_t from) const {
    for (std::size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return src_.size();
  }

  // The tokens of a tag from j up to its closer; returns the offset after the closer.
  std::size_t lex_tag(std::size_t j, const std::string& closer, Item& item) {
    while (true) {
      while (j < src_.size() && std::isspace(static_cast<unsigned char>(src_[j]))) ++j;
      if (j >= src_.size()) fail(item.offset, "a tag is not closed with " + closer);
      if (src_[j] == '-' && src_.compare(j + 1, 2, closer) == 0) {
        item.strip_after = true;
        return j + 3;
      }
      if (src_.compare(j, 2, closer) == 0) return j + 2;
      const char c = src_[j];
      const std::size_t start = j;
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        while (j < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[j])) || src_[j] == '_')) ++j;
        item.tokens.push_back({Token::Kind::Name, std::string(src_.substr(start, j - start)), start});
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        while (j < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[j])) || src_[j] == '_')) ++j;
        bool is_float = false;
        if (j + 1 < src_.size() && src_[j] == '.' && std::isdigit(static_cast<unsigned char>(src_[j + 1]))) {
          is_float = true;
          ++j;
          while (j < src_.size() && std::isdigit(static_cast<unsigned char>(src_[j]))) ++j;
        }
        std::string digits(src_.substr(start, j - start));
        std::erase(digits, '_');
        item.tokens.push_back({is_float ? Token::Kind::Float : Token::Kind::Int, digits, start});
      } else if (c == '\'' || c == '"') {
        std::string s;
        ++j;
        while (true) {
          if (j >= src_.size()) fail(start, "a string is not closed");
          const char d = src_[j++];
          if (d == c) break;
          if (d != '\\') {
            s += d;
            continue;
          }
          if (j >= src_.size()) fail(start, "a string is not closed");
          const char e = src_[j++];
          switch (e) {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case '\\': s += '\\'; break;
            case '\'': s += '\''; break;
            case '"': s += '"'; break;
            case '\n': break;  // a line continuation
            default: s += '\\', s += e;  // Python keeps unknown escapes as they are
          }
        }
        item.tokens.push_back({Token::Kind::String, std::move(s), start});
      } else {
        static constexpr std::string_view two[] = {"==", "!=", "<=", ">=", "//", "**"};
        std::string op(1, c);
        for (const auto t : two)
          if (src_.compare(j, 2, t) == 0) op = std::string(t);
        if (op.size() == 1 && std::string_view("+-*/%~|.,:()[]{}=<>").find(c) == std::string_view::npos)
          fail(j, std::string("the character '") + c + "' is not Jinja syntax");
        j += op.size();
        item.tokens.push_back({Token::Kind::Op, std::move(op), start});
      }
    }
  }

  // ---- statements ----
  static std::string keyword(const Item& it) { return it.tokens.empty() || it.tokens[0].kind != Token::Kind::Name ? "" : it.tokens[0].text; }

  // Parses items from `at` until a statement whose keyword is in `stops` (left at `at`).
  Body parse_body(std::size_t& at, const std::vector<std::string>& stops) {
    Body body;
    while (at < items_.size()) {
      const Item& it = items_[at];
      if (it.kind == Item::Kind::Text) {
        if (!it.text.empty()) body.push_back(std::make_shared<Node>(Node{Node::Kind::Text, it.text, {}, {}, {}, {}, {}, {}}));
        ++at;
      } else if (it.kind == Item::Kind::Comment) {
        ++at;
      } else if (it.kind == Item::Kind::Output) {
        auto n = std::make_shared<Node>(Node{Node::Kind::Output, "", {}, {}, {}, {}, {}, {}});
        n->expr = parse_tag_expression(it, 0);
        body.push_back(n);
        ++at;
      } else {
        const std::string kw = keyword(it);
        for (const auto& s : stops)
          if (kw == s) return body;
        body.push_back(parse_statement(at));
      }
    }
    if (!stops.empty()) fail(src_.size(), "the template ends before {% " + stops.back() + " %}");
    return body;
  }

  ExprPtr parse_tag_expression(const Item& it, std::size_t from) {
    tokens_ = &it.tokens;
    pos_ = from;
    tag_offset_ = it.offset;
    ExprPtr e = expression();
    expect_end();
    return e;
  }

  std::shared_ptr<const Node> parse_statement(std::size_t& at) {
    const Item& it = items_[at];
    const std::string kw = keyword(it);
    tokens_ = &it.tokens;
    tag_offset_ = it.offset;
    pos_ = 1;
    auto n = std::make_shared<Node>();
    if (kw == "if") {
      n->kind = Node::Kind::If;
      ExprPtr cond = expression();
      expect_end();
      ++at;
      while (true) {
        Body b = parse_body(at, {"elif", "else", "endif"});
        n->branches.emplace_back(cond, std::move(b));
        const std::string next = keyword(items_[at]);
        tokens_ = &items_[at].tokens;
        tag_offset_ = items_[at].offset;
        pos_ = 1;
        if (next == "elif") {
          cond = expression();
          expect_end();
          ++at;
          continue;
        }
        expect_end();
        ++at;
        if (next == "else") {
          n->else_body = parse_body(at, {"endif"});
          tokens_ = &items_[at].tokens;
          pos_ = 1;
          expect_end();
          ++at;
        }
        return n;
      }
    }
    if (kw == "for") {
      n->kind = Node::Kind::For;
      n->targets.push_back(name_token("a loop variable"));
      while (peek_op(",")) {
        ++pos_;
        n->targets.push_back(name_token("a loop variable"));
      }
      if (!peek_name("in")) fail(offset(), "'in' expected after the loop variables");
      ++pos_;
      n->expr = ternary_free_expression();
      if (peek_name("if")) {
        ++pos_;
        n->filter = ternary_free_expression();
      }
      if (peek_name("recursive")) fail(offset(), "recursive loops are not supported");
      expect_end();
      ++at;
      n->body = parse_body(at, {"else", "endfor"});
      if (keyword(items_[at]) == "else") {
        ++at;
        n->else_body = parse_body(at, {"endfor"});
      }
      tokens_ = &items_[at].tokens;
      pos_ = 1;
      expect_end();
      ++at;
      return n;
    }
    if (kw == "set") {
      n->kind = Node::Kind::Set;
      n->targets.push_back(name_token("a variable name"));
      if (peek_op(".")) {
        ++pos_;
        n->targets.push_back(name_token("an attribute name"));
      }
      if (!peek_op("=")) fail(offset(), "block {% set %} ... {% endset %} is not supported; use {% set x = ... %}");
      ++pos_;
      n->expr = expression();
      expect_end();
      ++at;
      return n;
    }
    if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Kind::Break : Node::Kind::Continue;
      expect_end();
      ++at;
      return n;
    }
    fail(it.offset, kw.empty() ? "an empty {% %} tag" : "the statement '" + kw + "' is not supported");
  }

  // ---- expressions (Jinja2's precedence: ternary < or < and < not < comparisons < + - < ~ < * / // % < ** < unary < postfix, filters, tests) ----
  const Token& peek() const {
    static const Token end{Token::Kind::End, "", 0};
    return pos_ < tokens_->size() ? (*tokens_)[pos_] : end;
  }
  std::size_t offset() const { return pos_ < tokens_->size() ? (*tokens_)[pos_].offset : tag_offset_; }
  bool peek_op(std::string_view op) const { return peek().kind == Token::Kind::Op && peek().text == op; }
  bool peek_name(std::string_view n) const { return peek().kind == Token::Kind::Name && peek().text == n; }
  void expect_op(std::string_view op) {
    if (!peek_op(op)) fail(offset(), milora::detail::concat("'", op, "' expected", peek().text.empty() ? "" : ", not '" + peek().text + "'"));
    ++pos_;
  }
  void expect_end() {
    if (pos_ < tokens_->size()) fail(offset(), "unexpected '" + peek().text + "'");
  }
  std::string name_token(const char* what) {
    if (peek().kind != Token::Kind::Name) fail(offset(), milora::detail::concat(what, " expected"));
    return (*tokens_)[pos_++].text;
  }
  static ExprPtr make(Expr::Kind k, std::vector<ExprPtr> args = {}, std::string name = {}) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->args = std::move(args);
    e->name = std::move(name);
    return e;
  }

  ExprPtr expression() {
    ExprPtr e = or_expr();
    if (peek_name("if")) {
      ++pos_;
      ExprPtr cond = or_expr();
      ExprPtr otherwise;
      if (peek_name("else")) {
        ++pos_;
        otherwise = expression();
      }
      return make(Expr::Kind::Ternary, {cond, e, otherwise});
    }
    return e;
  }
  ExprPtr ternary_free_expression() { return or_expr(); }
  ExprPtr or_expr() {
    ExprPtr e = and_expr();
    while (peek_name("or")) {
      ++pos_;
      e = make(Expr::Kind::Binary, {e, and_expr()}, "or");
    }
    return e;
  }
  ExprPtr and_expr() {
    ExprPtr e = not_expr();
    while (peek_name("and")) {
      ++pos_;
      e = make(Expr::Kind::Binary, {e, not_expr()}, "and");
    }
    return e;
  }
  ExprPtr not_expr() {
    if (peek_name("not")) {
      ++pos_;
      return make(Expr::Kind::Not, {not_expr()});
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr e = add();
    while (true) {
      std::string op;
      if (peek().kind == Token::Kind::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" || peek().text == ">" ||
                                             peek().text == "<=" || peek().text == ">=")) {
        op = peek().text;
        ++pos_;
      } else if (peek_name("in")) {
        op = "in";
        ++pos_;
      } else if (peek_name("not") && pos_ + 1 < tokens_->size() && (*tokens_)[pos_ + 1].text == "in") {
        op = "not in";
        pos_ += 2;
      } else {
        return e;
      }
      e = make(Expr::Kind::Binary, {e, add()}, op);
    }
  }
  ExprPtr add() {
    ExprPtr e = concat();
    while (peek_op("+") || peek_op("-")) {
      const std::string op = (*tokens_)[pos_++].text;
      e = make(Expr::Kind::Binary, {e, concat()}, op);
    }
    return e;
  }
  ExprPtr concat() {
    ExprPtr e = mul();
    while (peek_op("~")) {
      ++pos_;
      e = make(Expr::Kind::Binary, {e, mul()}, "~");
    }
    return e;
  }
  ExprPtr mul() {
    ExprPtr e = pow();
    while (peek_op("*") || peek_op("/") || peek_op("//") || peek_op("%")) {
      const std::string op = (*tokens_)[pos_++].text;
      e = make(Expr::Kind::Binary, {e, pow()}, op);
    }
    return e;
  }
  ExprPtr pow() {
    ExprPtr e = unary();
    while (peek_op("**")) {
      ++pos_;
      e = make(Expr::Kind::Binary, {e, unary()}, "**");
    }
    return e;
  }
  ExprPtr unary() {
    if (peek_op("-")) {
      ++pos_;
      return make(Expr::Kind::Negate, {unary()});
    }
    if (peek_op("+")) {
      ++pos_;
      return unary();
    }
    return filters(postfix(primary()));
  }

  void call_arguments(Expr& call) {
    expect_op("(");
    while (!peek_op(")")) {
      if (peek().kind == Token::Kind::Name && pos_ + 1 < tokens_->size() && (*tokens_)[pos_ + 1].kind == Token::Kind::Op &&
          (*tokens_)[pos_ + 1].text == "=") {
        const std::string key = (*tokens_)[pos_].text;
        pos_ += 2;
        call.kwargs.emplace_back(key, expression());
      } else {
        if (!call.kwargs.empty()) fail(offset(), "a positional argument after keyword arguments");
        call.args.push_back(expression());
      }
      if (!peek_op(",")) break;
      ++pos_;
    }
    expect_op(")");
  }

  ExprPtr primary() {
    const Token t = peek();
    if (t.kind == Token::Kind::End) fail(offset(), "an expression expected");
    ++pos_;
    auto e = std::make_shared<Expr>();
    switch (t.kind) {
      case Token::Kind::String: {
        e->kind = Expr::Kind::Literal;
        std::string s = t.text;
        while (peek().kind == Token::Kind::String) s += (*tokens_)[pos_++].text;  // adjacent literals join
        e->literal = Value(std::move(s));
        return e;
      }
      case Token::Kind::Int:
        e->kind = Expr::Kind::Literal;
        e->literal = Value(std::stoll(t.text));
        return e;
      case Token::Kind::Float:
        e->kind = Expr::Kind::Literal;
        e->literal = Value(std::stod(t.text));
        return e;
      case Token::Kind::Name:
        e->kind = Expr::Kind::Literal;
        if (t.text == "true" || t.text == "True") e->literal = Value(true);
        else if (t.text == "false" || t.text == "False") e->literal = Value(false);
        else if (t.text == "none" || t.text == "None") e->literal = Value(nullptr);
        else e->kind = Expr::Kind::Name, e->name = t.text;
        return e;
      case Token::Kind::Op:
        if (t.text == "(") {
          ExprPtr inner = expression();
          if (peek_op(",")) {  // a tuple: a list for our purposes
            auto list = std::make_shared<Expr>();
            list->kind = Expr::Kind::ListLiteral;
            list->args.push_back(inner);
            while (peek_op(",")) {
              ++pos_;
              if (peek_op(")")) break;
              list->args.push_back(expression());
            }
            expect_op(")");
            return list;
          }
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          e->kind = Expr::Kind::ListLiteral;
          while (!peek_op("]")) {
            e->args.push_back(expression());
            if (!peek_op(",")) break;
            ++pos_;
          }
          expect_op("]");
          return e;
        }
        if (t.text == "{") {
          e->kind = Expr::Kind::DictLiteral;
          while (!peek_op("}")) {
            e->args.push_back(expression());
            expect_op(":");
            e->args.push_back(expression());
            if (!peek_op(",")) break;
            ++pos_;
          }
          expect_op("}");
          return e;
        }
        break;
      default:
        break;
    }
    fail(t.offset, "unexpected '" + t.text + "'");
  }

  ExprPtr postfix(ExprPtr e) {
    while (true) {
      if (peek_op(".")) {
        ++pos_;
        e = make(Expr::Kind::Attr, {e}, name_token("an attribute name"));
      } else if (peek_op("[")) {
        ++pos_;
        ExprPtr parts[3];
        int colons = 0;
        while (true) {
          if (!peek_op(":") && !peek_op("]")) parts[colons] = expression();
          if (peek_op(":") && colons < 2) {
            ++pos_;
            ++colons;
            continue;
          }
          break;
        }
        expect_op("]");
        e = colons == 0 ? make(Expr::Kind::Item, {e, parts[0]}) : make(Expr::Kind::Slice, {e, parts[0], parts[1], parts[2]});
      } else if (peek_op("(")) {
        auto call = std::make_shared<Expr>();
        call->kind = Expr::Kind::Call;
        call->args.push_back(e);
        call_arguments(*call);
        e = call;
      } else {
        return e;
      }
    }
  }

  ExprPtr filters(ExprPtr e) {
    while (true) {
      if (peek_op("|")) {
        ++pos_;
        auto f = std::make_shared<Expr>();
        f->kind = Expr::Kind::Filter;
        f->name = name_token("a filter name");
        f->args.push_back(e);
        if (peek_op("(")) call_arguments(*f);
        e = f;
      } else if (peek_name("is")) {
        ++pos_;
        auto t = std::make_shared<Expr>();
        t->kind = Expr::Kind::Test;
        if (peek_name("not")) {
          ++pos_;
          t->negated = true;
        }
        t->name = name_token("a test name");
        t->args.push_back(e);
        if (peek_op("(")) call_arguments(*t);
        else if (peek().kind == Token::Kind::String || peek().kind == Token::Kind::Int || peek_name("none") || peek_name("true") || peek_name("false"))
          t->args.push_back(primary());  // `is sameas false`, `is divisibleby 3`
        e = t;
      } else {
        return e;
      }
    }
  }

  std::string_view src_;
  std::string where_;
  std::vector<Item> items_;
  const std::vector<Token>* tokens_ = nullptr;
  std::size_t pos_ = 0, tag_offset_ = 0;
};

}  // namespace milora::text::jinja
