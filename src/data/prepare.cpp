// `frugal prepare`: text files -> token shards with a train/val split, and the tokenizer's
// description next to them.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/data.h"

namespace frugal {

std::string kjv_text() {
  FILE* p = ::popen("COLUMNS=80 bible 'Genesis 1:1-Revelation 22:21' 2>/dev/null", "r");
  std::string text;
  if (p) {
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
    int rc = ::pclose(p);
    if (rc != 0) text.clear();
  }
  if (text.size() < 1000000)
    user_error("bible: the default corpus needs Debian's bible-kjv package (run scripts/setup.sh)");
  return text;
}

PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                            int val_every, const TokenizerOptions& opt) {
  if (val_every < 2) user_error("--val-every: expected an integer >= 2, got {}", val_every);
  std::vector<std::string> docs;
  if (inputs.empty()) docs.push_back(kjv_text());
  for (auto& f : inputs) docs.push_back(read_whole_file(f));
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) user_error("{}: cannot create directory: {}", out_dir, ec.message());
  std::unique_ptr<Tokenizer> tok;
  if (!opt.pretrained.empty()) tok = load_pretrained_tokenizer(opt.pretrained, opt.tiktoken_pattern);
  else switch (opt.kind) {
    case TokenizerKind::byte: tok = make_byte_tokenizer(); break;
    case TokenizerKind::gpt2: tok = make_gpt2_tokenizer(opt.gpt2_dir); break;
    case TokenizerKind::sentencepiece:
      tok = train_sentencepiece(docs, opt.vocab_size, opt.model_type);
      break;
    case TokenizerKind::hf_bpe:
    case TokenizerKind::tiktoken:
      user_error("prepare: a {} tokenizer is pretrained: name its file with --tokenizer PATH", to_string(opt.kind));
  }
  std::vector<uint32_t> stream;
  for (auto& d : docs) {
    if (!stream.empty()) stream.push_back(tok->eot());
    tok->encode(d, stream);
  }
  const size_t chunk = 8192;
  std::vector<uint32_t> train, val;
  for (size_t i = 0, k = 0; i < stream.size(); i += chunk, k++) {
    auto& dst = (k % size_t(val_every) == size_t(val_every) - 1) ? val : train;
    dst.insert(dst.end(), stream.begin() + i, stream.begin() + std::min(stream.size(), i + chunk));
  }
  if (val.empty()) user_error("prepare: the input has {} tokens, too few for a validation split", stream.size());
  PrepareStats st{int64_t(train.size()), int64_t(val.size()),
                  {out_dir + "/train_000.bin", out_dir + "/val_000.bin"}};
  write_shard(st.files[0], train);
  write_shard(st.files[1], val);
  save_tokenizer(out_dir, *tok);
  return st;
}

}  // namespace frugal
