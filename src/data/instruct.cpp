// `frugal prepare --format jsonl`: instruction records -> token shards plus loss masks. Each
// record is rendered with a chat template as pieces of text, each piece tokenized on its own and
// marked trained on (the completion / assistant's turns) or not; EOT after each record.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <cstring>
#include <sstream>

#include "data/data.h"

namespace frugal {

namespace {

using nlohmann::json;

struct Piece { std::string text; bool train; };

// The template of a tokenizer directory: tokenizer_config.json's chat_template, recognised.
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

// One record's pieces; UserError naming file:line and the field.
std::vector<Piece> render(const json& r, ChatTemplate tmpl, const std::string& where) {
  if (!r.is_object()) user_error("{}: expected a JSON object {{\"prompt\", \"completion\"}} or {{\"messages\"}}", where);
  auto text = [&](const json& o, const char* field, const std::string& name) -> std::string {
    if (!o.contains(field)) user_error("{}: no \"{}\" ({})", where, field, name);
    if (!o[field].is_string()) user_error("{}: \"{}\" is {}, expected a string", where, field, o[field].dump().substr(0, 80));
    return o[field];
  };
  std::vector<std::pair<std::string, std::string>> msgs;  // (role, content)
  bool chat = r.contains("messages");
  if (chat) {
    const json& m = r["messages"];
    if (!m.is_array()) user_error("{}: \"messages\" is {}, expected an array", where, m.dump().substr(0, 80));
    bool assistant = false;
    for (size_t k = 0; k < m.size(); k++) {
      std::string field = fmt::format("messages[{}]", k);
      if (!m[k].is_object()) user_error("{}: {} is not an object {{\"role\", \"content\"}}", where, field);
      std::string role = text(m[k], "role", field), content = text(m[k], "content", field);
      if (role != "system" && role != "user" && role != "assistant")
        user_error("{}: {}.role is \"{}\", expected system, user or assistant", where, field, role);
      assistant |= role == "assistant";
      msgs.emplace_back(role, content);
    }
    if (!assistant) user_error("{}: messages: no message with role \"assistant\" (nothing to train on)", where);
  } else {
    std::string prompt = text(r, "prompt", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    std::string completion = text(r, "completion", "expected {\"prompt\", \"completion\"} or {\"messages\"}");
    msgs = {{"user", prompt}, {"assistant", completion}};
  }
  std::vector<Piece> p;
  for (auto& [role, content] : msgs) {
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
  return p;
}

}  // namespace

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

PrepareStats prepare_instruct(const std::vector<std::string>& inputs, const std::string& out_dir,
                              int val_every, const TokenizerOptions& opt) {
  if (val_every < 2) user_error("--val-every: expected an integer >= 2, got {}", val_every);
  if (inputs.empty()) user_error("prepare --format jsonl: expected one or more .jsonl files");
  std::unique_ptr<Tokenizer> tok = opt.pretrained.empty() ? (opt.kind == TokenizerKind::gpt2 ? make_gpt2_tokenizer(opt.gpt2_dir) : make_byte_tokenizer())
                                                          : load_pretrained_tokenizer(opt.pretrained, opt.tiktoken_pattern);
  ChatTemplate tmpl = chat_template_of(opt.pretrained);
  // every record, parsed and tokenized before anything is written
  std::vector<uint32_t> stream;
  std::vector<uint8_t> mask;
  for (auto& f : inputs) {
    std::istringstream in(read_whole_file(f));
    std::string line;
    for (int64_t no = 1; std::getline(in, line); no++) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::string where = fmt::format("{}:{}", f, no);
      json r;
      try {
        r = json::parse(line);
      } catch (const json::exception&) {
        user_error("{}: not JSON: expected one JSON object a line", where);
      }
      for (auto& p : render(r, tmpl, where)) {
        tok->encode(p.text, stream);
        mask.resize(stream.size(), uint8_t(p.train));
      }
      stream.push_back(tok->eot());
      mask.push_back(1);
    }
  }
  const size_t chunk = size_t(kSplitChunk);
  std::vector<uint32_t> split_tokens[2];
  std::vector<uint8_t> split_mask[2];
  for (size_t i = 0, k = 0; i < stream.size(); i += chunk, k++) {
    int s = k % size_t(val_every) == size_t(val_every) - 1;
    size_t end = std::min(stream.size(), i + chunk);
    split_tokens[s].insert(split_tokens[s].end(), stream.begin() + std::ptrdiff_t(i), stream.begin() + std::ptrdiff_t(end));
    split_mask[s].insert(split_mask[s].end(), mask.begin() + std::ptrdiff_t(i), mask.begin() + std::ptrdiff_t(end));
  }
  if (split_tokens[1].empty()) too_few_for_chunk_split(int64_t(stream.size()), val_every);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) user_error("{}: cannot create directory: {}", out_dir, ec.message());
  std::filesystem::remove(out_dir + "/" + kManifest, ec);  // a text prepare's, whose shards these replace
  PrepareStats st{int64_t(split_tokens[0].size()), int64_t(split_tokens[1].size()),
                  {out_dir + "/train_000.bin", out_dir + "/val_000.bin"}};
  for (int s = 0; s < 2; s++) {  // the mask first: a shard is never there without its mask
    write_mask(mask_path(st.files[size_t(s)]), split_mask[s]);
    write_shard(st.files[size_t(s)], split_tokens[s]);
  }
  save_tokenizer(out_dir, *tok);
  return st;
}

}  // namespace frugal
