// Instruction records (`frugal prepare --format jsonl`, run by prepare_corpus): a record is
// rendered with a chat template as pieces of text, each tokenized on its own and marked trained
// on (the completion / assistant's turns) or not; and the loss masks beside the shards.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <cstring>

#include "data/data.h"

namespace frugal {

using nlohmann::json;

ChatTemplate chat_template_of(const std::string& tokenizer_path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::is_directory(tokenizer_path) ? fs::path(tokenizer_path) : fs::path(tokenizer_path).parent_path();
  fs::path config = dir / "tokenizer_config.json";
  if (tokenizer_path.empty() || !fs::exists(config)) return ChatTemplate::plain;
  std::string t;
  try {
    json c = json::parse(read_whole_file(config.string()));
    if (c.contains("chat_template") && c["chat_template"].is_string()) t = c["chat_template"];
  } catch (const json::exception& e) {
    user_error("{}: not JSON: {}", config.string(), e.what());
  }
  if (t.find("<|im_start|>") != std::string::npos) return ChatTemplate::chatml;
  if (t.find("<|start_header_id|>") != std::string::npos) return ChatTemplate::llama3;
  return ChatTemplate::plain;
}

const char* to_string(ChatTemplate t) {
  switch (t) {
    case ChatTemplate::chatml: return "chatml";
    case ChatTemplate::llama3: return "llama3";
    case ChatTemplate::plain: break;
  }
  return "plain";
}

namespace {

struct BadRecord { std::string what; };

// One message in the template: its header (not trained), content and end marker; `chat`: a
// messages record (plain renders a prompt/completion record as the bare texts).
void add_message(std::vector<RecordPiece>& p, ChatTemplate tmpl, bool chat, const std::string& role,
                 const std::string& content) {
  bool train = role == "assistant";
  switch (tmpl) {
    case ChatTemplate::chatml:
      p.insert(p.end(), {{"<|im_start|>" + role + "\n", false}, {content, train}, {"<|im_end|>", train}, {"\n", false}});
      break;
    case ChatTemplate::llama3:
      p.insert(p.end(), {{"<|start_header_id|>" + role + "<|end_header_id|>\n\n", false}, {content, train}, {"<|eot_id|>", train}});
      break;
    case ChatTemplate::plain:
      if (chat) p.insert(p.end(), {{role + ": ", false}, {content, train}, {"\n", train}});
      else p.push_back({content, train});
      break;
  }
}

std::vector<RecordPiece> render(const json& r, ChatTemplate tmpl) {
  auto fail = [](std::string what) { throw BadRecord{std::move(what)}; };
  if (!r.is_object()) fail("expected a JSON object {\"prompt\", \"completion\"} or {\"messages\"}");
  auto text = [&](const json& o, const char* field, const std::string& name) -> std::string {
    if (!o.contains(field)) fail(fmt::format("no \"{}\" ({})", field, name));
    if (!o[field].is_string()) fail(fmt::format("\"{}\" is {}, expected a string", field, o[field].dump().substr(0, 80)));
    return o[field];
  };
  std::vector<std::pair<std::string, std::string>> msgs;  // (role, content)
  bool chat = r.contains("messages");
  if (chat) {
    const json& m = r["messages"];
    if (!m.is_array()) fail(fmt::format("\"messages\" is {}, expected an array", m.dump().substr(0, 80)));
    bool assistant = false;
    for (size_t k = 0; k < m.size(); k++) {
      std::string field = fmt::format("messages[{}]", k);
      if (!m[k].is_object()) fail(fmt::format("{} is not an object {{\"role\", \"content\"}}", field));
      std::string role = text(m[k], "role", field), content = text(m[k], "content", field);
      if (role != "system" && role != "user" && role != "assistant")
        fail(fmt::format("{}.role is \"{}\", expected system, user or assistant", field, role));
      assistant |= role == "assistant";
      msgs.emplace_back(role, content);
    }
    if (!assistant) fail("messages: no message with role \"assistant\" (nothing to train on)");
  } else {
    std::string prompt = text(r, "prompt", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    std::string completion = text(r, "completion", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    msgs = {{"user", prompt}, {"assistant", completion}};
  }
  std::vector<RecordPiece> p;
  for (auto& [role, content] : msgs) add_message(p, tmpl, chat, role, content);
  return p;
}

}  // namespace

bool render_record(std::string_view line, ChatTemplate tmpl, std::vector<RecordPiece>& pieces, std::string& error) {
  json r = json::parse(line, nullptr, false);
  if (r.is_discarded()) {
    error = "not JSON: expected one JSON object a line";
    return false;
  }
  try {
    pieces = render(r, tmpl);
  } catch (const BadRecord& e) {
    error = e.what;
    return false;
  }
  return true;
}

std::vector<RecordPiece> chat_prompt(ChatTemplate tmpl, const std::string& user) {
  std::vector<RecordPiece> p;
  add_message(p, tmpl, true, "user", user);
  const size_t header = p.size();
  add_message(p, tmpl, true, "assistant", "");
  p.resize(header + 1);
  return p;
}

const char* end_of_turn(ChatTemplate tmpl) {
  return tmpl == ChatTemplate::chatml ? "<|im_end|>" : tmpl == ChatTemplate::llama3 ? "<|eot_id|>" : "";
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
