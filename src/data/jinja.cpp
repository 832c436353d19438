// The Jinja subset of Hugging Face chat templates (see jinja.h). The source is cut into text,
// {{ expression }} and {% statement %} chunks with jinja2's whitespace rules (trim_blocks,
// lstrip_blocks, "-"), the chunks parsed into a tree, and the tree walked over JSON values with
// Python's semantics where templates can see them (truthiness, str(), ==, slices, json.dumps).
#include "data/jinja.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <unordered_map>
#include <vector>

namespace frugal::jinja {

namespace {

[[noreturn]] void fail(int line, const std::string& what) { throw Error(fmt::format("line {}: {}", line, what)); }

// Nesting (brackets, blocks, macro calls) is bounded: a template nested deeper is an error, not a
// stack overflow; jinja2 fails there too (Python's recursion limit).
constexpr int kMaxDepth = 200;
struct Deeper {
  Deeper(int& depth, int line) : d(depth) {
    if (++d > kMaxDepth) fail(line, fmt::format("nested more than {} deep", kMaxDepth));
  }
  ~Deeper() { d--; }
  int& d;
};

// ---- the source, cut into chunks ----

struct Chunk {
  enum Kind { text, expr, stmt } kind;
  std::string s;
  int line;
};

std::vector<Chunk> cut(std::string_view source) {
  // jinja2 reads the source as lines (\r\n and \r become \n) and drops one trailing newline
  std::string src;
  for (size_t i = 0; i < source.size(); i++) {
    if (source[i] == '\r') {
      src += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') i++;
    } else {
      src += source[i];
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  std::vector<Chunk> out;
  size_t pos = 0;
  int line = 1;
  bool strip_ws = false, strip_nl = false;  // what the tag before asks of the text after it
  auto lines_in = [&](size_t a, size_t b) { return int(std::count(src.begin() + long(a), src.begin() + long(b), '\n')); };
  while (true) {
    size_t open = pos;
    while ((open = src.find('{', open)) != std::string::npos &&
           (open + 1 >= src.size() || (src[open + 1] != '{' && src[open + 1] != '%' && src[open + 1] != '#')))
      open++;
    const size_t text_end = open == std::string::npos ? src.size() : open;
    std::string text = src.substr(pos, text_end - pos);
    if (strip_ws) {
      text.erase(0, text.find_first_not_of(" \t\n\v\f"));
      if (text.find_first_not_of(" \t\n\v\f") == std::string::npos) text.clear();
    } else if (strip_nl && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
    }
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Chunk::text, text, line});
      return out;
    }
    const char kind = src[open + 1];
    const char mod = open + 2 < src.size() ? src[open + 2] : 0;
    if (mod == '-') {
      text.erase(text.find_last_not_of(" \t\n\v\f") + 1);
      if (text.find_first_not_of(" \t\n\v\f") == std::string::npos) text.clear();
    } else if (kind != '{' && mod != '+') {  // lstrip_blocks: spaces before a block tag on its own line
      size_t n = 0;
      while (n < text_end - pos && (src[text_end - 1 - n] == ' ' || src[text_end - 1 - n] == '\t')) n++;
      if (text_end - n == 0 || src[text_end - n - 1] == '\n') text.resize(text.size() - std::min(n, text.size()));
    }
    if (!text.empty()) out.push_back({Chunk::text, text, line});
    line += lines_in(pos, open);
    const int tag_line = line;
    size_t body = open + 2 + (mod == '-' || mod == '+' ? 1 : 0), close;
    if (kind == '#') {
      close = src.find("#}", body);
      if (close == std::string::npos) fail(tag_line, "a comment {# is not closed");
    } else {
      const char end = kind == '{' ? '}' : '%';
      close = body;
      int depth = 0;  // brackets open: "}}" inside {'k': {}} does not end the tag
      for (char quote = 0; close + 1 < src.size(); close++) {
        char c = src[close];
        if (quote) {
          if (c == '\\') close++;
          else if (c == quote) quote = 0;
        } else if (c == '\'' || c == '"') {
          quote = c;
        } else if (c == end && src[close + 1] == '}' && depth == 0) {
          break;
        } else if (c == '(' || c == '[' || c == '{') {
          depth++;
        } else if ((c == ')' || c == ']' || c == '}') && depth > 0) {
          depth--;
        }
      }
      if (close + 1 >= src.size()) fail(tag_line, fmt::format("a tag {}{} is not closed", '{', kind));
    }
    size_t inner_end = close;
    strip_ws = close > body && src[close - 1] == '-';
    if (strip_ws) inner_end--;
    strip_nl = kind != '{';
    if (kind != '#') out.push_back({kind == '{' ? Chunk::expr : Chunk::stmt, src.substr(body, inner_end - body), tag_line});
    line += lines_in(open, close + 2);
    pos = close + 2;
  }
}

// ---- expressions: tokens and tree ----

struct Tok {
  enum Kind { name, num, str, op, end } kind;
  std::string s;
  Json value;
};

std::vector<Tok> lex(const std::string& code, int line) {
  std::vector<Tok> t;
  size_t i = 0;
  while (i < code.size()) {
    char c = code[i];
    if (std::isspace(uint8_t(c))) {
      i++;
    } else if (std::isalpha(uint8_t(c)) || c == '_') {
      size_t j = i;
      while (j < code.size() && (std::isalnum(uint8_t(code[j])) || code[j] == '_')) j++;
      t.push_back({Tok::name, code.substr(i, j - i), {}});
      i = j;
    } else if (std::isdigit(uint8_t(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < code.size() && (std::isdigit(uint8_t(code[j])) || code[j] == '_' ||
                                 (code[j] == '.' && j + 1 < code.size() && std::isdigit(uint8_t(code[j + 1]))))) {
        is_float |= code[j] == '.';
        j++;
      }
      std::string digits;
      for (size_t k = i; k < j; k++)
        if (code[k] != '_') digits += code[k];
      try {
        t.push_back({Tok::num, digits, is_float ? Json(std::stod(digits)) : Json(std::stoll(digits))});
      } catch (const std::out_of_range&) {
        fail(line, fmt::format("the number {} is out of range", digits));
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string s;
      size_t j = i + 1;
      for (; j < code.size() && code[j] != c; j++) {
        if (code[j] != '\\' || j + 1 >= code.size()) {
          s += code[j];
          continue;
        }
        char e = code[++j];
        switch (e) {
          case 'n': s += '\n'; break;
          case 't': s += '\t'; break;
          case 'r': s += '\r'; break;
          case '0': s += '\0'; break;
          case '\\': case '\'': case '"': s += e; break;
          case '\n': break;
          default: s += '\\'; s += e;
        }
      }
      if (j >= code.size()) fail(line, "a string is not closed");
      t.push_back({Tok::str, {}, Json(s)});
      i = j + 1;
    } else {
      static const char* ops[] = {"==", "!=", "<=", ">=", "//", "**", "(", ")", "[", "]", "{", "}", ".", ",", ":",
                                  "|",  "~",  "+",  "-",  "*",  "/",  "%", "<", ">", "="};
      const char* hit = nullptr;
      for (const char* o : ops)
        if (code.compare(i, std::strlen(o), o) == 0) {
          hit = o;
          break;
        }
      if (!hit) fail(line, fmt::format("unexpected character '{}'", c));
      t.push_back({Tok::op, hit, {}});
      i += std::strlen(hit);
    }
  }
  t.push_back({Tok::end, {}, {}});
  return t;
}

struct Expr;
using ExprP = std::unique_ptr<Expr>;
struct Expr {
  enum Kind { lit, name, attr, item, slice, call, filter, test, not_, neg, bin, cond, list, dict } kind;
  std::string s;  // name, attribute, operator, filter or test
  Json value;     // lit
  std::vector<ExprP> a;                                  // operands, then positional arguments
  std::vector<std::pair<std::string, ExprP>> kw;         // keyword arguments
  bool negated = false;                                  // "is not"
  int depth = 1;                                         // of the tree below it
};

ExprP make(Expr::Kind k, std::string s = {}) {
  auto e = std::make_unique<Expr>();
  e->kind = k;
  e->s = std::move(s);
  return e;
}

// A node whose children are in place: its depth, bounded (x.a.a.a... and 1 + 1 + 1... nest
// without brackets, and a tree deeper than the stack would overflow it when walked or freed).
ExprP deep(ExprP e, int line) {
  for (auto& c : e->a)
    if (c) e->depth = std::max(e->depth, c->depth + 1);
  for (auto& [k, c] : e->kw) e->depth = std::max(e->depth, c->depth + 1);
  if (e->depth > kMaxDepth) fail(line, fmt::format("an expression nested more than {} deep", kMaxDepth));
  return e;
}

class Parser {
 public:
  Parser(const std::string& code, int line) : t_(lex(code, line)), line_(line) {}

  bool at_end() const { return t_[i_].kind == Tok::end; }
  bool is(const char* s) const { return (t_[i_].kind == Tok::op || t_[i_].kind == Tok::name) && t_[i_].s == s; }
  bool accept(const char* s) {
    if (!is(s)) return false;
    i_++;
    return true;
  }
  void expect(const char* s) {
    if (!accept(s)) fail(line_, fmt::format("expected '{}', found '{}'", s, here()));
  }
  std::string here() const { return t_[i_].kind == Tok::end ? "end of tag" : t_[i_].kind == Tok::str ? t_[i_].value.get<std::string>() : t_[i_].s; }
  std::string name() {
    if (t_[i_].kind != Tok::name) fail(line_, fmt::format("expected a name, found '{}'", here()));
    return t_[i_++].s;
  }
  void done() {
    if (!at_end()) fail(line_, fmt::format("unexpected '{}'", here()));
  }

  // "x if c else y"; with_cond false: a for loop's iterable, whose "if" filters
  ExprP expr(bool with_cond = true) {
    Deeper guard(depth_, line_);
    ExprP e = or_();
    if (with_cond && accept("if")) {
      auto c = make(Expr::cond);
      c->a.push_back(or_());
      c->a.push_back(std::move(e));
      c->a.push_back(accept("else") ? expr() : nullptr);
      return deep(std::move(c), line_);
    }
    return e;
  }

 private:
  ExprP binary(ExprP l, const std::string& op, ExprP r) {
    auto e = make(Expr::bin, op);
    e->a.push_back(std::move(l));
    e->a.push_back(std::move(r));
    return deep(std::move(e), line_);
  }
  // one left-associative level: next (op next)...
  template <class Next>
  ExprP chain(std::initializer_list<const char*> ops, Next next) {
    ExprP e = next();
    while (true) {
      const char* op = nullptr;
      for (const char* o : ops)
        if (is(o)) op = o;
      if (!op) return e;
      i_++;
      e = binary(std::move(e), op, next());
    }
  }
  ExprP or_() { return chain({"or"}, [&] { return and_(); }); }
  ExprP and_() { return chain({"and"}, [&] { return not_(); }); }
  ExprP not_() {
    Deeper guard(depth_, line_);
    if (accept("not")) {
      auto e = make(Expr::not_);
      e->a.push_back(not_());
      return deep(std::move(e), line_);
    }
    return compare();
  }
  ExprP compare() {
    ExprP e = math1();
    while (true) {
      std::string op;
      for (const char* o : {"==", "!=", "<=", ">=", "<", ">", "in"})
        if (accept(o)) {
          op = o;
          break;
        }
      if (op.empty() && is("not") && t_[i_ + 1].kind == Tok::name && t_[i_ + 1].s == "in") {
        i_ += 2;
        op = "not in";
      }
      if (op.empty()) return e;
      e = binary(std::move(e), op, math1());
    }
  }
  ExprP math1() { return chain({"+", "-"}, [&] { return concat(); }); }
  ExprP concat() { return chain({"~"}, [&] { return math2(); }); }
  ExprP math2() { return chain({"*", "/", "//", "%"}, [&] { return unary(); }); }
  ExprP unary() {
    Deeper guard(depth_, line_);
    if (accept("-")) {
      auto e = make(Expr::neg);
      e->a.push_back(unary());
      return deep(std::move(e), line_);
    }
    accept("+");
    return filters(postfix(primary()));
  }
  void args(Expr& e) {  // after "(": positional and keyword arguments up to ")"
    while (!accept(")")) {
      if (t_[i_].kind == Tok::name && t_[i_ + 1].kind == Tok::op && t_[i_ + 1].s == "=") {
        std::string k = name();
        i_++;
        e.kw.emplace_back(k, expr());
      } else {
        e.a.push_back(expr());
      }
      if (!is(")")) expect(",");
    }
  }
  ExprP primary() {
    const Tok& t = t_[i_];
    if (t.kind == Tok::num || t.kind == Tok::str) {
      i_++;
      auto e = make(Expr::lit);
      e->value = t.value;
      while (t.kind == Tok::str && t_[i_].kind == Tok::str) e->value = e->value.get<std::string>() + t_[i_++].value.get<std::string>();
      return e;
    }
    if (t.kind == Tok::name) {
      i_++;
      auto e = make(Expr::lit);
      if (t.s == "true" || t.s == "True") e->value = true;
      else if (t.s == "false" || t.s == "False") e->value = false;
      else if (t.s == "none" || t.s == "None") e->value = nullptr;
      else e = make(Expr::name, t.s);
      return e;
    }
    if (accept("(")) {
      ExprP e = expr();
      if (accept(",")) {  // a tuple: a list
        auto l = make(Expr::list);
        l->a.push_back(std::move(e));
        while (!is(")")) {
          l->a.push_back(expr());
          if (!is(")")) expect(",");
        }
        e = deep(std::move(l), line_);
      }
      expect(")");
      return e;
    }
    if (accept("[")) {
      auto e = make(Expr::list);
      while (!accept("]")) {
        e->a.push_back(expr());
        if (!is("]")) expect(",");
      }
      return deep(std::move(e), line_);
    }
    if (accept("{")) {
      auto e = make(Expr::dict);
      while (!accept("}")) {
        e->a.push_back(expr());
        expect(":");
        e->a.push_back(expr());
        if (!is("}")) expect(",");
      }
      return deep(std::move(e), line_);
    }
    fail(line_, fmt::format("unexpected '{}'", here()));
  }
  ExprP postfix(ExprP e) {
    while (true) {
      if (accept(".")) {
        auto a = make(Expr::attr, t_[i_].kind == Tok::num ? t_[i_++].s : name());
        a->a.push_back(std::move(e));
        e = deep(std::move(a), line_);
      } else if (accept("[")) {
        ExprP parts[3];
        bool slice = false;
        for (int k = 0; k < 3; k++) {
          if (!is(":") && !is("]")) parts[k] = expr();
          if (k == 2 || !accept(":")) break;
          slice = true;
        }
        expect("]");
        auto s = make(slice ? Expr::slice : Expr::item);
        s->a.push_back(std::move(e));
        for (int k = 0; k < (slice ? 3 : 1); k++) s->a.push_back(std::move(parts[k]));
        e = deep(std::move(s), line_);
      } else if (accept("(")) {
        auto c = make(Expr::call);
        c->a.push_back(std::move(e));
        args(*c);
        e = deep(std::move(c), line_);
      } else {
        return e;
      }
    }
  }
  ExprP filters(ExprP e) {
    while (true) {
      if (accept("|")) {
        auto f = make(Expr::filter, name());
        f->a.push_back(std::move(e));
        if (accept("(")) args(*f);
        e = deep(std::move(f), line_);
      } else if (accept("is")) {
        auto t = make(Expr::test);
        t->negated = accept("not");
        t->s = is("none") || is("true") || is("false") ? t_[i_++].s : name();
        t->a.push_back(std::move(e));
        if (accept("(")) {
          args(*t);
        } else if (t_[i_].kind == Tok::num || t_[i_].kind == Tok::str ||
                   (t_[i_].kind == Tok::name && !is("and") && !is("or") && !is("else") && !is("if") && !is("in") && !is("not"))) {
          t->a.push_back(primary());  // "is divisibleby 3", "is sameas x"
        }
        e = deep(std::move(t), line_);
      } else {
        return e;
      }
    }
  }

  std::vector<Tok> t_;
  size_t i_ = 0;
  int line_;
  int depth_ = 0;
};

// ---- statements ----

}  // namespace

struct Node {
  enum Kind { seq, text, out, if_, for_, set, macro, brk, cont } kind = seq;
  std::string s;                   // text; set's and macro's name
  std::string attr;                // set ns.attr
  std::vector<std::string> names;  // for's targets; macro's parameters
  std::vector<ExprP> defaults;     // macro's parameter defaults (null: none)
  ExprP e, cond;                   // out, if, set (null: a block set), for's iterable; for's filter
  std::vector<std::unique_ptr<Node>> body, orelse;
  int line = 0;
};

namespace {

class Builder {
 public:
  explicit Builder(std::vector<Chunk> c) : c_(std::move(c)) {}

  // Nodes up to a statement whose first word is in `ends` (returned, the chunk left unread), or
  // the end of the source.
  std::string block(std::vector<std::unique_ptr<Node>>& into, std::initializer_list<const char*> ends, int opened_at,
                    const char* opener) {  // opener null: the whole template, `ends` are stray closing tags
    Deeper guard(depth_, i_ < c_.size() ? c_[i_].line : opened_at);
    while (i_ < c_.size()) {
      const Chunk& ch = c_[i_];
      auto n = std::make_unique<Node>();
      n->line = ch.line;
      if (ch.kind == Chunk::text) {
        n->kind = Node::text;
        n->s = ch.s;
        i_++;
      } else if (ch.kind == Chunk::expr) {
        Parser p(ch.s, ch.line);
        n->kind = Node::out;
        n->e = p.expr();
        p.done();
        i_++;
      } else {
        Parser p(ch.s, ch.line);
        std::string word = p.name();
        for (const char* e : ends)
          if (word == e) return word;
        i_++;
        if (!statement(word, p, *n)) continue;
      }
      into.push_back(std::move(n));
    }
    if (opener) fail(opened_at, fmt::format("{{% {} %}} is not closed", opener));
    return {};
  }

 private:
  Parser next_tag(std::string& word) {
    Parser p(c_[i_].s, c_[i_].line);
    word = p.name();
    i_++;
    return p;
  }
  bool statement(const std::string& word, Parser& p, Node& n) {
    if (word == "if") {
      n.kind = Node::if_;
      n.cond = p.expr();
      p.done();
      Node* at = &n;
      while (true) {
        std::string end = block(at->body, {"elif", "else", "endif"}, n.line, "if");
        Parser q = next_tag(end);
        if (end == "endif") {
          q.done();
          break;
        }
        auto branch = std::make_unique<Node>();
        branch->line = c_[i_ - 1].line;
        if (end == "elif") {
          branch->kind = Node::if_;
          branch->cond = q.expr();
          q.done();
          Node* b = branch.get();
          at->orelse.push_back(std::move(branch));
          at = b;
        } else {
          q.done();
          std::string e2 = block(at->orelse, {"endif"}, n.line, "if");
          next_tag(e2).done();
          break;
        }
      }
      return true;
    }
    if (word == "for") {
      n.kind = Node::for_;
      do n.names.push_back(p.name());
      while (p.accept(","));
      p.expect("in");
      n.e = p.expr(false);
      if (p.accept("if")) n.cond = p.expr(false);
      p.done();
      std::string end = block(n.body, {"else", "endfor"}, n.line, "for");
      next_tag(end).done();
      if (end == "else") {
        block(n.orelse, {"endfor"}, n.line, "for");
        next_tag(end).done();
      }
      return true;
    }
    if (word == "set") {
      n.kind = Node::set;
      n.s = p.name();
      if (p.accept(".")) n.attr = p.name();
      if (p.at_end()) {  // {% set x %}...{% endset %}: x is what the block renders
        std::string end = block(n.body, {"endset"}, n.line, "set");
        next_tag(end).done();
        return true;
      }
      p.expect("=");
      n.e = p.expr();
      p.done();
      return true;
    }
    if (word == "macro") {
      n.kind = Node::macro;
      n.s = p.name();
      p.expect("(");
      while (!p.accept(")")) {
        n.names.push_back(p.name());
        n.defaults.push_back(p.accept("=") ? p.expr() : nullptr);
        if (!p.is(")")) p.expect(",");
      }
      p.done();
      std::string end = block(n.body, {"endmacro"}, n.line, "macro");
      next_tag(end).done();
      return true;
    }
    if (word == "generation") {  // transformers' assistant-mask marker: its body renders as it is
      p.done();
      n.kind = Node::seq;
      std::string end = block(n.body, {"endgeneration"}, n.line, "generation");
      next_tag(end).done();
      return true;
    }
    if (word == "break" || word == "continue") {
      p.done();
      n.kind = word == "break" ? Node::brk : Node::cont;
      return true;
    }
    fail(n.line, fmt::format("unexpected {{% {} %}}", word));
  }

  std::vector<Chunk> c_;
  size_t i_ = 0;
  int depth_ = 0;

 public:
  int line() const { return i_ < c_.size() ? c_[i_].line : 0; }
};

// ---- values ----

struct Value {
  Json v;
  bool undefined = false;
  const Node* macro = nullptr;
};
Value undef() { return Value{nullptr, true}; }
Value val(Json j) { return Value{std::move(j)}; }

bool truthy(const Value& x) {
  if (x.undefined) return false;
  if (x.macro) return true;
  const Json& v = x.v;
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer()) return v.get<int64_t>() != 0;
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  return !v.empty();
}

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string py_quote(const std::string& s) {
  char q = s.find('\'') != std::string::npos && s.find('"') == std::string::npos ? '"' : '\'';
  std::string o(1, q);
  for (char c : s) {
    if (c == q || c == '\\') o += '\\';
    if (c == '\n') o += "\\n";
    else if (c == '\t') o += "\\t";
    else if (c == '\r') o += "\\r";
    else o += c;
  }
  return o + q;
}

std::string repr(const Json& v);
std::string str(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_float()) return py_float(v.get<double>());
  if (v.is_number()) return v.dump();
  return repr(v);
}
std::string repr(const Json& v) {
  if (v.is_string()) return py_quote(v.get<std::string>());
  if (v.is_array()) {
    std::string o = "[";
    for (size_t i = 0; i < v.size(); i++) o += (i ? ", " : "") + repr(v[i]);
    return o + "]";
  }
  if (v.is_object()) {
    std::string o = "{";
    bool first = true;
    for (auto& [k, x] : v.items()) {
      o += (first ? "" : ", ") + py_quote(k) + ": " + repr(x);
      first = false;
    }
    return o + "}";
  }
  return str(v);
}
std::string str(const Value& x) { return x.undefined ? std::string() : str(x.v); }

// Python's json.dumps(v, ensure_ascii=False, indent=indent, separators=...)
void dumps(const Json& v, std::string& o, int indent, int depth, const std::string& item_sep, const std::string& key_sep) {
  auto newline = [&](int d) {
    if (indent >= 0) o += '\n' + std::string(size_t(indent * d), ' ');
  };
  if (v.is_string()) {
    o += '"';
    for (unsigned char c : v.get_ref<const std::string&>()) {
      switch (c) {
        case '"': o += "\\\""; break;
        case '\\': o += "\\\\"; break;
        case '\n': o += "\\n"; break;
        case '\r': o += "\\r"; break;
        case '\t': o += "\\t"; break;
        case '\b': o += "\\b"; break;
        case '\f': o += "\\f"; break;
        default:
          if (c < 0x20) o += fmt::format("\\u{:04x}", c);
          else o += char(c);
      }
    }
    o += '"';
  } else if (v.is_array() || v.is_object()) {
    if (v.empty()) {
      o += v.is_array() ? "[]" : "{}";
      return;
    }
    o += v.is_array() ? '[' : '{';
    bool first = true;
    for (auto& [k, x] : v.items()) {
      if (!first) o += item_sep;
      first = false;
      newline(depth + 1);
      if (v.is_object()) {
        dumps(Json(k), o, -1, 0, item_sep, key_sep);
        o += key_sep;
      }
      dumps(x, o, indent, depth + 1, item_sep, key_sep);
    }
    newline(depth);
    o += v.is_array() ? ']' : '}';
  } else if (v.is_null()) {
    o += "null";
  } else if (v.is_boolean()) {
    o += v.get<bool>() ? "true" : "false";
  } else if (v.is_number_float()) {
    double d = v.get<double>();
    o += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : py_float(d);
  } else {
    o += v.dump();
  }
}

// UTF-8 code point starts of s (and s.size() at the end): Python indexes strings by code point
std::vector<size_t> code_points(const std::string& s) {
  std::vector<size_t> at;
  for (size_t i = 0; i < s.size(); i++)
    if ((uint8_t(s[i]) & 0xC0) != 0x80) at.push_back(i);
  at.push_back(s.size());
  return at;
}

// A string's characters, each a string: what Python iterates
Json characters(const std::string& s) {
  auto cp = code_points(s);
  Json l = Json::array();
  for (size_t k = 0; k + 1 < cp.size(); k++) l.push_back(s.substr(cp[k], cp[k + 1] - cp[k]));
  return l;
}

// Python's str.isspace for the characters text holds: ASCII and Unicode spaces
size_t space_at(const std::string& s, size_t i) {  // length of a space character at i, 0 if none
  uint8_t c = uint8_t(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return 1;
  static const char* u[] = {"\u0085", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005",
                            "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"};
  for (const char* x : u)
    if (s.compare(i, std::strlen(x), x) == 0) return std::strlen(x);
  return 0;
}
std::string strip(const std::string& s, bool left, bool right, const Value* chars) {
  size_t b = 0, e = s.size();
  if (chars && !chars->undefined && !chars->v.is_null()) {
    std::string cs = str(*chars);
    if (left) b = std::min(s.find_first_not_of(cs), e);
    if (right) e = std::max(s.find_last_not_of(cs) + 1, b);
    return s.substr(b, e - b);
  }
  if (left)
    while (b < e && space_at(s, b)) b += space_at(s, b);
  if (right)
    while (e > b) {
      size_t k = e - 1;
      while (k > b && (uint8_t(s[k]) & 0xC0) == 0x80) k--;
      size_t n = space_at(s, k);
      if (!n || k + n != e) break;
      e = k;
    }
  return s.substr(b, e - b);
}

class Renderer {
 public:
  explicit Renderer(const Json& context) {
    scopes_.emplace_back();
    for (auto& [k, v] : context.items()) scopes_.back()[k] = val(v);
  }

  enum class Flow { normal, brk, cont };

  Flow exec(const Node& n, std::string& out) {
    line_ = n.line;
    switch (n.kind) {
      case Node::seq:
        for (auto& c : n.body)
          if (Flow f = exec(*c, out); f != Flow::normal) return f;
        return Flow::normal;
      case Node::text: out += n.s; return Flow::normal;
      case Node::out: out += str(eval(*n.e)); return Flow::normal;
      case Node::if_: {
        Deeper guard(depth_, n.line);
        for (auto& c : truthy(eval(*n.cond)) ? n.body : n.orelse)
          if (Flow f = exec(*c, out); f != Flow::normal) return f;
        return Flow::normal;
      }
      case Node::for_: {
        Deeper guard(depth_, n.line);
        loop(n, out);
        return Flow::normal;
      }
      case Node::set: {
        Value v;
        if (n.e) {
          v = eval(*n.e);
        } else {
          std::string text;
          for (auto& c : n.body) exec(*c, text);
          v = val(text);
        }
        if (n.attr.empty()) {
          scopes_.back()[n.s] = std::move(v);
          return Flow::normal;
        }
        Value* ns = find(n.s);
        if (!ns || !ns->v.is_object()) fail(n.line, fmt::format("cannot set {}.{}: {} is not a namespace", n.s, n.attr, n.s));
        ns->v[n.attr] = std::move(v.v);
        return Flow::normal;
      }
      case Node::macro: scopes_.back()[n.s] = Value{nullptr, false, &n}; return Flow::normal;
      case Node::brk: return Flow::brk;
      case Node::cont: return Flow::cont;
    }
    return Flow::normal;
  }

 private:
  [[noreturn]] void error(const std::string& what) { fail(line_, what); }

  Value* find(const std::string& name) {
    for (auto s = scopes_.rbegin(); s != scopes_.rend(); ++s)
      if (auto it = s->find(name); it != s->end()) return &it->second;
    return nullptr;
  }

  void loop(const Node& n, std::string& out) {
    Value seq = eval(*n.e);
    Json items = Json::array();
    if (seq.v.is_array()) {
      items = seq.v;
    } else if (seq.v.is_object()) {
      for (auto& [k, x] : seq.v.items()) items.push_back(k);
    } else if (seq.v.is_string()) {
      items = characters(seq.v.get<std::string>());
    } else if (!seq.undefined && !seq.v.is_null()) {
      error(fmt::format("cannot loop over {}", str(seq.v)));
    }
    scopes_.emplace_back();
    auto bind = [&](const Json& item) {
      if (n.names.size() == 1) {
        scopes_.back()[n.names[0]] = val(item);
        return;
      }
      if (!item.is_array() || item.size() != n.names.size()) error("cannot unpack a loop item into " + std::to_string(n.names.size()) + " names");
      for (size_t k = 0; k < n.names.size(); k++) scopes_.back()[n.names[k]] = val(item[k]);
    };
    if (n.cond) {  // "for x in y if c": the filter runs first, loop.* counts what it kept
      Json kept = Json::array();
      for (auto& item : items) {
        bind(item);
        if (truthy(eval(*n.cond))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t len = int64_t(items.size());
    for (int64_t k = 0; k < len; k++) {
      scopes_.back().clear();  // what the body sets lasts one iteration, as in jinja2
      bind(items[size_t(k)]);
      scopes_.back()["loop"] = val(Json{{"index0", k}, {"index", k + 1}, {"first", k == 0}, {"last", k == len - 1},
                                        {"length", len}, {"revindex", len - k}, {"revindex0", len - k - 1},
                                        {"previtem", k > 0 ? items[size_t(k - 1)] : Json()},
                                        {"nextitem", k + 1 < len ? items[size_t(k + 1)] : Json()}});
      Flow f = Flow::normal;
      for (auto& c : n.body)
        if ((f = exec(*c, out)) != Flow::normal) break;
      if (f == Flow::brk) break;
    }
    if (len == 0)
      for (auto& c : n.orelse) exec(*c, out);
    scopes_.pop_back();
  }

  Value call_macro(const Node& m, std::vector<Value> args, std::vector<std::pair<std::string, Value>> kw) {
    Deeper guard(depth_, line_);
    scopes_.emplace_back();
    for (size_t k = 0; k < m.names.size(); k++) {
      Value v = k < args.size() ? args[k] : m.defaults[k] ? eval(*m.defaults[k]) : undef();
      for (auto& [name, x] : kw)
        if (name == m.names[k]) v = x;
      scopes_.back()[m.names[k]] = v;
    }
    std::string out;
    const int line = line_;
    for (auto& c : m.body) exec(*c, out);
    line_ = line;
    scopes_.pop_back();
    return val(out);
  }

  static int64_t index(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::lit: return val(e.value);
      case Expr::name: {
        if (Value* v = find(e.s)) return *v;
        for (const char* f : {"raise_exception", "strftime_now", "namespace", "dict", "range"})
          if (e.s == f) return val(std::string("<built-in function ") + f + ">");  // defined, callable by name
        return undef();
      }
      case Expr::attr:
      case Expr::item: {
        Value o = eval(*e.a[0]);
        Json key = e.kind == Expr::attr ? Json(e.s) : eval(*e.a[1]).v;
        if (o.undefined || o.v.is_null())
          error(fmt::format("{} has no {} {}", o.undefined ? "an undefined value" : "None", e.kind == Expr::attr ? "attribute" : "item", str(key)));
        if (o.v.is_object()) {
          if (key.is_string() && o.v.contains(key.get<std::string>())) return val(o.v[key.get<std::string>()]);
          return undef();
        }
        if ((o.v.is_array() || o.v.is_string()) && (key.is_number_integer() || (e.kind == Expr::attr && !key.get<std::string>().empty() && std::isdigit(uint8_t(key.get<std::string>()[0]))))) {
          int64_t i = key.is_number_integer() ? key.get<int64_t>() : std::stoll(key.get<std::string>());
          if (o.v.is_array()) {
            i = index(i, int64_t(o.v.size()));
            return i >= 0 && i < int64_t(o.v.size()) ? val(o.v[size_t(i)]) : undef();
          }
          auto cp = code_points(o.v.get<std::string>());
          i = index(i, int64_t(cp.size()) - 1);
          if (i < 0 || i + 1 >= int64_t(cp.size())) return undef();
          return val(o.v.get<std::string>().substr(cp[size_t(i)], cp[size_t(i + 1)] - cp[size_t(i)]));
        }
        return undef();
      }
      case Expr::slice: {
        Value o = eval(*e.a[0]);
        auto bound = [&](int k) -> std::optional<int64_t> {
          if (!e.a[size_t(k)]) return std::nullopt;
          Value b = eval(*e.a[size_t(k)]);
          if (b.v.is_null()) return std::nullopt;
          if (!b.v.is_number_integer()) error("a slice bound is not an integer");
          return b.v.get<int64_t>();
        };
        std::optional<int64_t> lo = bound(1), hi = bound(2), step = bound(3);
        const bool is_str = o.v.is_string();
        if (!is_str && !o.v.is_array()) error("only lists and strings can be sliced");
        std::vector<size_t> cp = is_str ? code_points(o.v.get<std::string>()) : std::vector<size_t>();
        const int64_t n = is_str ? int64_t(cp.size()) - 1 : int64_t(o.v.size());
        const int64_t st = step.value_or(1);
        if (st == 0) error("a slice step cannot be zero");
        auto clamp = [&](std::optional<int64_t> x, int64_t dflt) {
          if (!x) return dflt;
          int64_t i = index(*x, n);
          return st > 0 ? std::clamp<int64_t>(i, 0, n) : std::clamp<int64_t>(i, -1, n - 1);
        };
        int64_t a = clamp(lo, st > 0 ? 0 : n - 1), b = clamp(hi, st > 0 ? n : -1);
        Json r = is_str ? Json("") : Json::array();
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
          if (is_str) r.get_ref<std::string&>() += o.v.get<std::string>().substr(cp[size_t(i)], cp[size_t(i + 1)] - cp[size_t(i)]);
          else r.push_back(o.v[size_t(i)]);
        }
        return val(r);
      }
      case Expr::call: return call(e);
      case Expr::filter: return filter(e);
      case Expr::test: {
        bool r = test(e);
        return val(e.negated ? !r : r);
      }
      case Expr::not_: return val(!truthy(eval(*e.a[0])));
      case Expr::neg: {
        Value x = eval(*e.a[0]);
        if (x.v.is_number_integer()) return val(-x.v.get<int64_t>());
        if (x.v.is_number()) return val(-x.v.get<double>());
        error("cannot negate " + str(x));
      }
      case Expr::bin: return binary(e);
      case Expr::cond:
        if (truthy(eval(*e.a[0]))) return eval(*e.a[1]);
        return e.a[2] ? eval(*e.a[2]) : undef();
      case Expr::list: {
        Json l = Json::array();
        for (auto& x : e.a) l.push_back(eval(*x).v);
        return val(l);
      }
      case Expr::dict: {
        Json d = Json::object();
        for (size_t k = 0; k + 1 < e.a.size(); k += 2) d[str(eval(*e.a[k]))] = eval(*e.a[k + 1]).v;
        return val(d);
      }
    }
    return undef();
  }

  bool equal(const Value& a, const Value& b) {
    if (a.undefined || b.undefined) return a.undefined && b.undefined;
    return a.v == b.v;
  }
  bool contains(const Value& hay, const Value& needle) {
    if (hay.undefined) return false;  // jinja2's Undefined iterates as empty
    if (hay.v.is_string()) {
      if (!needle.v.is_string()) error("'in <string>' needs a string on its left");
      return hay.v.get<std::string>().find(needle.v.get<std::string>()) != std::string::npos;
    }
    if (hay.v.is_array()) {
      for (auto& x : hay.v)
        if (x == needle.v) return true;
      return false;
    }
    if (hay.v.is_object()) return needle.v.is_string() && hay.v.contains(needle.v.get<std::string>());
    error(fmt::format("'in' needs a string, list or mapping, not {}", hay.undefined ? "an undefined value" : str(hay.v)));
  }

  Value binary(const Expr& e) {
    const std::string& op = e.s;
    if (op == "and") {
      Value l = eval(*e.a[0]);
      return truthy(l) ? eval(*e.a[1]) : l;
    }
    if (op == "or") {
      Value l = eval(*e.a[0]);
      return truthy(l) ? l : eval(*e.a[1]);
    }
    Value l = eval(*e.a[0]), r = eval(*e.a[1]);
    if (op == "~") return val(str(l) + str(r));
    if (op == "==") return val(equal(l, r));
    if (op == "!=") return val(!equal(l, r));
    if (op == "in") return val(contains(r, l));
    if (op == "not in") return val(!contains(r, l));
    if (l.undefined || r.undefined) error(fmt::format("an undefined value in '{}'", op));
    const Json &a = l.v, &b = r.v;
    if (op == "+") {
      if (a.is_string() && b.is_string()) return val(a.get<std::string>() + b.get<std::string>());
      if (a.is_array() && b.is_array()) {
        Json c = a;
        for (auto& x : b) c.push_back(x);
        return val(c);
      }
    }
    if (a.is_string() && b.is_string() && (op == "<" || op == ">" || op == "<=" || op == ">=")) {
      int c = a.get<std::string>().compare(b.get<std::string>());
      return val(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "*" && ((a.is_string() && b.is_number_integer()) || (a.is_number_integer() && b.is_string()))) {
      std::string s = a.is_string() ? a.get<std::string>() : b.get<std::string>(), o;
      const int64_t times = (a.is_string() ? b : a).get<int64_t>();
      if (times > 0 && int64_t(s.size()) > (int64_t(1) << 28) / times) error("a string of more than 256 MiB");
      for (int64_t k = times; k > 0; k--) o += s;
      return val(o);
    }
    if (!(a.is_number() || a.is_boolean()) || !(b.is_number() || b.is_boolean()))
      error(fmt::format("cannot apply '{}' to {} and {}", op, repr(a), repr(b)));
    auto num = [](const Json& j) { return j.is_boolean() ? double(j.get<bool>()) : j.get<double>(); };
    auto whole = [](const Json& j) { return j.is_boolean() ? int64_t(j.get<bool>()) : j.get<int64_t>(); };
    const bool ints = !a.is_number_float() && !b.is_number_float();
    const double x = num(a), y = num(b);
    if (op == "<") return val(x < y);
    if (op == ">") return val(x > y);
    if (op == "<=") return val(x <= y);
    if (op == ">=") return val(x >= y);
    if (op == "/") {
      if (y == 0) error("division by zero");
      return val(x / y);
    }
    if (ints) {
      int64_t i = whole(a), j = whole(b);
      if ((op == "//" || op == "%") && j == 0) error("division by zero");
      if (op == "+") return val(i + j);
      if (op == "-") return val(i - j);
      if (op == "*") return val(i * j);
      int64_t q = i / j - ((i % j != 0) && ((i < 0) != (j < 0)));  // Python floors
      if (op == "//") return val(q);
      if (op == "%") return val(i - q * j);
    }
    if (op == "+") return val(x + y);
    if (op == "-") return val(x - y);
    if (op == "*") return val(x * y);
    if (y == 0) error("division by zero");
    if (op == "//") return val(std::floor(x / y));
    if (op == "%") return val(x - std::floor(x / y) * y);
    error("unknown operator " + op);
  }

  std::vector<Value> arg_values(const Expr& e, size_t from) {
    std::vector<Value> v;
    for (size_t k = from; k < e.a.size(); k++) v.push_back(eval(*e.a[k]));
    return v;
  }
  Value kwarg(const Expr& e, const char* name, const std::vector<Value>& pos, size_t at, Value dflt) {
    for (auto& [k, x] : e.kw)
      if (k == name) return eval(*x);
    return at < pos.size() ? pos[at] : dflt;
  }

  Value call(const Expr& e) {
    const Expr& f = *e.a[0];
    std::vector<Value> args = arg_values(e, 1);
    if (f.kind == Expr::name) {
      if (Value* m = find(f.s); m && m->macro) {
        std::vector<std::pair<std::string, Value>> kw;
        for (auto& [k, x] : e.kw) kw.emplace_back(k, eval(*x));
        return call_macro(*m->macro, args, kw);
      }
      if (f.s == "raise_exception") error(args.empty() ? "raise_exception()" : str(args[0]));
      if (f.s == "namespace" || f.s == "dict") {
        Json o = Json::object();
        for (auto& [k, x] : e.kw) o[k] = eval(*x).v;
        return val(o);
      }
      if (f.s == "range") {
        int64_t a = 0, b, s = 1;
        if (args.empty()) error("range() needs an argument");
        for (auto& x : args)
          if (!x.v.is_number_integer()) error("range() takes integers");
        if (args.size() == 1) b = args[0].v.get<int64_t>();
        else a = args[0].v.get<int64_t>(), b = args[1].v.get<int64_t>();
        if (args.size() > 2) s = args[2].v.get<int64_t>();
        if (s == 0) error("range() step cannot be zero");
        if ((b - a) / s > 100000) error("range() of more than 100000 numbers (jinja2's sandbox limit)");
        Json l = Json::array();
        for (int64_t i = a; s > 0 ? i < b : i > b; i += s) l.push_back(i);
        return val(l);
      }
      if (f.s == "strftime_now") {
        std::time_t t = std::time(nullptr);
        std::tm tm{};
        localtime_r(&t, &tm);
        char buf[256];
        size_t n = std::strftime(buf, sizeof(buf), args.empty() ? "" : str(args[0]).c_str(), &tm);
        return val(std::string(buf, n));
      }
      error(fmt::format("{}() is not a function here", f.s));
    }
    if (f.kind != Expr::attr) error("only names and methods can be called");
    Value o = eval(*f.a[0]);
    const std::string& m = f.s;
    if (o.v.is_string() && !o.undefined) {
      const std::string& s = o.v.get_ref<const std::string&>();
      if (m == "strip" || m == "lstrip" || m == "rstrip")
        return val(strip(s, m != "rstrip", m != "lstrip", args.empty() ? nullptr : &args[0]));
      if (m == "startswith" || m == "endswith") {
        if (args.empty()) error(m + "() needs an argument");
        std::vector<std::string> opts;
        if (args[0].v.is_array()) for (auto& x : args[0].v) opts.push_back(str(x));
        else opts.push_back(str(args[0]));
        for (auto& p : opts)
          if (m == "startswith" ? s.starts_with(p) : s.ends_with(p)) return val(true);
        return val(false);
      }
      if (m == "split") {
        Json l = Json::array();
        Value sep = kwarg(e, "sep", args, 0, val(nullptr));
        int64_t max = kwarg(e, "maxsplit", args, 1, val(-1)).v.get<int64_t>();
        if (sep.v.is_null()) {
          size_t i = 0;
          while (true) {
            while (i < s.size() && space_at(s, i)) i += space_at(s, i);
            if (i >= s.size()) break;
            if (max >= 0 && int64_t(l.size()) == max) {
              l.push_back(strip(s.substr(i), false, true, nullptr));
              break;
            }
            size_t j = i;
            while (j < s.size() && !space_at(s, j)) j++;
            l.push_back(s.substr(i, j - i));
            i = j;
          }
          return val(l);
        }
        std::string d = str(sep);
        if (d.empty()) error("split() separator is empty");
        size_t i = 0, j;
        while ((max < 0 || int64_t(l.size()) < max) && (j = s.find(d, i)) != std::string::npos) {
          l.push_back(s.substr(i, j - i));
          i = j + d.size();
        }
        l.push_back(s.substr(i));
        return val(l);
      }
      if (m == "upper" || m == "lower" || m == "title" || m == "capitalize" || m == "replace")  // as the filters
        return filter_named(m, o, args, e);
    }
    if (o.v.is_object() && !o.undefined) {
      if (m == "items") {
        Json l = Json::array();
        for (auto& [k, x] : o.v.items()) l.push_back(Json::array({k, x}));
        return val(l);
      }
      if (m == "keys" || m == "values") {
        Json l = Json::array();
        for (auto& [k, x] : o.v.items()) l.push_back(m == "keys" ? Json(k) : x);
        return val(l);
      }
      if (m == "get") {
        if (args.empty()) error("get() needs a key");
        std::string k = str(args[0]);
        if (o.v.contains(k)) return val(o.v[k]);
        return args.size() > 1 ? args[1] : val(nullptr);
      }
    }
    error(fmt::format("{}.{}() is not supported", o.undefined ? "an undefined value" : repr(o.v).substr(0, 40), m));
  }

  Value filter(const Expr& e) { return filter_named(e.s, eval(*e.a[0]), arg_values(e, 1), e); }

  Value filter_named(const std::string& f, const Value& x, const std::vector<Value>& args, const Expr& e) {
    const Json& v = x.v;
    if (f == "default" || f == "d") {
      bool boolean = truthy(kwarg(e, "boolean", args, 1, val(false)));
      if (x.undefined || (boolean && !truthy(x))) return args.empty() ? val("") : args[0];
      return x;
    }
    if (f == "safe" || f == "string") return f == "safe" ? x : val(str(x));
    if (x.undefined) {  // as jinja2's Undefined: an empty string or sequence to these, an error to the rest
      if (f == "first" || f == "last") return undef();
      if (f == "items" || f == "list") return val(Json::array());
      if (f == "length" || f == "count") return val(int64_t(0));
      if (f == "join") return val("");
      if (f != "trim" && f != "upper" && f != "lower" && f != "capitalize" && f != "title" && f != "replace")
        error(fmt::format("|{} of an undefined value", f));
    }
    if (f == "trim") return val(strip(str(x), true, true, args.empty() ? nullptr : &args[0]));
    if (f == "length" || f == "count") {
      if (v.is_string()) return val(int64_t(code_points(v.get<std::string>()).size() - 1));
      return val(int64_t(v.is_null() ? 0 : v.size()));
    }
    if (f == "tojson") {
      Value ind = kwarg(e, "indent", args, 0, val(nullptr));
      Value seps = kwarg(e, "separators", args, 1, val(nullptr));
      int indent = ind.v.is_number_integer() ? int(ind.v.get<int64_t>()) : -1;
      std::string item = indent >= 0 ? "," : ", ", key = ": ";
      if (seps.v.is_array() && seps.v.size() == 2) item = str(seps.v[0]), key = str(seps.v[1]);
      Json w = v;
      if (truthy(kwarg(e, "sort_keys", args, 3, val(false)))) w = Json(nlohmann::json(v));  // std::map order
      std::string o;
      dumps(w, o, indent, 0, item, key);
      return val(o);
    }
    if (f == "upper" || f == "lower" || f == "capitalize" || f == "title") {
      std::string s = str(x);
      bool start = true;
      for (size_t i = 0; i < s.size(); i++) {
        char& c = s[i];
        if (f == "upper") c = char(std::toupper(uint8_t(c)));
        else if (f == "lower") c = char(std::tolower(uint8_t(c)));
        else if (f == "capitalize") c = char(i == 0 ? std::toupper(uint8_t(c)) : std::tolower(uint8_t(c)));
        else {
          c = char(start ? std::toupper(uint8_t(c)) : std::tolower(uint8_t(c)));
          start = !std::isalnum(uint8_t(c));
        }
      }
      return val(s);
    }
    if (f == "first" || f == "last") {
      if (v.is_array()) return v.empty() ? undef() : val(f == "first" ? v.front() : v.back());
      if (v.is_string()) {
        auto cp = code_points(v.get<std::string>());
        if (cp.size() < 2) return undef();
        size_t i = f == "first" ? 0 : cp.size() - 2;
        return val(v.get<std::string>().substr(cp[i], cp[i + 1] - cp[i]));
      }
    }
    if (f == "list") {
      if (v.is_array()) return x;
      Json l = Json::array();
      if (v.is_object())
        for (auto& [k, y] : v.items()) l.push_back(k);
      if (v.is_string()) l = characters(v.get<std::string>());
      return val(l);
    }
    if (f == "dictsort" && v.is_object()) {  // [key, value] pairs by key (or value), ignoring case by default
      const bool by_value = str(kwarg(e, "by", args, 1, val("key"))) == "value";
      const bool cased = truthy(kwarg(e, "case_sensitive", args, 0, val(false)));
      const bool reverse = truthy(kwarg(e, "reverse", args, 2, val(false)));
      std::vector<std::pair<std::string, Json>> pairs;
      for (auto& [k, y] : v.items()) pairs.emplace_back(k, y);
      auto sort_key = [&](const std::pair<std::string, Json>& p) {
        Json k = by_value ? p.second : Json(p.first);
        if (!cased && k.is_string()) {
          std::string t = k.get<std::string>();
          for (char& c : t) c = char(std::tolower(uint8_t(c)));
          k = t;
        }
        return k;
      };
      std::stable_sort(pairs.begin(), pairs.end(), [&](auto& a, auto& b) {
        return reverse ? sort_key(b) < sort_key(a) : sort_key(a) < sort_key(b);
      });
      Json l = Json::array();
      for (auto& [k, y] : pairs) l.push_back(Json::array({k, y}));
      return val(l);
    }
    if (f == "items" && v.is_object()) {
      Json l = Json::array();
      for (auto& [k, y] : v.items()) l.push_back(Json::array({k, y}));
      return val(l);
    }
    if (f == "join") {
      std::string sep = args.empty() ? "" : str(args[0]), o;
      Value attr = kwarg(e, "attribute", args, 1, undef());
      if (!v.is_array()) error("|join needs a list");
      for (size_t k = 0; k < v.size(); k++) {
        const Json& y = attr.undefined ? v[k] : v[k].value(str(attr), Json());
        o += (k ? sep : "") + str(y);
      }
      return val(o);
    }
    if (f == "reverse") {
      if (v.is_string()) {
        auto cp = code_points(v.get<std::string>());
        std::string o;
        for (size_t k = cp.size() - 1; k > 0; k--) o += v.get<std::string>().substr(cp[k - 1], cp[k] - cp[k - 1]);
        return val(o);
      }
      if (v.is_array()) {
        Json l = Json::array();
        for (size_t k = v.size(); k > 0; k--) l.push_back(v[k - 1]);
        return val(l);
      }
    }
    if (f == "replace") {
      if (args.size() < 2) error("replace() needs two arguments");
      std::string s = str(x), from = str(args[0]), to = str(args[1]), r;
      if (from.empty()) return val(s);
      size_t i = 0, j;
      while ((j = s.find(from, i)) != std::string::npos) r += s.substr(i, j - i) + to, i = j + from.size();
      return val(r + s.substr(i));
    }
    if (f == "int") {
      if (v.is_number()) return val(int64_t(v.get<double>()));
      try {
        return val(std::stoll(str(x)));
      } catch (...) {
        return val(int64_t(0));
      }
    }
    if (f == "abs" && v.is_number()) return v.is_number_integer() ? val(std::llabs(v.get<int64_t>())) : val(std::fabs(v.get<double>()));
    if (f == "unique" && v.is_array()) {
      Json l = Json::array();
      for (auto& y : v)
        if (std::find(l.begin(), l.end(), y) == l.end()) l.push_back(y);
      return val(l);
    }
    if ((f == "selectattr" || f == "rejectattr") && v.is_array()) {
      if (args.empty()) error("|" + f + " needs an attribute");
      std::string attr = str(args[0]);
      Json l = Json::array();
      for (auto& y : v) {
        Value a = y.is_object() && y.contains(attr) ? val(y[attr]) : undef();
        bool keep = args.size() < 2 ? truthy(a) : test_named(str(args[1]), a, std::vector<Value>(args.begin() + 2, args.end()));
        if (keep == (f == "selectattr")) l.push_back(y);
      }
      return val(l);
    }
    if (f == "map" && v.is_array()) {
      Value attr = kwarg(e, "attribute", {}, 0, undef());
      Json l = Json::array();
      for (auto& y : v) {
        if (!attr.undefined) l.push_back(y.is_object() ? y.value(str(attr), Json()) : Json());
        else if (!args.empty()) l.push_back(filter_named(str(args[0]), val(y), std::vector<Value>(args.begin() + 1, args.end()), e).v);
        else error("|map needs a filter or attribute=");
      }
      return val(l);
    }
    error(fmt::format("the filter |{} is not supported{}", f, x.undefined ? "" : " on " + repr(v).substr(0, 40)));
  }

  bool test(const Expr& e) { return test_named(e.s, eval(*e.a[0]), arg_values(e, 1)); }

  bool test_named(const std::string& t, const Value& x, const std::vector<Value>& args) {
    const Json& v = x.v;
    if (t == "defined") return !x.undefined;
    if (t == "undefined") return x.undefined;
    if (t == "none") return !x.undefined && v.is_null();
    if (t == "string") return !x.undefined && v.is_string();
    if (t == "number") return !x.undefined && v.is_number();
    if (t == "integer") return !x.undefined && v.is_number_integer();
    if (t == "float") return !x.undefined && v.is_number_float();
    if (t == "boolean") return !x.undefined && v.is_boolean();
    if (t == "true" || t == "false") return !x.undefined && v.is_boolean() && v.get<bool>() == (t == "true");
    if (t == "mapping") return !x.undefined && v.is_object();
    if (t == "sequence") return !x.undefined && (v.is_array() || v.is_string() || v.is_object());
    if (t == "iterable") return !x.undefined && (v.is_array() || v.is_string() || v.is_object());
    if (t == "callable") return x.macro != nullptr;
    if (t == "odd" || t == "even") {
      if (!v.is_number_integer()) error("'" + t + "' tests integers");
      return (v.get<int64_t>() % 2 != 0) == (t == "odd");
    }
    if (t == "divisibleby") {
      if (!v.is_number_integer() || args.empty() || !args[0].v.is_number_integer() || args[0].v.get<int64_t>() == 0)
        error("'divisibleby' tests integers");
      return v.get<int64_t>() % args[0].v.get<int64_t>() == 0;
    }
    if (t == "equalto" || t == "eq" || t == "==" || t == "sameas") return !args.empty() && equal(x, args[0]);
    if (t == "ne" || t == "!=") return args.empty() || !equal(x, args[0]);
    if (t == "in") return !args.empty() && contains(args[0], x);
    if (t == "lower" || t == "upper") {
      std::string s = str(x);
      for (char c : s)
        if (t == "lower" ? std::isupper(uint8_t(c)) : std::islower(uint8_t(c))) return false;
      return true;
    }
    error(fmt::format("the test 'is {}' is not supported", t));
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
  int line_ = 0;
  int depth_ = 0;
};

}  // namespace

Template::Template(std::string_view source) : root_(std::make_unique<Node>()) {
  Builder b(cut(source));
  std::string end = b.block(root_->body, {"endif", "endfor", "elif", "else", "endmacro", "endgeneration", "endset"}, 0, nullptr);
  if (!end.empty()) fail(b.line(), fmt::format("{{% {} %}} without its opening tag", end));
}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;

std::string Template::render(const Json& context) const {
  Renderer r(context);
  std::string out;
  r.exec(*root_, out);
  return out;
}

}  // namespace frugal::jinja
