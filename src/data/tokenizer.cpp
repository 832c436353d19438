// The tokenizer interface's plumbing: the byte-level tokenizer, a shard directory's
// frugal_tokenizer.json (which tokenizer made the shards, so that sample and train can find it),
// and finding a pretrained tokenizer's file.
#include <nlohmann/json.hpp>

#include <cctype>
#include <filesystem>
#include <fstream>

#include "data/bpe.h"

namespace frugal {

void byte_encode(std::string_view text, std::vector<uint32_t>& out) {
  for (unsigned char c : text) out.push_back(c);
}

std::string byte_decode(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += id == kByteEot ? '\n' : char(id & 0xFF);
  return s;
}

namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  TokenizerKind kind() const override { return TokenizerKind::byte; }
  int vocab_size() const override { return kByteVocab; }
  uint32_t eot() const override { return kByteEot; }
  void encode(std::string_view text, std::vector<uint32_t>& out) override { byte_encode(text, out); }
  std::string decode(const std::vector<int32_t>& ids) const override { return byte_decode(ids); }
};

}  // namespace


std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context, const std::vector<int32_t>& ids) {
  std::vector<int32_t> whole = context;
  whole.insert(whole.end(), ids.begin(), ids.end());
  const std::string text = tok.decode(whole), before = tok.decode(context);
  return text.starts_with(before) ? text.substr(before.size()) : tok.decode(ids);
}

nlohmann::json read_tokenizer_config(const std::string& dir) {
  using nlohmann::json;
  const std::string path = (std::filesystem::path(dir) / "tokenizer_config.json").string();
  if (!std::filesystem::exists(path)) return json();
  json c = json::parse(read_whole_file(path), nullptr, false);
  if (c.is_discarded()) user_error("{}: not JSON", path);
  if (!c.is_object()) user_error("{}: expected a JSON object, got {}", path, c.type_name());
  auto bad = [&](const std::string& field, const json& v, const char* expected) {
    user_error("{}: {} is {}, expected {}", path, field, v.dump().substr(0, 200), expected);
  };
  for (const char* k : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    const json v = c.value(k, json());
    if (!v.is_null() && !v.is_string() && !(v.is_object() && v.value("content", json()).is_string()))
      bad(k, v, "a string, an AddedToken's {\"content\": string} or null");
  }
  for (const char* k : {"add_bos_token", "add_eos_token", "legacy", "add_prefix_space"})
    if (const json v = c.value(k, json()); !v.is_null() && !v.is_boolean()) bad(k, v, "true, false or null");
  if (const json v = c.value("tokenizer_class", json()); !v.is_null() && !v.is_string())
    bad("tokenizer_class", v, "a string or null");
  const json t = c.value("chat_template", json());
  if (t.is_array()) {
    for (size_t i = 0; i < t.size(); i++)
      if (!t[i].is_object() || !t[i].value("name", json()).is_string() || !t[i].value("template", json()).is_string())
        bad(fmt::format("chat_template[{}]", i), t[i], "{\"name\": string, \"template\": string}");
  } else if (!t.is_null() && !t.is_string()) {
    bad("chat_template", t, "a string (a template), a list of {\"name\", \"template\"} or null");
  }
  return c;
}

