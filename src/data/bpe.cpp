// Byte-level BPE (bpe.h): the pre-tokenisation regexes, the merge loop, and tiktoken rank files
// as tokenizers: GPT-2's gpt2.tiktoken (OpenAI's, as PyPI's openai-whisper ships it; <|endoftext|>
// = 50256) and any other rank file with a named pattern. Works on raw bytes, so any byte string
// round-trips.
#include "data/bpe.h"

#include <algorithm>
#include <charconv>
#include <filesystem>
#include <sstream>
#include <unordered_map>

#include "data/data.h"

namespace frugal {

namespace {

// ---- code points and their classes ----

enum Cls : uint8_t { kOther, kLetter, kNumber, kSpace };

struct Range { uint32_t first, last; uint8_t cls; };
constexpr Range kRanges[] = {
#include "data/unicode_classes.inc"
};

Cls classify(uint32_t cp) {
  auto it = std::upper_bound(std::begin(kRanges), std::end(kRanges), cp,
                             [](uint32_t c, const Range& r) { return c < r.first; });
  if (it == std::begin(kRanges) || cp > (it - 1)->last) return kOther;
  return Cls((it - 1)->cls);
}

struct AsciiTable {
  Cls cls[128];
  AsciiTable() { for (uint32_t c = 0; c < 128; c++) cls[c] = classify(c); }
};
const AsciiTable kAscii;

struct CodePoint { uint32_t len; Cls cls; };

// The code point at s[i] (n bytes in all): its length in bytes and class. A byte that does not
// start a valid UTF-8 sequence is one code point of class kOther.
CodePoint at(const unsigned char* s, size_t i, size_t n) {
  if (s[i] < 0x80) return {1, kAscii.cls[s[i]]};
  uint32_t cp;
  const size_t len = utf8_at(s, i, n, cp);
  return len ? CodePoint{uint32_t(len), classify(cp)} : CodePoint{1, kOther};
}

// GPT-2's regex: the end of the match that starts at s[i].
size_t next_piece_gpt2(const unsigned char* s, size_t i, size_t n) {
  // 's|'t|'re|'ve|'m|'ll|'d
  if (s[i] == '\'' && i + 1 < n) {
    unsigned char a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n && ((a == 'r' && s[i + 2] == 'e') || (a == 'v' && s[i + 2] == 'e') ||
                      (a == 'l' && s[i + 2] == 'l')))
      return i + 3;
  }
  CodePoint c = at(s, i, n);
  size_t j = i;
  Cls run = c.cls;
  if (s[i] == ' ' && i + 1 < n) {  // ' ?' before a letter, number or other run
    CodePoint d = at(s, i + 1, n);
    if (d.cls != kSpace) { run = d.cls; j = i + 1; }
  }
  if (run != kSpace) {  // ?\p{L}+ | ?\p{N}+ | ?[^\s\p{L}\p{N}]+
    while (j < n) {
      CodePoint d = at(s, j, n);
      if (d.cls != run) break;
      j += d.len;
    }
    return j;
  }
  // \s+(?!\S) | \s+ : a whitespace run, less its last code point when a non-space follows
  // and the run has more than one.
  size_t last = i;
  while (j < n) {
    CodePoint d = at(s, j, n);
    if (d.cls != kSpace) break;
    last = j;
    j += d.len;
  }
  return (j < n && last > i) ? last : j;
}

// "A+/=" base64 (standard alphabet, padded) -> bytes; false if s is not that.
bool base64_decode(std::string_view s, std::string& out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  out.clear();
  if (s.empty() || s.size() % 4 != 0) return false;
  for (size_t i = 0; i < s.size(); i += 4) {
    int pad = (s[i + 3] == '=') + (s[i + 2] == '=' && s[i + 3] == '=');
    if (pad > 0 && i + 4 != s.size()) return false;
    uint32_t v = 0;
    for (int k = 0; k < 4 - pad; k++) {
      int d = value(s[i + k]);
      if (d < 0) return false;
      v |= uint32_t(d) << (18 - 6 * k);
    }
    for (int k = 0; k < 3 - pad; k++) out += char(v >> (16 - 8 * k) & 0xFF);
  }
  return true;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d) at s[i] (the apostrophe): the end, or 0. Case-insensitive as
// Unicode folds: ſ (U+017F) is an s.
size_t contraction(const unsigned char* s, size_t i, size_t n) {
  auto low = [&](size_t k) -> int { return k < n && s[k] < 0x80 ? (s[k] | 0x20) : -1; };
  if (i + 1 >= n) return 0;
  int a = low(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return i + 3;  // ſ
  int b = low(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// Llama 3's regex (qwen2: digits = 1; cl100k: ws_to_end): the end of the match at s[i].
size_t next_piece_llama3(const unsigned char* s, size_t i, size_t n, int digits, bool ws_to_end) {
  if (s[i] == '\'') {
    if (size_t k = contraction(s, i, n)) return k;
  }
  auto cls = [&](size_t k) { return k < n ? at(s, k, n).cls : kSpace; };
  auto crlf = [&](size_t k) { return s[k] == '\r' || s[k] == '\n'; };
  CodePoint c = at(s, i, n);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  size_t j = i;
  if (c.cls != kLetter && c.cls != kNumber && !crlf(i) && cls(i + c.len) == kLetter) j = i + c.len;
  if (j < n && cls(j) == kLetter) {
    while (j < n) {
      CodePoint d = at(s, j, n);
      if (d.cls != kLetter) break;
      j += d.len;
    }
    return j;
  }
  // \p{N}{1,3}
  if (c.cls == kNumber) {
    j = i;
    for (int k = 0; k < digits && j < n; k++) {
      CodePoint d = at(s, j, n);
      if (d.cls != kNumber) break;
      j += d.len;
    }
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  j = i;
  if (s[i] == ' ' && cls(i + 1) == kOther) j = i + 1;
  if (cls(j) == kOther && j < n) {
    while (j < n) {
      CodePoint d = at(s, j, n);
      if (d.cls != kOther) break;
      j += d.len;
    }
    while (j < n && crlf(j)) j++;
    return j;
  }
  // whitespace: [\s++$] | \s*[\r\n]+ | \s+(?!\S) | \s+
  size_t last = i, after_newline = 0;
  for (j = i; j < n;) {
    CodePoint d = at(s, j, n);
    if (d.cls != kSpace) break;
    if (crlf(j)) after_newline = j + 1;
    last = j;
    j += d.len;
  }
  if (ws_to_end && j == n) return j;
  if (after_newline) return after_newline;
  return (j < n && last > i) ? last : j;
}

}  // namespace

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

size_t next_piece(SplitPattern p, const unsigned char* s, size_t i, size_t n) {
  switch (p) {
    case SplitPattern::gpt2: return next_piece_gpt2(s, i, n);
    case SplitPattern::llama3: return next_piece_llama3(s, i, n, 3, false);
    case SplitPattern::qwen2: return next_piece_llama3(s, i, n, 1, false);
    case SplitPattern::cl100k: return next_piece_llama3(s, i, n, 3, true);
  }
  return n;
}

SplitPattern parse_split_pattern(const std::string& name, const std::string& field) {
  for (SplitPattern p : {SplitPattern::gpt2, SplitPattern::llama3, SplitPattern::qwen2, SplitPattern::cl100k})
    if (to_string(p) == name) return p;
  user_error("{}: pattern '{}', expected gpt2, llama3, qwen2 or cl100k", field, name);
}

std::string to_string(SplitPattern p) {
  switch (p) {
    case SplitPattern::gpt2: return "gpt2";
    case SplitPattern::llama3: return "llama3";
    case SplitPattern::qwen2: return "qwen2";
    case SplitPattern::cl100k: return "cl100k";
  }
  return "?";
}

std::array<uint32_t, 256> byte_level_chars() {
  std::array<uint32_t, 256> cp;
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    cp[b] = printable ? b : next++;
  }
  return cp;
}

// A tiktoken rank file: one "BASE64_TOKEN RANK" per line, the ranks 0, 1, 2, ... in order
// (a rank is also the token's id). Returns the tokens' bytes by rank; every malformed line, a
// repeated rank or token, and a gap in the ranks is a UserError naming the file and the line.
std::vector<std::string> read_tiktoken_ranks(const std::string& path) {
  if (!std::filesystem::exists(path))
    user_error("{}: missing: a tiktoken rank file (scripts/setup.sh takes GPT-2's from PyPI's "
               "openai-whisper)", path);
  std::istringstream in(read_whole_file(path));
  std::vector<std::string> tokens;
  std::vector<int64_t> line_of_rank;
  std::unordered_map<std::string, int64_t> line_of_token;
  std::string line, bytes;
  for (int64_t no = 1; std::getline(in, line); no++) {
    if (line.empty()) continue;
    size_t sp = line.find(' ');
    std::string_view b64 = std::string_view(line).substr(0, std::min(sp, line.size()));
    std::string_view num = sp == std::string::npos ? std::string_view() : std::string_view(line).substr(sp + 1);
    int64_t rank = -1;
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), rank);
    if (sp == std::string::npos || num.empty() || ec != std::errc() || end != num.data() + num.size() || rank < 0)
      user_error("{}:{}: '{}', expected 'BASE64_TOKEN RANK'", path, no, line.substr(0, 80));
    if (!base64_decode(b64, bytes))
      user_error("{}:{}: '{}' is not base64", path, no, std::string(b64.substr(0, 80)));
    if (rank < int64_t(line_of_rank.size()))
      user_error("{}:{}: rank {} repeats line {}'s", path, no, rank, line_of_rank[size_t(rank)]);
    if (rank != int64_t(tokens.size()))
      user_error("{}:{}: rank {}, expected {}: ranks run 0, 1, 2, ... without gaps", path, no, rank, tokens.size());
    auto [it, fresh] = line_of_token.emplace(bytes, no);
    if (!fresh) user_error("{}:{}: token '{}' repeats line {}'s", path, no, std::string(b64), it->second);
    line_of_rank.push_back(no);
    tokens.push_back(bytes);
  }
  if (tokens.empty()) user_error("{}: no ranks: expected lines 'BASE64_TOKEN RANK'", path);
  return tokens;
}

BytePairEncoder::BytePairEncoder(const std::vector<std::string>& tokens,
                                 const std::vector<std::array<uint32_t, 3>>& merges, SplitPattern split,
                                 bool whole_first, const std::string& where)
    : split_(split), whole_first_(whole_first) {
  for (uint32_t id = 0; id < tokens.size(); id++)
    if (!tokens[id].empty()) id_of_[tokens[id]] = id;
  for (int b = 0; b < 256; b++) {
    auto it = id_of_.find(std::string(1, char(b)));
    if (it == id_of_.end()) user_error("{}: byte 0x{:02X} has no token", where, b);
    byte_id_[b] = it->second;
  }
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> pairs;  // (left, right) -> (rank, merged)
  if (merges.empty()) {  // tiktoken: every split of a token into two tokens, ranked by the token's id
    for (uint32_t id = 0; id < tokens.size(); id++) {
      const std::string& t = tokens[id];
      for (size_t k = 1; k < t.size(); k++) {
        auto l = id_of_.find(t.substr(0, k)), r = id_of_.find(t.substr(k));
        if (l != id_of_.end() && r != id_of_.end()) pairs[key(l->second, r->second)] = {id, id};
      }
    }
  }
  for (uint32_t rank = 0; rank < merges.size(); rank++)  // the first of a repeated pair counts
    pairs.emplace(key(merges[rank][0], merges[rank][1]), std::make_pair(rank, merges[rank][2]));
  int bits = 1;
  while ((size_t(1) << bits) < 2 * pairs.size() + 2) bits++;
  pair_shift_ = 64 - bits;
  pair_keys_.assign(size_t(1) << bits, kNoKey);
  pair_values_.resize(size_t(1) << bits);
  for (auto& [k, v] : pairs) {
    size_t h = size_t((k * 0x9E3779B97F4A7C15ull) >> pair_shift_);
    while (pair_keys_[h] != kNoKey) h = (h + 1) & (pair_keys_.size() - 1);
    pair_keys_[h] = k;
    pair_values_[h] = v;
  }
}

void BytePairEncoder::encode(std::string_view text, std::vector<uint32_t>& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const size_t j = next_piece(split_, s, i, n), len = j - i;
    const char* p = text.data() + i;
    i = j;
    CacheSlot* c = nullptr;
    if (len <= kCachedBytes) {
      uint64_t w[3] = {0, 0, 0};
      std::memcpy(w, p, len);
      uint64_t h = (w[0] ^ (w[1] * 0x9E3779B97F4A7C15ull) ^ ((w[2] + len) * 0xBF58476D1CE4E5B9ull)) * 0x94D049BB133111EBull;
      c = &cache_[size_t((h ^ (h >> 31)) >> (64 - kCacheBits))];
      if (c->len == len && std::memcmp(c->bytes, p, len) == 0) {
        out.insert(out.end(), c->ids, c->ids + c->count);
        continue;
      }
    }
    const size_t before = out.size();
    piece_.assign(p, len);
    merge(piece_, out);
    if (c && out.size() - before <= kCachedIds) {
      c->len = uint8_t(len);
      c->count = uint8_t(out.size() - before);
      std::memcpy(c->bytes, p, len);
      std::memcpy(c->ids, out.data() + before, c->count * sizeof(uint32_t));
    }
  }
}

