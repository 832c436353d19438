// GPT-2's byte-level BPE in tiktoken's form: the rank file gpt2.tiktoken (OpenAI's, as PyPI's
// openai-whisper ships it), GPT-2's pre-tokenisation regex (hand-written, exact), the merges
// tiktoken makes, and <|endoftext|> = 50256. Works on raw bytes, so any byte string round-trips.
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
  unsigned char c = s[i];
  if (c < 0x80) return {1, kAscii.cls[c]};
  uint32_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len == 0 || c > 0xF4 || i + len > n) return {1, kOther};
  uint32_t cp = c & (0x7F >> len);
  for (uint32_t k = 1; k < len; k++) {
    if ((s[i + k] & 0xC0) != 0x80) return {1, kOther};
    cp = cp << 6 | (s[i + k] & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {1, kOther};
  return {len, classify(cp)};
}

// The end of the regex match that starts at s[i].
size_t next_piece(const unsigned char* s, size_t i, size_t n) {
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

// Byte-level BPE as tiktoken does it: a piece that is a token is that token; otherwise, from its
// bytes, the adjacent pair whose concatenation has the lowest rank (the leftmost of equals) is
// merged, one pair at a time, until no pair is a token. Special tokens are only decoded (text
// that spells one is encoded as ordinary text, as tiktoken's encode_ordinary does).
class Gpt2Tokenizer final : public Tokenizer {
 public:
  explicit Gpt2Tokenizer(const std::string& dir) : path_(dir + "/" + kGpt2Ranks) {
    bytes_ = read_tiktoken_ranks(path_);
    if (bytes_.size() != size_t(kGpt2Eot))
      user_error("{}: {} ranks, expected GPT-2's {}", path_, bytes_.size(), kGpt2Eot);
    for (uint32_t id = 0; id < bytes_.size(); id++) id_of_[bytes_[id]] = id;
    for (int b = 0; b < 256; b++) {
      auto it = id_of_.find(std::string(1, char(b)));
      if (it == id_of_.end()) user_error("{}: byte 0x{:02X} has no token", path_, b);
      byte_id_[b] = it->second;
    }
    // every split of a token into two tokens: (left id, right id) -> the token's id
    for (uint32_t id = 0; id < bytes_.size(); id++) {
      const std::string& t = bytes_[id];
      for (size_t k = 1; k < t.size(); k++) {
        auto l = id_of_.find(t.substr(0, k)), r = id_of_.find(t.substr(k));
        if (l != id_of_.end() && r != id_of_.end()) pairs_[key(l->second, r->second)] = id;
      }
    }
    bytes_.push_back("<|endoftext|>");
  }

  TokenizerKind kind() const override { return TokenizerKind::gpt2; }
  int vocab_size() const override { return kGpt2Vocab; }
  uint32_t eot() const override { return kGpt2Eot; }

  void encode(std::string_view text, std::vector<uint32_t>& out) override {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    size_t n = text.size();
    for (size_t i = 0; i < n;) {
      size_t j = next_piece(s, i, n);
      piece_.assign(text.data() + i, j - i);
      auto it = cache_.find(piece_);
      if (it == cache_.end()) {
        if (cache_.size() >= kMaxCache) { cache_.clear(); cache_ids_.clear(); }
        size_t begin = cache_ids_.size();
        merge(piece_, cache_ids_);
        it = cache_.emplace(piece_, std::make_pair(uint32_t(begin), uint32_t(cache_ids_.size() - begin))).first;
      }
      out.insert(out.end(), cache_ids_.begin() + it->second.first,
                 cache_ids_.begin() + it->second.first + it->second.second);
      i = j;
    }
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id < 0 || id >= kGpt2Vocab) user_error("gpt2 tokenizer: token id {} outside [0, {})", id, kGpt2Vocab);
      s += bytes_[size_t(id)];
    }
    return s;
  }

  void save_files(const std::string& dir) const override {
    std::error_code ec;
    std::string to = dir + "/" + kGpt2Ranks;
    if (std::filesystem::equivalent(to, path_, ec)) return;
    std::string text = read_whole_file(path_);
    write_file_atomic(to, text.data(), text.size());
  }

 private:
  static constexpr size_t kMaxCache = 1 << 20;  // pieces; the cache starts over when full
  static constexpr uint32_t kNone = UINT32_MAX;
  static uint64_t key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }
  uint32_t pair(uint32_t a, uint32_t b) const {
    auto it = pairs_.find(key(a, b));
    return it == pairs_.end() ? kNone : it->second;
  }

  // BPE of one piece; appends its ids. w: the parts' ids; r[k]: the id (= rank) of parts k and
  // k+1 merged, or kNone.
  void merge(const std::string& piece, std::vector<uint32_t>& out) {
    if (auto it = id_of_.find(piece); it != id_of_.end()) { out.push_back(it->second); return; }
    std::vector<uint32_t>& w = word_;
    std::vector<uint32_t>& r = pair_ids_;
    w.clear();
    r.clear();
    for (unsigned char c : piece) w.push_back(byte_id_[c]);
    for (size_t k = 0; k + 1 < w.size(); k++) r.push_back(pair(w[k], w[k + 1]));
    while (!r.empty()) {
      size_t best = size_t(std::min_element(r.begin(), r.end()) - r.begin());
      if (r[best] == kNone) break;
      w[best] = r[best];
      w.erase(w.begin() + std::ptrdiff_t(best) + 1);
      r.erase(r.begin() + std::ptrdiff_t(best));
      if (best < r.size()) r[best] = pair(w[best], w[best + 1]);
      if (best > 0) r[best - 1] = pair(w[best - 1], w[best]);
    }
    out.insert(out.end(), w.begin(), w.end());
  }

  std::string path_;                // the rank file
  std::vector<std::string> bytes_;  // token id -> its bytes (the special token: its text)
  std::unordered_map<std::string, uint32_t> id_of_;  // a token's bytes -> its id
  uint32_t byte_id_[256];
  std::unordered_map<uint64_t, uint32_t> pairs_;  // (left id, right id) -> merged id
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> cache_;  // piece -> ids
  std::vector<uint32_t> cache_ids_;
  std::string piece_;
  std::vector<uint32_t> word_, pair_ids_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir) {
  return std::make_unique<Gpt2Tokenizer>(dir);
}

}  // namespace frugal