int64_t hf_bos_prefix(const std::string& file, const nlohmann::json* parsed, int64_t vocab_size,
                      const std::function<int64_t(const std::string&)>& id_of) {
  using nlohmann::json;
  auto read = [](const std::string& path) {
    json j = json::parse(read_whole_file(path), nullptr, false);
    if (j.is_discarded()) user_error("{}: not JSON", path);
    return j;
  };
  // transformers 5 reads a tokenizer.json's post-processor as it is; only a model it converts
  // (a tokenizer.model alone) gets the BOS tokenizer_config.json's add_bos_token asks for
  if (!parsed && !std::filesystem::exists(file)) {
    const std::filesystem::path dir = std::filesystem::path(file).parent_path();
    const json c = read_tokenizer_config(dir.string());
    if (c.is_null() || c.value("add_bos_token", json()).is_null()) return -1;  // default: false
    const std::string config = (dir / "tokenizer_config.json").string();
    json t = c.value("bos_token", json());
    if (t.is_object()) t = t.value("content", json());
    if (!c.at("add_bos_token").get<bool>() || !t.is_string()) return -1;  // transformers: no bos_token, none added
    const int64_t id = id_of(t.get<std::string>());
    if (id < 0) user_error("{}: add_bos_token is true, but bos_token {} is not a token of the tokenizer", config, t.dump());
    return id;
  }
  json p = (parsed ? *parsed : read(file)).value("post_processor", json());
  std::string field = "post_processor";
  if (p.is_object() && p.value("type", "") == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    const json procs = p["processors"];
    p = json();
    for (size_t k = 0; k < procs.size(); k++)
      if (procs[k].is_object() && procs[k].value("type", "") == "TemplateProcessing") {
        p = procs[k];
        field = fmt::format("post_processor.processors[{}]", k);
        break;
      }
  }
  if (!p.is_object() || p.value("type", "") != "TemplateProcessing") return -1;  // ByteLevel (GPT-2, Qwen2): none
  const json single = p.value("single", json::array());
  if (!single.is_array() || single.empty() || !single[0].is_object() || !single[0].contains("SpecialToken")) return -1;
  const json name = single[0]["SpecialToken"].is_object() ? single[0]["SpecialToken"].value("id", json()) : json();
  const json tokens = p.value("special_tokens", json::object());
  const json ids = name.is_string() && tokens.is_object() && tokens.contains(name.get<std::string>())
                       ? tokens[name.get<std::string>()].value("ids", json()) : json();
  if (!ids.is_array() || ids.size() != 1 || !ids[0].is_number_integer() || ids[0].get<int64_t>() < 0 ||
      ids[0].get<int64_t>() >= vocab_size)
    user_error("{}: {}.single starts with special token {}, expected it in {}.special_tokens with one id below {}, "
               "got {}", file, field, name.dump(), field, vocab_size, ids.dump());
  return ids[0].get<int64_t>();
}

std::string to_string(TokenizerKind k) {
  switch (k) {
    case TokenizerKind::byte: return "byte";
    case TokenizerKind::gpt2: return "gpt2";
    case TokenizerKind::sentencepiece: return "sentencepiece";
    case TokenizerKind::hf_bpe: return "hf_bpe";
    case TokenizerKind::tiktoken: return "tiktoken";
  }
  return "?";
}

// dir/frugal_tokenizer.json, else an older directory's tokenizer.json with the same fields, else
// a Hugging Face tokenizer.json, else byte-level.
TokenizerInfo tokenizer_info(const std::string& dir) {
  std::string path = dir + "/" + kTokenizerDescription, old = dir + "/tokenizer.json";
  // a directory that is not there is not byte-level shards (sample would decode another
  // tokenizer's ids as bytes): its data was moved or deleted
  if (!std::filesystem::is_directory(dir))
    user_error("{}: no such directory: the data's tokenizer is described next to its shards (frugal_tokenizer.json)", dir);
  if (!std::filesystem::exists(path)) {
    if (!std::filesystem::exists(old)) return {"byte", kByteVocab, ""};
    path = old;
  }
  try {
    auto j = nlohmann::json::parse(read_whole_file(path));
    if (path == old && !j.contains("kind")) return {"hf_bpe", load_hf_tokenizer(old)->vocab_size(), ""};
    return {j.at("kind").get<std::string>(), j.at("vocab_size").get<int64_t>(), j.value("pattern", std::string()),
            j.value("bos_prefix", int64_t(-1)), j.value("model_type", std::string())};
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: expected {{\"kind\": ..., \"vocab_size\": ...}}: {}", path, e.what());
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  std::string path = dir + "/" + kTokenizerDescription;
  auto [kind, vocab, pattern, bos_prefix, model_type] = tokenizer_info(dir);
  std::unique_ptr<Tokenizer> tok;
  if (kind == "byte") tok = make_byte_tokenizer();
  else if (kind == "gpt2") tok = make_gpt2_tokenizer(dir);
  else if (kind == "sentencepiece") tok = load_sentencepiece(dir + "/tokenizer.model");
  else if (kind == "hf_bpe") tok = load_hf_tokenizer(dir + "/tokenizer.json", model_type);
  else if (kind == "tiktoken") tok = make_tiktoken_tokenizer(dir + "/" + kTiktokenRanks, pattern);
  else user_error("{}: kind '{}', expected byte, gpt2, sentencepiece, hf_bpe or tiktoken", path, kind);
  if (tok->vocab_size() != vocab)
    user_error("{}: vocab_size {}, but the {} tokenizer there has {}", path, vocab, kind, tok->vocab_size());
  if (bos_prefix < -1 || bos_prefix >= vocab)
    user_error("{}: bos_prefix {}, expected -1 (none) or a token id below {}", path, bos_prefix, vocab);
  tok->set_bos_prefix(bos_prefix);  // what the shards were written with
  return tok;
}

DocumentCut document_cut(const std::string& shard, bool records) {
  std::string dir = std::filesystem::path(shard).parent_path().string();
  if (dir.empty()) dir = ".";
  // shards with no description are byte-level for decoding, but a foreign stream's (llm.c's
  // GPT-2 shards) end of text is not 256: cutting there would cut at an ordinary token
  if (!std::filesystem::exists(dir + "/" + kTokenizerDescription) && !std::filesystem::exists(dir + "/tokenizer.json"))
    user_error("{}: no {} names the shards' tokenizer, whose end of text data.document_mask cuts at (shards from "
               "llm.c's GPT-2 scripts: write {{\"kind\": \"gpt2\", \"vocab_size\": 50257}} there)",
               dir, kTokenizerDescription);
  auto tok = load_tokenizer(dir);
  return {int32_t(tok->eot()), records || tok->bos_prefix() >= 0};
}

void save_tokenizer(const std::string& dir, const Tokenizer& tok) {
  tok.save_files(dir);
  nlohmann::json j = {{"kind", to_string(tok.kind())}, {"vocab_size", tok.vocab_size()}};
  if (!tok.split_pattern().empty()) j["pattern"] = tok.split_pattern();
  if (tok.bos_prefix() >= 0) j["bos_prefix"] = tok.bos_prefix();
  if (!tok.model_type().empty()) j["model_type"] = tok.model_type();
  std::string text = j.dump() + "\n";
  write_file_atomic(dir + "/" + kTokenizerDescription, text.data(), text.size());
}

// Whether the file is a tiktoken rank file: its first line is "BASE64 RANK".
static bool is_tiktoken_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  if (!std::getline(in, line) || line.size() > 2000) return false;
  size_t sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 == line.size()) return false;
  for (size_t i = 0; i < sp; i++)
    if (!std::isalnum(uint8_t(line[i])) && line[i] != '+' && line[i] != '/' && line[i] != '=') return false;
  for (size_t i = sp + 1; i < line.size(); i++)
    if (!std::isdigit(uint8_t(line[i]))) return false;
  return true;
}