// BPE of one piece; appends its ids. w: the parts' ids; r[k]: the rank of merging parts k and k+1
// (kNone: no merge), m[k] the merged id. The lowest rank merges first, the leftmost of equals.
void BytePairEncoder::merge(const std::string& piece, std::vector<uint32_t>& out) {
  if (whole_first_) {
    if (auto it = id_of_.find(piece); it != id_of_.end()) { out.push_back(it->second); return; }
  }
  std::vector<uint32_t>& w = word_;
  std::vector<uint32_t>& r = ranks_;
  std::vector<uint32_t>& m = merged_;
  w.clear();
  for (unsigned char c : piece) w.push_back(byte_id_[c]);
  auto pair = [&](size_t k) {
    const auto* v = find_pair(key(w[k], w[k + 1]));
    r[k] = v ? v->first : kNone;
    m[k] = v ? v->second : kNone;
  };
  r.assign(w.size() > 0 ? w.size() - 1 : 0, kNone);
  m.assign(r.size(), kNone);
  for (size_t k = 0; k < r.size(); k++) pair(k);
  while (!r.empty()) {
    size_t best = size_t(std::min_element(r.begin(), r.end()) - r.begin());
    if (r[best] == kNone) break;
    w[best] = m[best];
    w.erase(w.begin() + std::ptrdiff_t(best) + 1);
    r.erase(r.begin() + std::ptrdiff_t(best));
    m.erase(m.begin() + std::ptrdiff_t(best));
    if (best < r.size()) pair(best);
    if (best > 0) pair(best - 1);
  }
  out.insert(out.end(), w.begin(), w.end());
}

