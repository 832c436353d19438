// frugal's Jinja (src/data/jinja.cpp) against jinja2 as transformers' apply_chat_template renders
// (tests/reference/chat_templates.py): models' chat templates as they ship (Qwen2.5, Llama 3.1 and
// 3.2, SmolLM2, Zephyr, Llama 2, Mistral, Gemma, Phi-3) and one that uses the rest of the subset,
// over conversations with and without a system message, several turns, tools and tool calls,
// whitespace and Unicode in the contents, none at all; with and without the generation prompt.
// The same text, or an error from both (raise_exception's message in frugal's). Templates that do
// not parse are one error naming the line.
#include <fstream>

#include "data/jinja.h"
#include "support/support.h"

namespace frugal {
namespace {

using jinja::Json;

Json conversations() {
  auto m = [](const char* role, const char* content) { return Json{{"role", role}, {"content", content}}; };
  Json tools = Json::parse(R"([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
      "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}}, "required": ["city"]}}}])");
  Json call = Json::parse(R"({"role": "assistant", "content": "", "tool_calls": [{"type": "function",
      "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}]})");
  return Json::array({
      Json{{"messages", {m("user", "What begat Enos?"), m("assistant", "Seth begat Enos.")}}},
      Json{{"messages", {m("system", "Be brief."), m("user", "Hi  "), m("assistant", " Hello! "), m("user", "More")}}},
      Json{{"messages", {m("user", "  Ünïcødé\n\n  {{ not code }} {% raw %}\t"), m("assistant", "Ça va — 😀\n"),
                         m("user", "'quotes' \"and\" \\ back"), m("assistant", "")}}},
      Json{{"messages", Json::array()}},
      Json{{"messages", {m("assistant", "I speak first.")}}},
      Json{{"messages", {m("system", "Use tools."), m("user", "Weather?"), call, m("tool", "{\"temp\": 4}"), m("assistant", "4 degrees.")}},
           {"tools", tools}},
  });
}

TEST(Jinja, ChatTemplatesRenderAsTransformersRendersThem) {
  test::TempDir d;
  ASSERT_TRUE(test::run_reference("chat_templates.py", "templates " + d / "t.json"));
  Json templates = Json::parse(std::ifstream(d / "t.json"));
  Json cases = Json::array();
  std::vector<std::string> names;
  for (auto& [name, source] : templates.items())
    for (auto& conv : conversations())
      for (bool gen : {false, true}) {
        Json ctx = {{"messages", conv["messages"]}, {"tools", conv.value("tools", Json())}, {"documents", nullptr},
                    {"add_generation_prompt", gen}, {"bos_token", "<s>"}, {"eos_token", "</s>"}};
        cases.push_back({{"template", source}, {"context", ctx}});
        names.push_back(name + " " + conv["messages"].dump().substr(0, 60) + (gen ? " +generation" : ""));
      }
  std::ofstream(d / "in.json") << cases.dump();
  ASSERT_TRUE(test::run_reference("chat_templates.py", "render " + d / "in.json " + d / "out.json"));
  Json ref = Json::parse(std::ifstream(d / "out.json"));
  ASSERT_EQ(ref.size(), cases.size());
  int texts = 0, errors = 0;
  for (size_t i = 0; i < cases.size(); i++) {
    SCOPED_TRACE(names[i]);
    std::string got, error;
    try {
      got = jinja::Template(cases[i]["template"].get<std::string>()).render(cases[i]["context"]);
    } catch (const jinja::Error& e) {
      error = e.what();
    }
    if (ref[i].contains("text")) {
      EXPECT_EQ(error, "");
      EXPECT_EQ(got, ref[i]["text"].get<std::string>());
      texts++;
    } else {
      EXPECT_NE(error, "") << "the reference failed: " << ref[i]["error"] << "; frugal rendered " << got;
      std::string r = ref[i]["error"];
      if (r.starts_with("TemplateError: ")) {
        EXPECT_NE(error.find(r.substr(15)), std::string::npos) << error << " / " << r;
      }
      errors++;
    }
  }
  EXPECT_GT(texts, 80);  // most cases render; some conversations each template refuses
  EXPECT_GT(errors, 10);
}

TEST(Jinja, ATemplateThatDoesNotParseIsOneErrorNamingItsLine) {
  auto error = [](const std::string& source) -> std::string {
    try {
      jinja::Template t(source);
      t.render(Json{{"messages", Json::array()}});
    } catch (const jinja::Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error("a\n{% if x %}\nno end"), "line 2: {% if %} is not closed");
  EXPECT_EQ(error("{{ 1 + }}"), "line 1: unexpected 'end of tag'");
  EXPECT_EQ(error("\n\n{% endfor %}"), "line 3: {% endfor %} without its opening tag");
  EXPECT_EQ(error("{% include 'x' %}"), "line 1: unexpected {% include %}");
  EXPECT_EQ(error("{{ x | wordwrap }}"), "line 1: |wordwrap of an undefined value");
  EXPECT_EQ(error("{{ 'x' | wordwrap }}"), "line 1: the filter |wordwrap is not supported on 'x'");
  EXPECT_EQ(error("{{ 'a' + 1 }}"), "line 1: cannot apply '+' to 'a' and 1");
  EXPECT_EQ(error("{{ messages[0]['role'] }}"), "line 1: an undefined value has no item role");
  EXPECT_EQ(error("{{ 'x' "), "line 1: a tag {{ is not closed");
  EXPECT_EQ(error("{% for m in messages %}{% else %}{{ raise_exception('none: ' ~ 1) }}{% endfor %}"), "line 1: none: 1");
  // what would overflow the stack, or take the machine's memory or time: one line too
  EXPECT_EQ(error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), "line 1: nested more than 200 deep");
  EXPECT_EQ(error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"), "line 1: nested more than 200 deep");
  std::string chain = "{{ x";
  for (int i = 0; i < 5000; i++) chain += ".a";
  EXPECT_EQ(error(chain + " }}"), "line 1: an expression nested more than 200 deep");
  std::string ifs;
  for (int i = 0; i < 5000; i++) ifs = "{% if 1 %}" + ifs + "{% endif %}";
  EXPECT_EQ(error(ifs), "line 1: nested more than 200 deep");
  EXPECT_EQ(error("{{ 99999999999999999999999 }}"), "line 1: the number 99999999999999999999999 is out of range");
  EXPECT_EQ(error("{% for i in range(300000000) %}{% endfor %}"), "line 1: range() of more than 100000 numbers (jinja2's sandbox limit)");
  EXPECT_EQ(error("{{ 'x' * 10000000000 }}"), "line 1: a string of more than 256 MiB");
}

}  // namespace
}  // namespace frugal
