// The chat-template engine on hand-written templates, where Jinja2's answer is known: whitespace
// control (the "-" modifiers, trim_blocks, lstrip_blocks), loop scopes and namespace(), Python's
// slices, operators and string methods, and the errors (the real templates against
// @huggingface/jinja are in test_golden.cpp). Also the Alpaca prompt, against Stanford Alpaca's
// published format.
#include <doctest/doctest.h>

#include <string>

#include "text/chat_template.hpp"

namespace {

std::string render(const std::string& source, nlohmann::json vars = nlohmann::json::object()) {
  milora::text::ChatTemplate t(source, "test template");
  const auto messages = vars.contains("messages") ? vars["messages"] : nlohmann::json::array();
  vars.erase("messages");
  return t.render(messages, vars.value("add_generation_prompt", false), vars);
}

}  // namespace

TEST_CASE("Jinja whitespace: '-' strips, block tags drop their newline and their line's indentation") {
  CHECK(render("a  {{- 'b' -}}  c") == "abc");
  CHECK(render("{% if true %}\nyes\n{% endif %}\nend") == "yes\nend");               // trim_blocks
  CHECK(render("x\n    {% if true %}\n    y\n    {% endif %}\nz") == "x\n    y\nz");  // lstrip_blocks
  CHECK(render("x {% if true %}y{% endif %}") == "x y");                               // not at a line's start: kept
  CHECK(render("{{ 'a' }}\n{# a comment #}\nb") == "a\nb");
  CHECK(render("  {%+ if true %}k{% endif %}") == "  k");
}

TEST_CASE("Jinja semantics: loop scope, namespace, loop variables, and/or, slices, methods, filters") {
  CHECK(render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}") == "1");  // no leak out of the loop
  CHECK(render("{% set ns = namespace(x=1) %}{% for i in [1, 2] %}{% set ns.x = i %}{% endfor %}{{ ns.x }}") == "2");
  CHECK(render("{% for m in ['a', 'b', 'c'] %}{{ loop.index0 }}{{ m }}{{ '|' if not loop.last }}{% endfor %}") == "0a|1b|2c");
  CHECK(render("{% for m in [1, 2, 3, 4] if m is even %}{{ m }}{{ loop.length }}{% endfor %}") == "2242");
  CHECK(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}") == "a=1;b=2;");
  CHECK(render("{% for i in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for i in range(5) %}{% if i == 3 %}{% break %}{% endif %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}") ==
        "02");
  CHECK(render("{{ 0 or 'x' }} {{ 'a' and 'b' }} {{ none or none }}") == "x b None");
  CHECK(render("{{ [1, 2, 3, 4][::-1] }} {{ 'hello'[1:3] }} {{ [1, 2, 3][-1] }} {{ 'abc'[::-1] }}") == "[4, 3, 2, 1] el 3 cba");
  CHECK(render("{{ '  x y  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ 'a</think>b'.split('</think>')[-1] }}|{{ '\\nq'.lstrip('\\n') }}") ==
        "x y|hi|b|q");
  CHECK(render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'b' in 'abc' }} {{ 2 not in [1, 2] }}") ==
        "True True True False");
  CHECK(render("{{ ' a ' | trim }}{{ [1, 2] | length }}{{ 'ab' | upper }}{{ x | default('d') }}{{ [1, 2] | join('-') }}") == "a2ABd1-2");
  CHECK(render("{{ {'a': [1, 'é'], 'b': none} | tojson }}") == "{\"a\": [1, \"é\"], \"b\": null}");
  CHECK(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 ~ 'a' }} {{ 10 - 2 * 3 }}") == "3 -4 1 3.5 1024 1a 4");
  CHECK(render("{{ x is defined }} {{ none is none }} {{ 'a' is string }} {{ 3 is not string }} {{ false is false }}") ==
        "False True True True True");
  CHECK(render("{{ m.content }}", {{"m", {{"content", "hi"}}}}) == "hi");
  CHECK(render("{{ m.missing is defined }}", {{"m", {{"content", "hi"}}}}) == "False");
  CHECK(render("{{ 'a' if false }}") == "");
}

TEST_CASE("Jinja errors name the template, the line and the construct") {
  CHECK_THROWS_WITH_AS(render("a\n{% macro f() %}{% endmacro %}"), "test template, line 2: the statement 'macro' is not supported",
                       milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{{ raise_exception('roles must alternate') }}"), "test template: raise_exception: roles must alternate",
                       milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{{ x.y }}"), "test template: 'x' is undefined, so it has no attribute 'y'", milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{{ 'a' + 1 }}"), doctest::Contains("unsupported operands for +: a string ('a') and a integer (1)"),
                       milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{% if true %}x"), doctest::Contains("the template ends before {% endif %}"), milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{{ x | wordwrap }}"), doctest::Contains("the filter 'wordwrap' is not supported"),
                       milora::text::jinja::template_error);
  CHECK_THROWS_WITH_AS(render("{{ 'a' "), doctest::Contains("a tag is not closed with }}"), milora::text::jinja::template_error);
}

TEST_CASE("The Alpaca prompt: Stanford Alpaca's two formats, then the answer") {
  const auto alpaca = milora::text::ChatTemplate::alpaca();
  const nlohmann::json no_input = {{{"role", "user"}, {"content", "Give three tips."}}, {{"role", "assistant"}, {"content", "Sleep."}}};
  CHECK(alpaca.render(no_input, false) ==
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nGive three tips.\n\n### Response:\nSleep.");
  const nlohmann::json with_input = {{{"role", "user"}, {"content", "Translate."}}, {{"role", "user"}, {"content", "Hallo"}}};
  CHECK(alpaca.render(with_input, true) ==
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n### Input:\nHallo\n\n### Response:\n");
}