namespace {

// A tiktoken rank file as a tokenizer: ordinary text only (as tiktoken's encode_ordinary: text
// that spells a special token is encoded as text); the special tokens are only decoded. GPT-2's
// (kind gpt2, dir/gpt2.tiktoken) has <|endoftext|> = 50256; cl100k_base's (100,256 ranks) has
// tiktoken's <|endoftext|> = 100257 among ids up to 100276; any other has <|endoftext|> = its
// number of ranks.
class TiktokenTokenizer final : public Tokenizer {
 public:
  TiktokenTokenizer(const std::string& path, SplitPattern split, bool gpt2)
      : path_(path), gpt2_(gpt2), bytes_(read_tiktoken_ranks(path)) {
    if (gpt2 && bytes_.size() != size_t(kGpt2Eot))
      user_error("{}: {} ranks, expected GPT-2's {}", path_, bytes_.size(), kGpt2Eot);
    bpe_ = std::make_unique<BytePairEncoder>(bytes_, std::vector<std::array<uint32_t, 3>>{}, split, true, path_);
    eot_ = uint32_t(bytes_.size());
    vocab_ = int(bytes_.size()) + 1;
    if (split == SplitPattern::cl100k && bytes_.size() == 100256) { eot_ = 100257; vocab_ = 100277; }
    bytes_.resize(size_t(vocab_));
    bytes_[eot_] = "<|endoftext|>";
  }

