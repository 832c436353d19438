// Byte-level BPE, private to data/: the pre-tokenisation regexes (hand-written, exact), the
// merge loop shared by tiktoken rank files (bpe.cpp) and Hugging Face tokenizer.json files
// (hf_tokenizer.cpp), and GPT-2's byte <-> character map that tokenizer.json vocabularies use.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <array>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/data.h"

namespace frugal {

// The code point at s[i] (n bytes in all) and its length in bytes; 0 where the bytes there are
// not UTF-8 (a bad lead or continuation byte, a cut sequence, an overlong form, a surrogate, or
// above U+10FFFF).
inline size_t utf8_at(const unsigned char* s, size_t i, size_t n, uint32_t& cp) {
  const unsigned char c = s[i];
  if (c < 0x80) { cp = c; return 1; }
  const size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
  if (len == 0 || c > 0xF4 || i + len > n) return 0;
  cp = c & (0x7F >> len);
  for (size_t k = 1; k < len; k++) {
    if ((s[i + k] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i + k] & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// The regexes text is split by before merging (each piece is merged on its own):
//   gpt2   '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//          (tiktoken's r50k_base, and tokenizer.json's ByteLevel with use_regex)
//   llama3 (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2  llama3's with \p{N} (one digit a piece) for \p{N}{1,3}
//   cl100k tiktoken's cl100k_base: llama3's, except that a whitespace run reaching the end of
//          the text is one piece (its \s++$)
// The classes are tiktoken's (src/data/unicode_classes.inc); a byte that is not UTF-8 counts as
// punctuation.
enum class SplitPattern { gpt2, llama3, qwen2, cl100k };
// "gpt2" ... "cl100k"; UserError naming `field` otherwise.
SplitPattern parse_split_pattern(const std::string& name, const std::string& field);
std::string to_string(SplitPattern p);
// The regex text of llama3 and qwen2 as tokenizer.json's Split pre-tokenizer spells it.
extern const char* const kLlama3Regex;
extern const char* const kQwen2Regex;
extern const char* const kGpt2Regex;

// The end of the piece that starts at s[i] (n bytes in all).
size_t next_piece(SplitPattern p, const unsigned char* s, size_t i, size_t n);

// A tiktoken rank file: the tokens' bytes by rank (UserError naming the file and the line).
std::vector<std::string> read_tiktoken_ranks(const std::string& path);

// GPT-2's bytes_to_unicode: the character (code point) each byte is written as in a
// tokenizer.json vocabulary.
std::array<uint32_t, 256> byte_level_chars();

// BPE over bytes. tokens: id -> bytes (ids with no token: empty). merges: (left, right, merged)
// ids by priority, first highest; none: tiktoken's rule (any two tokens whose bytes concatenate
// to a token merge, the lower merged id first). whole_first: a piece that is a token is that
// token (tiktoken; tokenizer.json's ignore_merges). Every byte must be a token.
class BytePairEncoder {
 public:
  BytePairEncoder(const std::vector<std::string>& tokens, const std::vector<std::array<uint32_t, 3>>& merges,
                  SplitPattern split, bool whole_first, const std::string& where);
  // Appends the ids of text (split, then merged); pieces seen before come from a cache.
  void encode(std::string_view text, std::vector<uint32_t>& out);
  SplitPattern split() const { return split_; }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  static uint64_t key(uint32_t a, uint32_t b) { return uint64_t(a) << 32 | b; }
  void merge(const std::string& piece, std::vector<uint32_t>& out);

  SplitPattern split_;
  bool whole_first_;
  std::unordered_map<std::string, uint32_t> id_of_;  // a token's bytes -> its id
  uint32_t byte_id_[256];
  // (left, right) -> (rank, merged): open addressing, linear probing, at most half full
  static constexpr uint64_t kNoKey = ~uint64_t(0);
  std::vector<uint64_t> pair_keys_;
  std::vector<std::pair<uint32_t, uint32_t>> pair_values_;
  int pair_shift_ = 64;
  const std::pair<uint32_t, uint32_t>* find_pair(uint64_t k) const {
    for (size_t h = size_t((k * 0x9E3779B97F4A7C15ull) >> pair_shift_);; h = (h + 1) & (pair_keys_.size() - 1)) {
      if (pair_keys_[h] == k) return &pair_values_[h];
      if (pair_keys_[h] == kNoKey) return nullptr;
    }
  }
  // The piece cache: direct-mapped, 2^16 slots of one cache line (4 MB, unlike a node map of
  // 2^20 pieces that misses the CPU's caches on every lookup); a piece of up to 22 bytes and 8
  // ids is kept in the slot its hash picks, until another piece takes the slot.
  struct alignas(64) CacheSlot {
    char bytes[22];
    uint8_t len = 0xFF, count = 0;  // len 0xFF: empty
    uint32_t ids[8];
  };
  static constexpr int kCacheBits = 16;
  static constexpr size_t kCachedBytes = sizeof(CacheSlot::bytes), kCachedIds = 8;
  std::vector<CacheSlot> cache_ = std::vector<CacheSlot>(size_t(1) << kCacheBits);
  std::string piece_;
  std::vector<uint32_t> word_, ranks_, merged_;
};

// The tokenizer_config.json in dir, checked; null where there is none. A UserError naming the
// file and the field where it is not a JSON object, or where a field frugal reads is of another
// type than transformers takes: a special token (bos_token, eos_token, ...) not a string, an
// AddedToken's {"content": string} or null; add_bos_token, add_eos_token, legacy or
// add_prefix_space not true, false or null; tokenizer_class not a string or null; chat_template
// not a string, a list of {"name": string, "template": string} or null.
nlohmann::json read_tokenizer_config(const std::string& dir);

// Tokenizer::bos_prefix of a Hugging Face tokenizer.json at `path` (`parsed`: the file parsed, or
// null: read it if it is there), else of the tokenizer_config.json beside it, for a tokenizer of
// vocab_size ids; id_of: a token's id from its text (-1: not a token). UserError naming the file
// and the field where they name a BOS that is not one of its tokens.
int64_t hf_bos_prefix(const std::string& path, const nlohmann::json* parsed, int64_t vocab_size,
                      const std::function<int64_t(const std::string&)>& id_of);

}  // namespace frugal
