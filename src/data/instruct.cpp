// Instruction records (`frugal prepare --format jsonl`, run by prepare_corpus): a record is
// rendered with a chat template as pieces of text, each tokenized on its own and marked trained
// on (the completion / assistant's turns) or not; and the loss masks beside the shards.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <cstring>

#include "data/bpe.h"
#include "data/data.h"
#include "data/jinja.h"

namespace frugal {

using nlohmann::json;

namespace {

using Ordered = nlohmann::ordered_json;

struct BadRecord { std::string what; };

// A record's messages in order: a messages record's, or a prompt/completion record as a user's
// and the assistant's message. `chat`: it was a messages record. In the plain template a message
// is a role (system, user or assistant) and a content string; a template takes every field as the
// record has it (tool_calls, a null content beside them, content parts), any role (tool, ipython),
// and the record's "tools" (a list: `tools`, else null).
Ordered messages_of(const Ordered& r, bool templated, bool& chat, Ordered& tools) {
  auto fail = [](std::string what) { throw BadRecord{std::move(what)}; };
  if (!r.is_object()) fail("expected a JSON object {\"prompt\", \"completion\"} or {\"messages\"}");
  auto text = [&](const Ordered& o, const char* field, const std::string& name) -> std::string {
    if (!o.contains(field)) fail(fmt::format("no \"{}\" ({})", field, name));
    if (!o[field].is_string()) fail(fmt::format("\"{}\" is {}, expected a string", field, o[field].dump().substr(0, 80)));
    return o[field];
  };
  auto message = [](const std::string& role, const std::string& content) { return Ordered{{"role", role}, {"content", content}}; };
  Ordered msgs = Ordered::array();
  tools = nullptr;
  chat = r.contains("messages");
  if (chat) {
    const Ordered& m = r["messages"];
    if (!m.is_array()) fail(fmt::format("\"messages\" is {}, expected an array", m.dump().substr(0, 80)));
    bool assistant = false;
    for (size_t k = 0; k < m.size(); k++) {
      std::string field = fmt::format("messages[{}]", k);
      if (!m[k].is_object()) fail(fmt::format("{} is not an object {{\"role\", \"content\"}}", field));
      std::string role = text(m[k], "role", field);
      assistant |= role == "assistant";
      if (templated) {
        if (m[k].contains("content") && !m[k]["content"].is_string() && !m[k]["content"].is_null() && !m[k]["content"].is_array())
          fail(fmt::format("{}.content is {}, expected a string, null or a list of parts", field, m[k]["content"].dump().substr(0, 80)));
        msgs.push_back(m[k]);
        continue;
      }
      std::string content = text(m[k], "content", field);
      if (role != "system" && role != "user" && role != "assistant")
        fail(fmt::format("{}.role is \"{}\", expected system, user or assistant (other roles need the tokenizer's chat "
                         "template)", field, role));
      msgs.push_back(message(role, content));
    }
    if (!assistant) fail("messages: no message with role \"assistant\" (nothing to train on)");
    if (r.contains("tools")) {
      if (!templated) fail("\"tools\" needs the tokenizer's chat template to render them");
      if (!r["tools"].is_array()) fail(fmt::format("\"tools\" is {}, expected a list", r["tools"].dump().substr(0, 80)));
      tools = r["tools"];
    }
  } else {
    std::string prompt = text(r, "prompt", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    std::string completion = text(r, "completion", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    msgs.push_back(message("user", prompt));
    msgs.push_back(message("assistant", completion));
  }
  return msgs;
}

// The plain template: a message's header (not trained), content and end; a prompt/completion
// record renders as the bare texts.
void add_plain(std::vector<RecordPiece>& p, bool chat, const std::string& role, const std::string& content) {
  bool train = role == "assistant";
  if (chat) p.insert(p.end(), {{role + ": ", false}, {content, train}, {"\n", train}});
  else p.push_back({content, train});
}

size_t common_prefix(const std::string& a, const std::string& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) n++;
  return n;
}

std::string trim_space(std::string s) {
  s.erase(s.find_last_not_of(" \t\r\n") + 1);
  s.erase(0, std::min(s.size(), s.find_first_not_of(" \t\r\n")));
  return s;
}

}  // namespace

struct ChatTemplate::Jinja {
  jinja::Template tmpl;
  Ordered tokens;       // bos_token, eos_token, ... as transformers passes them to the template
  std::string where;    // "DIR/tokenizer_config.json's chat_template", or DIR/chat_template.jinja
  std::string name;     // "chat_template <hash>"
  std::string source;

