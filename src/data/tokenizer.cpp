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
    return {j.at("kind").get<std::string>(), j.at("vocab_size").get<int64_t>(), j.value("pattern", std::string())};
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: expected {{\"kind\": ..., \"vocab_size\": ...}}: {}", path, e.what());
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  std::string path = dir + "/" + kTokenizerDescription;
  auto [kind, vocab, pattern] = tokenizer_info(dir);
  std::unique_ptr<Tokenizer> tok;
  if (kind == "byte") tok = make_byte_tokenizer();
  else if (kind == "gpt2") tok = make_gpt2_tokenizer(dir);
  else if (kind == "sentencepiece") tok = load_sentencepiece(dir + "/tokenizer.model");
  else if (kind == "hf_bpe") tok = load_hf_tokenizer(dir + "/tokenizer.json");
  else if (kind == "tiktoken") tok = make_tiktoken_tokenizer(dir + "/" + kTiktokenRanks, pattern);
  else user_error("{}: kind '{}', expected byte, gpt2, sentencepiece, hf_bpe or tiktoken", path, kind);
  if (tok->vocab_size() != vocab)
    user_error("{}: vocab_size {}, but the {} tokenizer there has {}", path, vocab, kind, tok->vocab_size());
  return tok;
}

int32_t shard_eot(const std::string& shard) {
  std::string dir = std::filesystem::path(shard).parent_path().string();
  if (dir.empty()) dir = ".";
  // shards with no description are byte-level for decoding, but a foreign stream's (llm.c's
  // GPT-2 shards) end of text is not 256: cutting there would cut at an ordinary token
  if (!std::filesystem::exists(dir + "/" + kTokenizerDescription) && !std::filesystem::exists(dir + "/tokenizer.json"))
    user_error("{}: no {} names the shards' tokenizer, whose end of text data.document_mask cuts at (shards from "
               "llm.c's GPT-2 scripts: write {{\"kind\": \"gpt2\", \"vocab_size\": 50257}} there)",
               dir, kTokenizerDescription);
  return int32_t(load_tokenizer(dir)->eot());
}

void save_tokenizer(const std::string& dir, const Tokenizer& tok) {
  tok.save_files(dir);
  nlohmann::json j = {{"kind", to_string(tok.kind())}, {"vocab_size", tok.vocab_size()}};
  if (!tok.split_pattern().empty()) j["pattern"] = tok.split_pattern();
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
    // Llama 2, Mistral and TinyLlama ship their SentencePiece model twice: as tokenizer.model and
    // converted into a tokenizer.json (byte fallback), which only the former reads here
    const fs::path sp = fs::path(path) / "tokenizer.model";
    if (file.ends_with(".json") && fs::exists(sp) && !is_tiktoken_file(sp.string())) {
      nlohmann::json j = nlohmann::json::parse(read_whole_file(file), nullptr, false);
      if (j.is_object() && j.contains("model") && j["model"].is_object() &&
          (j["model"].value("byte_fallback", false) || j["model"].value("type", "") == "Unigram"))
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
  if (file.ends_with(".model")) return load_sentencepiece(file);
  user_error("--tokenizer {}: expected a tokenizer.json, a SentencePiece *.model or a *.tiktoken file", file);
}

}  // namespace frugal