std::unique_ptr<Tokenizer> load_pretrained_tokenizer(const std::string& path, const std::string& tiktoken_pattern) {
  namespace fs = std::filesystem;
  std::string file = path;
  if (fs::is_directory(path)) {
    file.clear();
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name)) { file = (fs::path(path) / name).string(); break; }
    // a Unigram tokenizer.json (T5's kind) is the tokenizer.model beside it converted: read that
    const fs::path sp = fs::path(path) / "tokenizer.model";
    if (file.ends_with(".json") && fs::exists(sp) && !is_tiktoken_file(sp.string())) {
      nlohmann::json j = nlohmann::json::parse(read_whole_file(file), nullptr, false);
      if (j.is_object() && j.contains("model") && j["model"].is_object() && j["model"].value("type", "") == "Unigram")
        file = sp.string();
    }
    if (file.empty()) {
      std::error_code ec;
      for (auto& e : fs::directory_iterator(path, ec))
        if (e.path().extension() == ".tiktoken") { file = e.path().string(); break; }
    }
    if (file.empty())
      user_error("--tokenizer {}: no tokenizer.json, tokenizer.model or *.tiktoken in the directory", path);
  } else if (!fs::exists(path)) {
    user_error("--tokenizer {}: no such file or directory: expected byte, gpt2, a tokenizer.json, a "
               "tokenizer.model, a *.tiktoken file or a directory holding one", path);
  }
  if (file.ends_with(".json")) return load_hf_tokenizer(file);
  if (file.ends_with(".tiktoken") || is_tiktoken_file(file)) {
    std::string pattern = tiktoken_pattern;
    if (pattern.empty()) {
      size_t ranks = read_tiktoken_ranks(file).size();
      pattern = ranks == 50256 ? "gpt2" : ranks == 100256 ? "cl100k" : ranks == 128000 ? "llama3" : "";
      if (pattern.empty())
        user_error("{}: a tiktoken rank file of {} ranks: name its pattern with --tiktoken-pattern "
                   "(gpt2, cl100k, llama3 or qwen2)", file, ranks);
    }
    return make_tiktoken_tokenizer(file, pattern);
  }
  if (file.ends_with(".model") && fs::is_directory(path))  // a model directory's: as transformers 5 converts it
    if (auto converted = load_converted_sentencepiece(file)) return converted;
  if (file.ends_with(".model")) return load_sentencepiece(file);
  user_error("--tokenizer {}: expected a tokenizer.json, a SentencePiece *.model or a *.tiktoken file", file);
}

}  // namespace frugal