  // What the template renders for messages [0, n) of msgs, with the assistant's header after them
  // or not; BadRecord saying where the template failed (its raise_exception's message).
  std::string render(const Ordered& msgs, size_t n, bool add_generation_prompt, const Ordered& tools = nullptr) const {
    Ordered ctx = tokens;
    ctx["messages"] = Ordered(msgs.begin(), msgs.begin() + std::ptrdiff_t(n));
    ctx["tools"] = tools;
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = add_generation_prompt;
    try {
      return tmpl.render(ctx);
    } catch (const jinja::Error& e) {
      throw BadRecord{fmt::format("{}, {}", where, e.what())};
    }
  }
};

ChatTemplate ChatTemplate::of(const std::string& tokenizer_path, const Tokenizer& tok, const std::string& given) {
  namespace fs = std::filesystem;
  ChatTemplate t;
  const bool reads_specials = tok.kind() == TokenizerKind::hf_bpe || tok.kind() == TokenizerKind::byte;
  if (!given.empty() && !reads_specials)
    user_error("--chat-template {}: the tokenizer is {}, which reads a template's special tokens as text: expected a "
               "Hugging Face tokenizer.json (or byte)", given, to_string(tok.kind()));
  if (tokenizer_path.empty() && given.empty()) return t;
  fs::path dir = fs::is_directory(tokenizer_path) ? fs::path(tokenizer_path) : fs::path(tokenizer_path).parent_path();
  const std::string config = (dir / "tokenizer_config.json").string();
  const std::string file = !given.empty() ? given : (dir / kChatTemplateFile).string();
  const json c = tokenizer_path.empty() ? json() : read_tokenizer_config(dir.string());  // null: none
  // where transformers finds it: chat_template.jinja (what it saves since 4.47), else the config's
  // chat_template: one template, or a list of named ones of which it applies "default"
  std::string source, where;
  if (!given.empty() || fs::exists(file)) {
    if (!fs::exists(file)) user_error("--chat-template {}: no such file", file);
    source = read_whole_file(file);
    where = file;
  } else if (c.contains("chat_template") && !c["chat_template"].is_null()) {
    where = config + "'s chat_template";
    const json& v = c["chat_template"];
    if (v.is_array()) {  // of {"name", "template"} strings (read_tokenizer_config)
      for (auto& named : v)
        if (named["name"] == "default") source = named["template"];
      if (source.empty()) user_error("{}: expected a template named \"default\" among the list's", where);
    } else {
      source = v;
    }
  } else {
    return t;
  }
  // its special tokens are read from the text by a tokenizer.json only (frugal's SentencePiece
  // and tiktoken encoders take text as text)
  if (!reads_specials) {
    t.note_ = fmt::format("the plain template: {} needs a tokenizer.json to read its special tokens, and "
                          "the tokenizer is {}", where, to_string(tok.kind()));
    return t;
  }
  jinja::Template parsed = [&] {
    try {
      return jinja::Template(source);
    } catch (const jinja::Error& e) {
      user_error("{}, {}", where, e.what());
    }
  }();
  auto j = std::make_shared<Jinja>(Jinja{std::move(parsed), Ordered::object(), where, "", source});
  for (const char* k : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!c.contains(k)) continue;
    const json& v = c[k];  // a string, an AddedToken or null (read_tokenizer_config)
    if (v.is_string()) j->tokens[k] = v.get<std::string>();
    else if (v.is_object()) j->tokens[k] = v["content"].get<std::string>();
  }
  std::string key = source + j->tokens.dump();
  j->name = fmt::format("chat_template {:016x}", checksum(key.data(), key.size()));
  t.j_ = std::move(j);
  t.note_ = where;
  return t;
}

std::string ChatTemplate::name() const { return j_ ? j_->name : "plain"; }

const std::string& ChatTemplate::source() const {
  static const std::string none;
  return j_ ? j_->source : none;
}

bool ChatTemplate::render_record(std::string_view line, std::vector<RecordPiece>& pieces, std::string& error) const {
  Ordered r = Ordered::parse(line, nullptr, false);
  if (r.is_discarded()) {
    error = "not JSON: expected one JSON object a line";
    return false;
  }
  try {
    bool chat = false;
    Ordered tools;
    Ordered msgs = messages_of(r, j_ != nullptr, chat, tools);
    pieces.clear();
    if (!j_) {
      for (auto& m : msgs) add_plain(pieces, chat, m["role"], m["content"]);
      return true;
    }
    // Each assistant's message is trained on: what the whole conversation renders from the end of
    // the conversation before it, with the assistant's header, to the end of the conversation
    // up to it (TRL's prompt/completion rule, for every turn).
    const std::string whole = j_->render(msgs, msgs.size(), false, tools);
    size_t done = 0;
    for (size_t i = 0; i < msgs.size(); i++) {
      if (msgs[i]["role"] != "assistant") continue;
      const size_t begin = common_prefix(j_->render(msgs, i, true, tools), whole);
      const std::string upto = j_->render(msgs, i + 1, false, tools);
      const size_t end = common_prefix(upto, whole);
      if (end != upto.size() || begin < done || begin >= end)
        throw BadRecord{fmt::format("{} does not render messages[{}] (the assistant's) as the whole conversation "
                                    "does, so it cannot be told apart", j_->where, i)};
      if (begin > done) pieces.push_back({whole.substr(done, begin - done), false});
      pieces.push_back({whole.substr(begin, end - begin), true});
      done = end;
    }
    if (done < whole.size()) pieces.push_back({whole.substr(done), false});
  } catch (const BadRecord& e) {
    error = e.what;
    return false;
  }
  return true;
}

std::vector<RecordPiece> ChatTemplate::chat_prompt(const std::string& user, const std::string& system) const {
  Ordered msgs = Ordered::array();
  std::vector<RecordPiece> plain;  // as add_plain renders a messages record
  if (!system.empty()) {
    msgs.push_back(Ordered{{"role", "system"}, {"content", system}});
    add_plain(plain, true, "system", system);
  }
  msgs.push_back(Ordered{{"role", "user"}, {"content", user}});
  add_plain(plain, true, "user", user);
  plain.push_back({"assistant: ", false});
  if (!j_) return plain;
  try {
    return {{j_->render(msgs, msgs.size(), true), false}};
  } catch (const BadRecord& e) {
    user_error("{}", e.what);
  }
}

std::vector<uint32_t> ChatTemplate::prompt_ids(Tokenizer& tok, const std::string& text, const std::string& system,
                                               bool chat) const {
  std::vector<uint32_t> ids;
  if (tok.bos_prefix() >= 0 && plain()) ids.push_back(uint32_t(tok.bos_prefix()));
  if (!chat) tok.encode(text, ids);
  else
    for (const RecordPiece& p : chat_prompt(text, system)) tok.encode(p.text, ids);  // as prepare tokenizes it
  return ids;
}

std::string ChatTemplate::end_of_turn() const {
  if (!j_) return "";
  Ordered msgs = Ordered::array({Ordered{{"role", "user"}, {"content", "x"}}, Ordered{{"role", "assistant"}, {"content", ""}}});
  try {
    std::string prompt = j_->render(msgs, 1, true), turn = j_->render(msgs, 2, false);
    return trim_space(turn.substr(common_prefix(prompt, turn)));
  } catch (const BadRecord& e) {
    user_error("{}", e.what);
  }
}

std::string mask_path(const std::string& shard_path) {
  std::string p = shard_path;
  if (p.ends_with(".bin")) p.resize(p.size() - 4);
  return p + ".mask";
}

void write_mask(const std::string& path, const std::vector<uint8_t>& mask) {
  int32_t header[kShardHeaderInts] = {};
  header[0] = kMaskMagic;
  header[1] = kMaskVersion;
  header[2] = int32_t(mask.size());
  std::string buf(reinterpret_cast<const char*>(header), sizeof(header));
  buf.append(reinterpret_cast<const char*>(mask.data()), mask.size());
  write_file_atomic(path, buf.data(), buf.size());
}

std::vector<uint8_t> read_mask(const std::string& path, int64_t num_tokens) {
  std::string b = read_whole_file(path);
  const size_t hdr = kShardHeaderInts * sizeof(int32_t);
  int32_t h[3] = {};
  if (b.size() >= hdr) std::memcpy(h, b.data(), sizeof(h));
  if (b.size() < hdr || h[0] != kMaskMagic || h[1] != kMaskVersion)
    user_error("{}: not a loss mask: expected magic {} version {}", path, kMaskMagic, kMaskVersion);
  if (h[2] != num_tokens || b.size() != hdr + size_t(num_tokens))
    user_error("{}: {} mask bytes (header {}), but its shard has {} tokens", path, b.size() - hdr, h[2], num_tokens);
  return std::vector<uint8_t>(b.begin() + std::ptrdiff_t(hdr), b.end());
}

}  // namespace frugal
