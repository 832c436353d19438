// A Jinja renderer for Hugging Face chat templates (tokenizer_config.json's "chat_template"),
// rendered as transformers renders them: jinja2 with trim_blocks and lstrip_blocks, the
// loopcontrols extension, and its globals raise_exception, strftime_now and namespace, its tojson
// (json.dumps: keys in their order, ", " and ": ", no ASCII escaping).
//
// The subset chat templates use: {{ }}, {% if/elif/else %}, {% for x in y [if c] %} with loop.*
// and else, {% set %} (also ns.attr, and {% set x %}...{% endset %}), {% macro %},
// {% generation %}, break/continue, comments, "-" and "+" whitespace control; literals, names,
// .attr, [i], [a:b:c], calls, filters, tests, not/and/or, comparisons, in, + - * / // % ~,
// "x if c else y"; string/dict methods (strip, split, startswith, items, get...). Anything else
// is a jinja::Error naming the template line.
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace frugal::jinja {

using Json = nlohmann::ordered_json;

// A template that does not parse or fails to render (raise_exception's message, an undefined
// name used as a value, an unsupported construct): what, with "line N: " in front.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Node;

class Template {
 public:
  explicit Template(std::string_view source);  // throws Error
  ~Template();
  Template(Template&&) noexcept;
  // The text, for a context object of variables (messages, add_generation_prompt, bos_token...).
  // Thread-safe: a parsed template is only read.
  std::string render(const Json& context) const;

 private:
  std::unique_ptr<Node> root_;
};

}  // namespace frugal::jinja
