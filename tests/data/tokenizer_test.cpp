// Tokenizers: GPT-2's BPE against the reference encoder (npm's gpt-3-encoder, run with node) on
// the whole default corpus, hard strings and random strings; exact round trips for any bytes;
// SentencePiece vocabularies trained on a corpus; tokenizer.json next to the shards.
#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "support/support.h"

namespace frugal {
namespace {

const std::string kGpt2Files = std::string(FRUGAL_SOURCE_DIR) + "/" + kGpt2Dir;

Tokenizer& gpt2() {
  static std::unique_ptr<Tokenizer> tok = make_gpt2_tokenizer(kGpt2Files);
  return *tok;
}

std::vector<uint32_t> encode(Tokenizer& tok, const std::string& s) {
  std::vector<uint32_t> ids;
  tok.encode(s, ids);
  return ids;
}

std::string decode(const Tokenizer& tok, const std::vector<uint32_t>& ids) {
  return tok.decode(std::vector<int32_t>(ids.begin(), ids.end()));
}

// Runs tests/reference/gpt2_encode.js; false (with the reason) when node or the package is missing.
bool reference_available(std::string& why) {
  if (std::system("node --version >/dev/null 2>&1") != 0) { why = "node is not installed"; return false; }
  if (!std::filesystem::exists(kGpt2Files + "/Encoder.js")) {
    why = kGpt2Files + "/Encoder.js is missing (scripts/setup.sh fetches gpt-3-encoder)";
    return false;
  }
  return true;
}

void run_reference(const std::string& mode, const std::string& in, const std::string& out) {
  std::string cmd = "node " + std::string(FRUGAL_SOURCE_DIR) + "/tests/reference/gpt2_encode.js " +
                    kGpt2Files + " " + mode + " " + in + " " + out + " >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

// Reference encodings of strings (valid UTF-8).
std::vector<std::vector<uint32_t>> reference_encode(const std::vector<std::string>& strings) {
  test::TempDir d;
  std::ofstream(d / "in.json") << nlohmann::json(strings).dump();
  run_reference("strings", d / "in.json", d / "out.json");
  std::ifstream in(d / "out.json");
  return nlohmann::json::parse(in).get<std::vector<std::vector<uint32_t>>>();
}

TEST(Gpt2Tokenizer, KnownIdsWithoutNode) {
  EXPECT_EQ(encode(gpt2(), "Hello world"), (std::vector<uint32_t>{15496, 995}));
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().decode({kGpt2Eot}), "<|endoftext|>");
  EXPECT_EQ(encode(gpt2(), ""), std::vector<uint32_t>{});
}

TEST(Gpt2Tokenizer, EqualsReferenceOnHardStrings) {
  std::string why;
  if (!reference_available(why)) GTEST_SKIP() << "no reference encoder: " << why;
  std::vector<std::string> hard = {
      "Hello world", " ", "  ", "\n", "\n\n\n", "a  b", "a   \n  b", "trailing spaces   ",
      "trailing newline\n", "tabs\t\tand\ttabs", " \t \n", "  \n\n  \n", "   leading", "x\r\ny\r\n",
      "I'm you're we've they'll he'd she's it't", "'s'S'RE'Ve 'll 'LL", "''''", "Mr. O'Neil's",
      "don't!!! ??? ...", " !!!", "@#$%^&*()_+-=[]{}|;':\",./<>?`~",
      "1234567890 12 3.14159 1,000,000 007", "mixed123abc456def", "٣٤٥ Ⅻ ½ ² ¾",
      "日本語のテキスト、中文文本。", "한국어 텍스트", "emoji 😀👍🏽 👨‍👩‍👧‍👦 flags 🇩🇪 😀😀😀😀😀😀",
      "combining: e\u0301 a\u0308 n\u0303 \u0915\u093f \u0301\u0301", "Ελληνικά Русский עברית العربية",
      "ﬁ ligature ß ẞ", "\u00a0nbsp\u3000ideographic\u2003em \u2028ls\u2029ps",
      "x \u200bzero-width \ufeffbom \u0085nel", "a\u3000\u3000b \u3000 c\u3000", "\u2003\u2003\u2003x", "<|endoftext|>", std::string(600, 'a'),
      "The quick brown fox jumps over the lazy dog.  And then?\n\n  Nothing.   "};
  auto ref = reference_encode(hard);
  ASSERT_EQ(ref.size(), hard.size());
  for (size_t i = 0; i < hard.size(); i++) {
    EXPECT_EQ(encode(gpt2(), hard[i]), ref[i]) << "string " << i << ": '" << hard[i] << "'";
    EXPECT_EQ(decode(gpt2(), ref[i]), hard[i]);
  }
}

// Random strings over an alphabet of the regex's hard cases: every class, spaces of every kind,
// apostrophes before contraction letters, multi-byte code points.
TEST(Gpt2Tokenizer, EqualsReferenceOnRandomStrings) {
  std::string why;
  if (!reference_available(why)) GTEST_SKIP() << "no reference encoder: " << why;
  const std::vector<std::string> alphabet = {"a", "Z", "s", "t", "l", "e", "'", " ", " ", "  ", "\n",
      "\t", "\r", "1", "9", "½", ".", "!", "-", "é", "e\u0301", "中", "😀", "\u00a0", "\u3000", "ß", "Ⅻ"};
  uint64_t seed = test::test_seed();
  Rng rng(seed);
  std::vector<std::string> strings(300);
  for (auto& s : strings) {
    int n = 1 + int(rng.uniform() * 40);
    for (int k = 0; k < n; k++) s += alphabet[rng.below(alphabet.size())];
  }
  auto ref = reference_encode(strings);
  ASSERT_EQ(ref.size(), strings.size());
  for (size_t i = 0; i < strings.size(); i++)
    EXPECT_EQ(encode(gpt2(), strings[i]), ref[i]) << "'" << strings[i] << "' (FRUGAL_TEST_SEED=" << seed << ")";
}

// The whole default corpus (the KJV text `frugal prepare` uses), encoded in one call.
TEST(Gpt2Tokenizer, EqualsReferenceOnDefaultCorpus) {
  std::string why;
  if (!reference_available(why)) GTEST_SKIP() << "no reference encoder: " << why;
  std::string text = kjv_text();
  std::vector<uint32_t> ids = encode(gpt2(), text);
  test::TempDir d;
  std::ofstream(d / "kjv.txt", std::ios::binary) << text;
  run_reference("text", d / "kjv.txt", d / "ref.bin");
  std::string ref = read_whole_file(d / "ref.bin");
  ASSERT_EQ(ref.size(), ids.size() * 4) << "token counts differ";
  size_t first = 0;
  while (first < ids.size() && std::memcmp(ref.data() + 4 * first, &ids[first], 4) == 0) first++;
  EXPECT_EQ(first, ids.size()) << "first difference at token " << first;
  EXPECT_EQ(decode(gpt2(), ids), text);
}

TEST(Gpt2Tokenizer, RoundTripsAnyBytes) {
  Rng rng(test::test_seed());
  for (int i = 0; i < 2000; i++) {
    std::string s(size_t(rng.uniform() * 64), '\0');
    for (auto& c : s) c = char(int(rng.uniform() * 256));  // mostly invalid UTF-8
    std::vector<uint32_t> ids = encode(gpt2(), s);
    for (uint32_t id : ids) ASSERT_LT(id, uint32_t(kGpt2Vocab));
    ASSERT_EQ(decode(gpt2(), ids), s);
  }
  // truncated, overlong and surrogate sequences next to letters and spaces
  for (std::string s : {"\xe4\xb8", "a\xc0\xafz", "\xed\xa0\x80 x", "\xf4\x90\x80\x80", " \xff\xfe  ", "é\x80"})
    EXPECT_EQ(decode(gpt2(), encode(gpt2(), s)), s);
}

TEST(Gpt2Tokenizer, BadVocabularyFilesAreUserErrors) {
  test::TempDir d;
  test::expect_user_error([&] { make_gpt2_tokenizer(d.path.string()); }, "encoder.json: missing");
  std::ofstream(d / "encoder.json") << "{\"a\": 0}";
  std::ofstream(d / "vocab.bpe") << "#version: 0.2\n";
  test::expect_user_error([&] { make_gpt2_tokenizer(d.path.string()); }, "encoder.json: expected an object of 50257 tokens, got 1");
  std::ofstream(d / "encoder.json") << "{\"a\": ";
  test::expect_user_error([&] { make_gpt2_tokenizer(d.path.string()); }, "encoder.json: not valid JSON");
}

TEST(Prepare, Gpt2ShardsAndTokenizerJson) {
  test::TempDir d;
  std::string text = "In the beginning God created the heaven and the earth.\n";
  std::string doc;
  for (int i = 0; i < 2000; i++) doc += text;
  std::ofstream(d / "doc.txt") << doc;
  TokenizerOptions opt;
  opt.kind = TokenizerKind::gpt2;
  opt.gpt2_dir = kGpt2Files;
  PrepareStats st = prepare_corpus({d / "doc.txt", d / "doc.txt"}, d / "out", 4, opt);
  std::vector<uint32_t> one = encode(gpt2(), doc);
  EXPECT_EQ(st.train_tokens + st.val_tokens, int64_t(2 * one.size() + 1));
  TokenShard train(d / "out/train_000.bin", kGpt2Vocab);
  for (size_t i = 0; i < 20; i++) EXPECT_EQ(train[int64_t(i)], one[i]);
  auto tok = load_tokenizer(d / "out");  // from the copies of GPT-2's files next to the shards
  EXPECT_EQ(tok->kind(), TokenizerKind::gpt2);
  EXPECT_EQ(encode(*tok, text), encode(gpt2(), text));
  // a model vocabulary below the data's: the error says which tokenizer and what to set
  test::expect_user_error([&] { TokenShard(d / "out/train_000.bin", kByteVocab); },
                          "the shards' tokenizer, gpt2, has 50257 ids: set model.vocab_size = 50257");
  // no tokenizer.json: byte-level
  EXPECT_EQ(load_tokenizer(d.path.string())->kind(), TokenizerKind::byte);
}

// A custom vocabulary: exactly the size asked, an exact round trip on the corpus, shards below it.
TEST(SentencePiece, TrainedVocabularyRoundTripsTheCorpus) {
  test::TempDir d;
  std::string text = kjv_text();
  text = text.substr(0, text.find('\n', 150000) + 1) + "  odd  spacing\t\ttabs, ünïcödé 中文 😀\n";
  std::ofstream(d / "corpus.txt", std::ios::binary) << text;
  try {
    (void)train_sentencepiece({"a b c"}, 300, "bpe");
  } catch (const UserError& e) {
    if (std::string(e.what()).find("built without SentencePiece") != std::string::npos)
      GTEST_SKIP() << e.what();
  }
  for (const char* type : {"bpe", "unigram"}) {
    SCOPED_TRACE(type);
    TokenizerOptions opt;
    opt.kind = TokenizerKind::sentencepiece;
    opt.vocab_size = 600;
    opt.model_type = type;
    std::string out = d / type;
    prepare_corpus({d / "corpus.txt"}, out, 4, opt);
    auto tok = load_tokenizer(out);
    EXPECT_EQ(tok->kind(), TokenizerKind::sentencepiece);
    EXPECT_EQ(tok->vocab_size(), 600);
    std::vector<uint32_t> ids = encode(*tok, text);
    EXPECT_LT(ids.size(), text.size() / 2);  // it learned something beyond bytes
    EXPECT_EQ(decode(*tok, ids), text);
    uint32_t max_id = 0;
    for (const char* f : {"/train_000.bin", "/val_000.bin"}) {
      TokenShard s(out + f, 0);
      for (int64_t i = 0; i < s.size(); i++) max_id = std::max(max_id, s[i]);
    }
    EXPECT_LT(max_id, 600u);
    EXPECT_GT(max_id, 400u);
  }
  TokenizerOptions bad;
  bad.kind = TokenizerKind::sentencepiece;
  bad.vocab_size = 100;
  test::expect_user_error([&] { prepare_corpus({d / "corpus.txt"}, d / "bad", 4, bad); }, "--vocab-size: expected at least 260");
}

}  // namespace
}  // namespace frugal
