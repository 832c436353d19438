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
      "\tIn the beginning\n\n\tGod  created\r\n", "  \n", "\n  ", "x \n", " \n\n "};
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