  TokenizerKind kind() const override { return gpt2_ ? TokenizerKind::gpt2 : TokenizerKind::tiktoken; }
  int vocab_size() const override { return vocab_; }
  uint32_t eot() const override { return eot_; }
  int64_t bos() const override { return gpt2_ ? int64_t(eot_) : -1; }
  std::string split_pattern() const override { return gpt2_ ? "" : to_string(bpe_->split()); }
  void encode(std::string_view text, std::vector<uint32_t>& out) override { bpe_->encode(text, out); }

  bool has_id(int32_t id) const override { return id >= 0 && id < vocab_ && !bytes_[size_t(id)].empty(); }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (!has_id(id))
        user_error("{} tokenizer: token id {} outside [0, {}) or unused", to_string(kind()), id, vocab_);
      s += bytes_[size_t(id)];
    }
    return s;
  }

  void save_files(const std::string& dir) const override {
    std::error_code ec;
    std::string to = dir + "/" + (gpt2_ ? kGpt2Ranks : kTiktokenRanks);
    if (std::filesystem::equivalent(to, path_, ec)) return;
    std::string text = read_whole_file(path_);
    write_file_atomic(to, text.data(), text.size());
  }

 private:
  std::string path_;  // the rank file
  bool gpt2_;
  std::vector<std::string> bytes_;  // token id -> its bytes (the special token: its text)
  std::unique_ptr<BytePairEncoder> bpe_;
  uint32_t eot_;
  int vocab_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir) {
  return std::make_unique<TiktokenTokenizer>(dir + "/" + kGpt2Ranks, SplitPattern::gpt2, true);
}

std::unique_ptr<Tokenizer> make_tiktoken_tokenizer(const std::string& path, const std::string& pattern) {
  return std::make_unique<TiktokenTokenizer>(path, parse_split_pattern(pattern, path + ": pattern"), false);
}

}  // namespace frugal
