// Tokenizers: GPT-2's BPE against the reference, OpenAI's tiktoken (its GPT-2 encoding built
// offline from the same rank file, tests/reference/tiktoken_encode.py), on the whole default
// corpus, hard strings, every code point and tens of thousands of random strings; its Unicode
// classes are tiktoken's; exact round trips for any bytes; SentencePiece vocabularies trained on a
// corpus; tokenizer.json next to the shards.
#include <cstdlib>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "data/tokenizer_strings.h"
#include "support/support.h"

namespace frugal {
namespace {

const std::string kGpt2Files = std::string(FRUGAL_SOURCE_DIR) + "/" + kGpt2Dir;
const std::string kRanks = kGpt2Files + "/" + kGpt2Ranks;

Tokenizer& gpt2() {
  static std::unique_ptr<Tokenizer> tok = make_gpt2_tokenizer(kGpt2Files);
  return *tok;
}

std::string decode(const Tokenizer& tok, const std::vector<uint32_t>& ids) {
  return tok.decode(std::vector<int32_t>(ids.begin(), ids.end()));
}

// tiktoken's ids of strings (valid UTF-8) with mode "strings", or the bytes (hex) of ids with
// mode "decode".
template <class In, class Out>
std::vector<Out> tiktoken(const std::string& mode, const std::vector<In>& in) {
  test::TempDir d;
  std::ofstream(d / "in.json") << nlohmann::json(in).dump();
  EXPECT_TRUE(test::run_reference("tiktoken_encode.py", kRanks + " " + mode + " " + d / "in.json" + " " + d / "out.json"));
  std::ifstream out(d / "out.json");
  return nlohmann::json::parse(out).get<std::vector<Out>>();
}

// Encodes every string with frugal and tiktoken: same ids, and decode gives the string back.
void expect_tiktoken_ids(const std::vector<std::string>& strings, const std::string& what) {
  auto ref = tiktoken<std::string, std::vector<uint32_t>>("strings", strings);
  ASSERT_EQ(ref.size(), strings.size());
  int wrong = 0;
  for (size_t i = 0; i < strings.size() && wrong < 5; i++) {
    std::vector<uint32_t> ids = encode(gpt2(), strings[i]);
    EXPECT_EQ(ids, ref[i]) << what << " " << i << ": '" << strings[i].substr(0, 200)
                           << "' (FRUGAL_TEST_SEED=" << test::test_seed() << ")";
    EXPECT_EQ(decode(gpt2(), ids), strings[i]) << what << " " << i;
    wrong += ids != ref[i];
  }
}

// Appends code point cp (not a surrogate) as UTF-8.
// The bytes as valid UTF-8: every invalid sequence replaced by U+FFFD.
std::string valid_utf8(const std::string& bytes) {
  using nlohmann::json;
  return json::parse(json(bytes).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

TEST(Gpt2Tokenizer, KnownIds) {
  EXPECT_EQ(encode(gpt2(), "Hello world"), (std::vector<uint32_t>{15496, 995}));
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().decode({kGpt2Eot}), "<|endoftext|>");
  EXPECT_EQ(encode(gpt2(), ""), std::vector<uint32_t>{});
}

TEST(Gpt2Tokenizer, EqualsTiktokenOnHardStrings) {
  expect_tiktoken_ids(hard_strings(), "hard string");
}

// 10,000 strings of each kind, in one tiktoken call: over an alphabet of the regex's hard cases
// (every class, spaces of every kind, apostrophes before contraction letters, multi-byte code
// points); random code points (ASCII, the BMP, all planes); random bytes (as valid UTF-8: tiktoken
// takes text) and random ASCII bytes.
TEST(Gpt2Tokenizer, EqualsTiktokenOnRandomStrings) {
  const int kEach = 10000;
  std::vector<std::string> strings = random_strings(kEach);
  Rng rng(test::test_seed() + 1);
  for (int i = 0; i < 2 * kEach; i++) {
    std::string s(1 + rng.below(64), '\0');
    for (auto& c : s) c = char(rng.below(i < kEach ? 256 : 128));
    strings.push_back(valid_utf8(s));
  }
  expect_tiktoken_ids(strings, "random string");
}

// Every code point (surrogates aside) after a space, a letter, a digit and an apostrophe, one
// string per plane: where frugal's classes differed from tiktoken's, the pieces and so the ids
// would differ wherever GPT-2 has a merge across the boundary.
TEST(Gpt2Tokenizer, EqualsTiktokenOnEveryCodePoint) {
  std::vector<std::string> strings;
  for (uint32_t first = 0; first < 0x110000; first += 0x10000) {
    std::string s;
    for (uint32_t cp = std::max(first, 1u); cp < first + 0x10000; cp++) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      for (char probe : {' ', 'a', '1', '\''}) { s += probe; append_utf8(s, cp); }
    }
    strings.push_back(s);
  }
  expect_tiktoken_ids(strings, "plane");
}

// The class table (src/data/unicode_classes.inc) is what the generator reads off tiktoken now.
TEST(Gpt2Tokenizer, UnicodeClassesAreTiktokens) {
  test::TempDir d;
  ASSERT_TRUE(test::run_reference("../../scripts/gen_unicode_classes.py", "> " + d / "classes.inc"));
  EXPECT_EQ(read_whole_file(d / "classes.inc"),
            read_whole_file(std::string(FRUGAL_SOURCE_DIR) + "/src/data/unicode_classes.inc"))
      << "tiktoken's classes changed: regenerate src/data/unicode_classes.inc (scripts/gen_unicode_classes.py)";
}

// The whole default corpus (the KJV text `frugal prepare` uses), encoded in one call.
TEST(Gpt2Tokenizer, EqualsTiktokenOnDefaultCorpus) {
  std::string text = kjv_text();
  std::vector<uint32_t> ids = encode(gpt2(), text);
  test::TempDir d;
  std::ofstream(d / "kjv.txt", std::ios::binary) << text;
  ASSERT_TRUE(test::run_reference("tiktoken_encode.py", kRanks + " text " + d / "kjv.txt" + " " + d / "ref.bin"));
  std::string ref = read_whole_file(d / "ref.bin");
  ASSERT_EQ(ref.size(), ids.size() * 4) << "token counts differ";
  size_t first = 0;
  while (first < ids.size() && std::memcmp(ref.data() + 4 * first, &ids[first], 4) == 0) first++;
  EXPECT_EQ(first, ids.size()) << "first difference at token " << first;
  EXPECT_EQ(decode(gpt2(), ids), text);
}

// Any bytes, mostly invalid UTF-8 (which tiktoken cannot take as text): ids in range, decoded by
// frugal and by tiktoken to the same bytes.
TEST(Gpt2Tokenizer, RoundTripsAnyBytes) {
  Rng rng(test::test_seed());
  std::vector<std::string> raw;
  for (int i = 0; i < 10000; i++) {
    std::string s(size_t(rng.below(64)), '\0');
    for (auto& c : s) c = char(rng.below(256));
    raw.push_back(s);
  }
  // truncated, overlong and surrogate sequences next to letters and spaces
  for (std::string s : {"\xe4\xb8", "a\xc0\xafz", "\xed\xa0\x80 x", "\xf4\x90\x80\x80", " \xff\xfe  ", "é\x80"})
    raw.push_back(s);
  std::vector<std::vector<uint32_t>> ids;
  for (auto& s : raw) {
    ids.push_back(encode(gpt2(), s));
    for (uint32_t id : ids.back()) ASSERT_LT(id, uint32_t(kGpt2Vocab));
    ASSERT_EQ(decode(gpt2(), ids.back()), s);
  }
  auto hex = tiktoken<std::vector<uint32_t>, std::string>("decode", ids);
  ASSERT_EQ(hex.size(), raw.size());
  for (size_t i = 0; i < raw.size(); i++) {
    std::string bytes;
    for (size_t k = 0; k + 1 < hex[i].size(); k += 2) bytes += char(std::stoi(hex[i].substr(k, 2), nullptr, 16));
    ASSERT_EQ(bytes, raw[i]) << "string " << i;
  }
}

TEST(Gpt2Tokenizer, BadRankFilesAreUserErrors) {
  test::TempDir d;
  std::string f = d / kGpt2Ranks;
  auto load = [&] { make_gpt2_tokenizer(d.path.string()); };
  test::expect_user_error(load, f + ": missing: a tiktoken rank file");
  auto write = [&](const std::string& text) { std::ofstream(f, std::ios::binary) << text; };
  const std::pair<const char*, std::string> cases[] = {  // the file, and what the error says
      {"", ": no ranks"},
      {"IQ== 0\nIg== 1\nIw==\n", ":3: 'Iw==', expected 'BASE64_TOKEN RANK'"},
      {"IQ== 0\nIg== x1\n", ":2: 'Ig== x1', expected 'BASE64_TOKEN RANK'"},
      {"IQ== 0\nI!== 1\n", ":2: 'I!==' is not base64"},
      {"IQ== 0\nIg== 1\nIw== 1\n", ":3: rank 1 repeats line 2's"},
      {"IQ== 0\nIg== 1\nIw== 3\n", ":3: rank 3, expected 2: ranks run 0, 1, 2, ... without gaps"},
      {"IQ== 0\nIg== 1\nIQ== 2\n", ":3: token 'IQ==' repeats line 1's"},
      {"IQ== 0\nIg== 1\n", ": 2 ranks, expected GPT-2's 50256"},
  };
  for (auto& [text, error] : cases) {
    write(text);
    test::expect_user_error(load, f + error);
  }
  // the real file less its last line: a count error, not a crash
  std::string real = read_whole_file(kRanks);
  write(real.substr(0, real.rfind('\n', real.size() - 2) + 1));
  test::expect_user_error(load, f + ": 50255 ranks, expected GPT-2's 50256");
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
