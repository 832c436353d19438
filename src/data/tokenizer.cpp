// The tokenizer interface's plumbing: the byte-level tokenizer, and a shard directory's
// tokenizer.json (which tokenizer made the shards, so that sample and train can find it).
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/data.h"

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

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("{}: cannot read", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}


std::unique_ptr<Tokenizer> make_byte_tokenizer() { return std::make_unique<ByteTokenizer>(); }

std::string to_string(TokenizerKind k) {
  switch (k) {
    case TokenizerKind::byte: return "byte";
    case TokenizerKind::gpt2: return "gpt2";
    case TokenizerKind::sentencepiece: return "sentencepiece";
  }
  return "?";
}

TokenizerInfo tokenizer_info(const std::string& dir) {
  std::string path = dir + "/tokenizer.json";
  if (!std::filesystem::exists(path)) return {"byte", kByteVocab};
  try {
    auto j = nlohmann::json::parse(read_whole_file(path));
    return {j.at("kind").get<std::string>(), j.at("vocab_size").get<int64_t>()};
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: expected {{\"kind\": ..., \"vocab_size\": ...}}: {}", path, e.what());
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  std::string path = dir + "/tokenizer.json";
  auto [kind, vocab] = tokenizer_info(dir);
  std::unique_ptr<Tokenizer> tok;
  if (kind == "byte") tok = make_byte_tokenizer();
  else if (kind == "gpt2") tok = make_gpt2_tokenizer(dir);
  else if (kind == "sentencepiece") tok = load_sentencepiece(dir + "/tokenizer.model");
  else user_error("{}: kind '{}', expected byte, gpt2 or sentencepiece", path, kind);
  if (tok->vocab_size() != vocab)
    user_error("{}: vocab_size {}, but the {} tokenizer there has {}", path, vocab, kind, tok->vocab_size());
  return tok;
}

void save_tokenizer(const std::string& dir, const Tokenizer& tok) {
  tok.save_files(dir);
  nlohmann::json j = {{"kind", to_string(tok.kind())}, {"vocab_size", tok.vocab_size()}};
  std::string text = j.dump() + "\n";
  write_file_atomic(dir + "/tokenizer.json", text.data(), text.size());
}

}  // namespace frugal
