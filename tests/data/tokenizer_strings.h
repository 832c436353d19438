// Text shared by the tokenizer tests (tokenizer_test.cpp, pretrained_tokenizer_test.cpp): the
// hard strings of every pre-tokeniser regex (classes, spaces of every kind, contractions,
// special-token look-alikes), and seeded random strings over their alphabet and over random code
// points.
#pragma once
#include <string>
#include <vector>

#include "data/data.h"
#include "support/support.h"

namespace frugal {
namespace {

std::vector<uint32_t> encode(Tokenizer& tok, const std::string& s) {
  std::vector<uint32_t> ids;
  tok.encode(s, ids);
  return ids;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) { s += char(cp); return; }
  if (cp < 0x800) { s += char(0xC0 | cp >> 6); }
  else if (cp < 0x10000) { s += char(0xE0 | cp >> 12); s += char(0x80 | (cp >> 6 & 0x3F)); }
  else { s += char(0xF0 | cp >> 18); s += char(0x80 | (cp >> 12 & 0x3F)); s += char(0x80 | (cp >> 6 & 0x3F)); }
  s += char(0x80 | (cp & 0x3F));
}

std::vector<std::string> hard_strings() {
  return {
      "Hello world", " ", "  ", "\n", "\n\n\n", "a  b", "a   \n  b", "trailing spaces   ",
      "trailing newline\n", "tabs\t\tand\ttabs", " \t \n", "  \n\n  \n", "   leading", "x\r\ny\r\n",
      "I'm you're we've they'll he'd she's it't", "'s'S'RE'Ve 'll 'LL 'ſ 'Ll", "''''", "Mr. O'Neil's",
      "don't!!! ??? ...", " !!!", "@#$%^&*()_+-=[]{}|;':\",./<>?`~", "x!!\n\n\ny", "a.\r\n\r\n b",
      "1234567890 12 3.14159 1,000,000 007", "mixed123abc456def", "٣٤٥ Ⅻ ½ ² ¾",
      "日本語のテキスト、中文文本。", "한국어 텍스트", "emoji 😀👍🏽 👨‍👩‍👧‍👦 flags 🇩🇪 😀😀😀😀😀😀",
      "combining: e\u0301 a\u0308 n\u0303 \u0915\u093f \u0301\u0301", "Ελληνικά Русский עברית العربية",
      "ﬁ ligature ß ẞ", "\u00a0nbsp\u3000ideographic\u2003em \u2028ls\u2029ps",
      "x \u200bzero-width \ufeffbom \u0085nel \u0085\u0085x", "a\u3000\u3000b \u3000 c\u3000", "\u2003\u2003\u2003x",
      "<|endoftext|>", "a<|endoftext|>b <|end_of_text|>\n<|eot_id|><|eot_id|>x", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
      "<|endoftext", "<<|im_start|>>", std::string(600, 'a'), std::string(300, ' ') + "x", std::string(200, '7'),
      "The quick brown fox jumps over the lazy dog.  And then?\n\n  Nothing.   ",
      "\tIn the beginning\n\n\tGod  created\r\n", "  \n", "\n  ", "x \n", " \n\n ",
      // NFC's hard cases: marks out of order and before any letter, Hangul jamo (U+11A7 is no
      // trailing consonant), exclusions, singletons, starters that compose, decomposed (NFD) text,
      // marks newer than tokenizers' Unicode tables, combining marks after added tokens
      "e\u0301\u0316 a\u0316\u0301 o\u0328\u0304\u0301 \u0301\u0316start \u0345\u0334x \u05b0\u05b1\u05b0",
      "\u1100\u1161\u11a8 \u1100\u1161 \uac00\u11a8 \uac01\u11a8 \u1100\u1176 \uac00\u11a7 \u11a8\u1161\u1100",
      "\u0958\u0959 \u0915\u093c \u2adc \u2add\u0338 \u0f73 \u0f71\u0f72 \u0344 \u0340\u0341 \U0001D15F\U0001D165",
      "\u212b \u2126 \u212a \u00c5 A\u030a \uf900 \U0002F800 \u1fee \u0387",
      "\u0b47\u0b3e \u0dd9\u0dcf\u0dca \u0d46\u0d3e \u1025\u102e \U00011099\U000110BA",
      "A\u0308\u0304ngstro\u0308m cafe\u0301 Vie\u0323\u0302t nai\u0308ve u\u0308\u0304 s\u0323\u0307 \u1112\u1161\u11ab",
      "a\u1df6\u0301 c\u0c3c\u0301 \U00011935\U00011930 e\u1abf\u0301",
      "<|im_end|>\u0338 >\u0338 =\u0338 <|endoftext|>\u0301 A\u030a! \u00c5! \u212b!! A\u030a\u0301!"};
}

// Strings over an alphabet of the regexes' hard cases, and of random code points.
std::vector<std::string> random_strings(int each) {
  const std::vector<std::string> alphabet = {"a", "Z", "s", "S", "t", "l", "e", "'", " ", " ", "  ", "\n",
      "\t", "\r", "1", "9", "½", ".", "!", "-", "é", "e\u0301", "中", "😀", "\u00a0", "\u3000", "ß", "Ⅻ",
      "\u0085", "\ufeff", "\u2028", "<|eot_id|>", "<|endoftext|>", "ſ"};
  Rng rng(test::test_seed());
  std::vector<std::string> strings;
  for (int i = 0; i < each; i++) {
    std::string s;
    for (int k = 0, n = 1 + int(rng.below(40)); k < n; k++) s += alphabet[rng.below(alphabet.size())];
    strings.push_back(s);
  }
  for (int i = 0; i < each; i++) {
    std::string s;
    for (int k = 0, n = 1 + int(rng.below(48)); k < n; k++) {
      uint32_t cp;
      do {
        double u = rng.uniform();
        cp = u < 0.35 ? uint32_t(rng.below(0x80)) : u < 0.75 ? uint32_t(0x80 + rng.below(0x10000 - 0x80))
                                                             : uint32_t(rng.below(0x110000));
      } while (cp >= 0xD800 && cp <= 0xDFFF);
      append_utf8(s, cp);
    }
    strings.push_back(s);
  }
  return strings;
}

}  // namespace
}  // namespace frugal
