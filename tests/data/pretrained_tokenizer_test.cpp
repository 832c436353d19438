// Pretrained tokenizers against the Python packages they come from: Hugging Face tokenizer.json
// byte-level BPE (GPT-2's ByteLevel regex, Llama 3's Split regex with its special tokens, Qwen2's
// with its NFC normalizer) against tokenizers, a SentencePiece model with Llama 2's settings
// against sentencepiece, a tiktoken rank file with cl100k's pattern against tiktoken. The
// vocabularies are trained on the KJV by tests/reference/pretrained_tokenizers.py; compared on
// the whole KJV, hard strings and random Unicode: the same ids, and decode(encode(s)) == s (with
// NFC: == NFC(s), NFC being lossy). frugal's NFC against tokenizers' on strings where it has work
// and on every code point. Bad tokenizer.json files are UserErrors naming the file and the field;
// `prepare --tokenizer` writes the tokenizer next to the shards.
#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "data/tokenizer_strings.h"
#include "support/support.h"

namespace frugal {
namespace {

using nlohmann::json;

// The fixtures: trained once per test run.
const test::TempDir& fixtures() {
  static test::TempDir d;
  static bool made = [] {
    std::ofstream(d / "kjv.txt", std::ios::binary) << kjv_text();
    return bool(test::run_reference("pretrained_tokenizers.py", "train " + d / "kjv.txt" + " " + d / "out"));
  }();
  EXPECT_TRUE(made);
  return d;
}
std::string fixture(const std::string& f) { return fixtures() / ("out/" + f); }

// The reference's ids of each string (KIND: hf, sp, tiktoken-cl100k; see the script).
std::vector<std::vector<uint32_t>> reference_ids(const std::string& kind, const std::string& path,
                                                 const std::vector<std::string>& strings) {
  test::TempDir d;
  std::ofstream(d / "in.json") << json(strings).dump();
  EXPECT_TRUE(test::run_reference("pretrained_tokenizers.py", "ids " + kind + " " + path + " " + d / "in.json" + " " + d / "out.json"));
  std::ifstream out(d / "out.json");
  return json::parse(out).get<std::vector<std::vector<uint32_t>>>();
}

// What decode(encode(s)) gives back: nothing checked, s, or (a normalizer NFC, which is lossy)
// text canonically equivalent to s: the text between added tokens in NFC, an added token as its
// content is written, so NFC(decode(encode(s))) == NFC(s).
enum class RoundTrip { none, exact, nfc };

// Same ids as the reference on every string, and decode's text as round_trip says.
void expect_reference_ids(Tokenizer& tok, const std::string& kind, const std::string& path,
                          const std::vector<std::string>& strings, RoundTrip round_trip) {
  auto ref = reference_ids(kind, path, strings);
  ASSERT_EQ(ref.size(), strings.size());
  int wrong = 0;
  for (size_t i = 0; i < strings.size() && wrong < 5; i++) {
    std::vector<uint32_t> ids = encode(tok, strings[i]);
    EXPECT_EQ(ids, ref[i]) << kind << " string " << i << ": '" << strings[i].substr(0, 200)
                           << "' (FRUGAL_TEST_SEED=" << test::test_seed() << ")";
    wrong += ids != ref[i];
    std::string text = tok.decode(std::vector<int32_t>(ids.begin(), ids.end()));
    if (round_trip == RoundTrip::exact) { EXPECT_EQ(text, strings[i]) << kind << " string " << i; }
    if (round_trip == RoundTrip::nfc) { EXPECT_EQ(nfc(text), nfc(strings[i])) << kind << " string " << i; }
  }
}

// The whole KJV in one call.
void expect_reference_corpus(Tokenizer& tok, const std::string& kind, const std::string& path) {
  std::string text = read_whole_file(fixtures() / "kjv.txt");
  std::vector<uint32_t> ids = encode(tok, text);
  test::TempDir d;
  ASSERT_TRUE(test::run_reference("pretrained_tokenizers.py", "text " + kind + " " + path + " " + fixtures() / "kjv.txt" + " " + d / "ref.bin"));
  std::string ref = read_whole_file(d / "ref.bin");
  ASSERT_EQ(ref.size(), ids.size() * 4) << "token counts differ";
  size_t first = 0;
  while (first < ids.size() && std::memcmp(ref.data() + 4 * first, &ids[first], 4) == 0) first++;
  EXPECT_EQ(first, ids.size()) << "first difference at token " << first;
  EXPECT_EQ(tok.decode(std::vector<int32_t>(ids.begin(), ids.end())), text);
}

TEST(HfTokenizer, Gpt2StyleEqualsTokenizers) {
  std::string path = fixture("gpt2/tokenizer.json");
  auto tok = load_hf_tokenizer(path);
  EXPECT_EQ(tok->kind(), TokenizerKind::hf_bpe);
  EXPECT_EQ(tok->vocab_size(), 3000);
  EXPECT_EQ(tok->eot(), 0u);  // <|endoftext|>, the trainer's special token
  expect_reference_ids(*tok, "hf", path, hard_strings(), RoundTrip::exact);
  expect_reference_ids(*tok, "hf", path, random_strings(3000), RoundTrip::exact);
  expect_reference_corpus(*tok, "hf", path);
}

TEST(HfTokenizer, Llama3StyleEqualsTokenizers) {
  std::string path = fixture("llama3/tokenizer.json");
  auto tok = load_hf_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 4138);  // 4000 trained, 131 boundary tokens, 7 special
  EXPECT_EQ(tok->eot(), 4132u);  // tokenizer_config.json's eos_token <|end_of_text|>
  EXPECT_EQ(encode(*tok, "<|eot_id|>"), std::vector<uint32_t>{4135});
  EXPECT_EQ(tok->decode({4135}), "<|eot_id|>");
  expect_reference_ids(*tok, "hf", path, hard_strings(), RoundTrip::exact);
  expect_reference_ids(*tok, "hf", path, random_strings(3000), RoundTrip::exact);
  expect_reference_corpus(*tok, "hf", path);
}

// Strings where NFC has work: letters and combining marks of many classes in any order, Hangul
// jamo and syllables, composites, exclusions and singletons, starters that compose, marks newer
// than tokenizers' Unicode tables, and any code point.
std::vector<std::string> nfc_strings(int count) {
  static const std::vector<std::pair<uint32_t, uint32_t>> pools = {
      {'a', 'z'}, {'A', 'Z'}, {' ', ' '}, {0x300, 0x36F}, {0x300, 0x36F}, {0x591, 0x5C7}, {0x610, 0x61A},
      {0x64B, 0x65F}, {0x900, 0x97F}, {0x9BC, 0x9D7}, {0xB3C, 0xB57}, {0xBBE, 0xBD7}, {0xCBC, 0xCD6},
      {0xD3E, 0xD57}, {0xDCA, 0xDDF}, {0xE30, 0xE4E}, {0xF71, 0xF87}, {0x1025, 0x102E}, {0x1100, 0x1112},
      {0x1161, 0x1175}, {0x11A7, 0x11C3}, {0xAC00, 0xD7A3}, {0x1AB0, 0x1ACE}, {0x1DC0, 0x1DFF},
      {0x20D0, 0x20F0}, {0x302A, 0x302F}, {0x3099, 0x309A}, {0xC0, 0x17F}, {0x1E00, 0x1FFF},
      {0x2126, 0x212B}, {0x2ADC, 0x2ADD}, {0xF900, 0xFAFF}, {0x1D15E, 0x1D172}, {0x1D1BB, 0x1D1C0},
      {0x2F800, 0x2FA1D}, {0x11099, 0x110BA}, {0x11127, 0x11134}, {0x11930, 0x11943}, {0, 0x10FFFF}};
  Rng rng(test::test_seed() + 1);
  std::vector<std::string> strings;
  for (int i = 0; i < count; i++) {
    std::string s;
    for (int k = 0, n = 1 + int(rng.below(24)); k < n; k++) {
      auto [first, last] = pools[rng.below(pools.size())];
      uint32_t cp = first + uint32_t(rng.below(last - first + 1));
      if (cp < 0xD800 || cp > 0xDFFF) append_utf8(s, cp);
    }
    strings.push_back(s);
  }
  return strings;
}

// tokenizers' NFC of each string.
std::vector<std::string> reference_nfc(const std::vector<std::string>& strings) {
  test::TempDir d;
  std::ofstream(d / "in.json") << json(strings).dump();
  EXPECT_TRUE(test::run_reference("pretrained_tokenizers.py", "nfc " + d / "in.json" + " " + d / "out.json"));
  std::ifstream out(d / "out.json");
  return json::parse(out).get<std::vector<std::string>>();
}

TEST(HfTokenizer, Qwen2StyleEqualsTokenizers) {
  std::string path = fixture("qwen2/tokenizer.json");
  auto tok = load_hf_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 3001);  // 3000 trained, one added token
  EXPECT_EQ(tok->eot(), 0u);           // <|endoftext|>
  // NFC before splitting: a decomposed letter is the composed one; the added token with
  // "normalized": true (written A + ring above) is found in the normalised text
  EXPECT_EQ(encode(*tok, "caf\u00e9"), encode(*tok, "cafe\u0301"));
  auto plain = load_hf_tokenizer(fixture("llama3/tokenizer.json"));  // no normalizer: they differ
  EXPECT_NE(encode(*plain, "caf\u00e9"), encode(*plain, "cafe\u0301"));
  for (const char* s : {"A\u030a!", "\u00c5!", "\u212b!"}) EXPECT_EQ(encode(*tok, s), std::vector<uint32_t>{3000}) << s;
  expect_reference_ids(*tok, "hf", path, hard_strings(), RoundTrip::nfc);
  expect_reference_ids(*tok, "hf", path, random_strings(3000), RoundTrip::nfc);
  expect_reference_ids(*tok, "hf", path, nfc_strings(3000), RoundTrip::nfc);
  expect_reference_corpus(*tok, "hf", path);  // the KJV is ASCII: NFC already
}

// frugal's NFC is tokenizers' (whose Unicode tables it has, src/data/unicode_nfc.inc) on strings
// where NFC has work, and on every code point alone and between a letter and marks it may join or
// pass; NFC's output is NFC; bytes that are not UTF-8 are kept and block composition.
TEST(Nfc, EqualsTokenizers) {
  std::vector<std::string> strings = nfc_strings(20000);
  const size_t num_random = strings.size();
  for (uint32_t first = 0; first < 0x110000; first += 0x10000) {
    std::string s;
    for (uint32_t cp = first; cp < first + 0x10000; cp++) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      s += '\n';
      append_utf8(s, cp);
      s += " A";
      append_utf8(s, cp);
      s += "\u0334\u0301";
    }
    strings.push_back(s);
  }
  std::vector<std::string> ref = reference_nfc(strings);
  ASSERT_EQ(ref.size(), strings.size());
  size_t changed = 0;
  int wrong = 0;
  for (size_t i = 0; i < strings.size() && wrong < 5; i++) {
    std::string got = nfc(strings[i]);
    changed += i < num_random && ref[i] != strings[i];
    if (got == ref[i]) continue;
    wrong++;
    size_t at = 0;
    while (at < got.size() && at < ref[i].size() && got[at] == ref[i][at]) at++;
    size_t from = at < 40 ? 0 : at - 40;
    ADD_FAILURE() << "string " << i << " differs from tokenizers' NFC at byte " << at << ": frugal '"
                  << got.substr(from, 80) << "', tokenizers '" << ref[i].substr(from, 80) << "', input '"
                  << strings[i].substr(from, 80) << "' (FRUGAL_TEST_SEED=" << test::test_seed() << ")";
  }
  EXPECT_GT(changed, num_random / 2) << "the random strings give NFC too little work";
  for (size_t i = 0; i < num_random; i += 7) EXPECT_EQ(nfc(ref[i]), ref[i]) << "string " << i;
  std::string ascii;
  for (int c = 0; c < 128; c++) ascii += char(c);
  EXPECT_EQ(nfc(ascii), ascii);
  EXPECT_EQ(nfc("e\xff\u0301 \xc3" "e\u0301\xcc"), "e\xff\u0301 \xc3\u00e9\xcc");
}

// The NFC tables (src/data/unicode_nfc.inc) are what the generator reads off tokenizers now.
TEST(Nfc, TablesAreTokenizers) {
  test::TempDir d;
  ASSERT_TRUE(test::run_reference("../../scripts/gen_unicode_nfc.py", "> " + d / "nfc.inc"));
  EXPECT_EQ(read_whole_file(d / "nfc.inc"), read_whole_file(std::string(FRUGAL_SOURCE_DIR) + "/src/data/unicode_nfc.inc"))
      << "tokenizers' NFC changed: regenerate src/data/unicode_nfc.inc (scripts/gen_unicode_nfc.py)";
}

// Any bytes (not UTF-8 too): ids in range and an exact round trip (with NFC: to NFC(s), as no
// added token is in them).
TEST(HfTokenizer, RoundTripsAnyBytes) {
  for (const char* f : {"gpt2/tokenizer.json", "llama3/tokenizer.json", "qwen2/tokenizer.json"}) {
    auto tok = load_hf_tokenizer(fixture(f));
    Rng rng(test::test_seed());
    for (int i = 0; i < 3000; i++) {
      std::string s(size_t(rng.below(64)), '\0');
      for (auto& c : s) c = char(rng.below(256));
      std::vector<uint32_t> ids = encode(*tok, s);
      for (uint32_t id : ids) ASSERT_LT(id, uint32_t(tok->vocab_size()));
      std::string want = std::string(f) == "qwen2/tokenizer.json" ? nfc(s) : s;
      ASSERT_EQ(tok->decode(std::vector<int32_t>(ids.begin(), ids.end())), want) << f << " string " << i;
    }
  }
}

TEST(Tiktoken, Cl100kPatternEqualsTiktoken) {
  std::string path = fixture("cl100k.tiktoken");
  auto tok = make_tiktoken_tokenizer(path, "cl100k");
  EXPECT_EQ(tok->kind(), TokenizerKind::tiktoken);
  EXPECT_EQ(tok->split_pattern(), "cl100k");
  expect_reference_ids(*tok, "tiktoken-cl100k", path, hard_strings(), RoundTrip::exact);
  expect_reference_ids(*tok, "tiktoken-cl100k", path, random_strings(3000), RoundTrip::exact);
  expect_reference_corpus(*tok, "tiktoken-cl100k", path);
  test::expect_user_error([&] { load_pretrained_tokenizer(path); }, "name its pattern with --tiktoken-pattern");
  test::expect_user_error([&] { make_tiktoken_tokenizer(path, "o200k"); }, "pattern 'o200k', expected gpt2, llama3, qwen2 or cl100k");
}

TEST(SentencePiece, Llama2StyleEqualsSentencepiece) {
  std::string path = fixture("sp/tokenizer.model");
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_pretrained_tokenizer(path);
  } catch (const UserError& e) {
    if (std::string(e.what()).find("built without SentencePiece") != std::string::npos) GTEST_SKIP() << e.what();
    throw;
  }
  EXPECT_EQ(tok->kind(), TokenizerKind::sentencepiece);
  EXPECT_EQ(tok->vocab_size(), 2000);
  EXPECT_EQ(tok->eot(), 2u);  // </s>
  EXPECT_EQ(encode(*tok, "In the beginning"), reference_ids("sp", path, {"In the beginning"})[0]);
  expect_reference_ids(*tok, "sp", path, hard_strings(), RoundTrip::none);
  expect_reference_ids(*tok, "sp", path, random_strings(1000), RoundTrip::none);
  expect_reference_corpus(*tok, "sp", path);
}

// A Hugging Face directory of a SentencePiece model (Llama 2's, TinyLlama's, Mistral's) holds it
// twice: tokenizer.model, and its conversion to a tokenizer.json with byte fallback, which
// transformers reads and so does frugal: the same ids as transformers 5's AutoTokenizer on the
// fixtures' three pipelines (LlamaTokenizer with "legacy" false and true: Metaspace "first" and
// "always"; a mistral model's: the file's Prepend normalizer), the special tokens spelled in a
// text included, and its decode; the chat template applies.
TEST(HfTokenizer, ByteFallbackEqualsTransformers) {
  std::vector<std::string> strings = hard_strings();
  for (std::string s : {" In the beginning", "  two", "a </s> b", "</s> x", "<s>b", "x</s>", "hello</s>world",
                        "<|user|>\nHi there</s>\n<|assistant|>\nOK</s>", "[INST] Who? [/INST] Enos </s><s>[INST] x",
                        "\u2581 in text", "tab\there", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 \xe4\xb8\xad", ""})
    strings.push_back(s);
  for (const std::string& s : random_strings(1000)) strings.push_back(s);
  // sp_bos and sp_only_legacy: a tokenizer.model alone, converted as transformers 5 converts it;
  // the tokenizer.json it writes in a shard directory reads the same in frugal and transformers
  for (const char* name : {"sp_hf", "sp_hf_legacy", "sp_hf_file", "sp_bos", "sp_only_legacy"}) {
    SCOPED_TRACE(name);
    auto tok = load_pretrained_tokenizer(fixture(name));
    EXPECT_EQ(tok->kind(), TokenizerKind::hf_bpe);
    EXPECT_EQ(tok->vocab_size(), 2000);
    EXPECT_EQ(tok->eot(), 2u);          // </s>
    EXPECT_EQ(tok->bos_prefix(), 1);    // <s>, the post-processor's (a converted model: add_bos_token)
    expect_reference_ids(*tok, "auto", fixture(name), strings, RoundTrip::none);
    expect_reference_corpus(*tok, "auto", fixture(name));
    EXPECT_EQ(ChatTemplate::of(fixture(name), *tok).plain(), name == std::string("sp_bos"));  // it has no template
    if (!std::filesystem::exists(fixture(name) + "/tokenizer.json")) {
      test::TempDir d;
      save_tokenizer(d.path.string(), *tok);
      auto saved = load_tokenizer(d.path.string());
      EXPECT_EQ(saved->bos_prefix(), 1);
      expect_reference_ids(*saved, "auto", d.path.string(), strings, RoundTrip::none);
    }
  }
  // a vocabulary with a token that holds ▁ after another character ("e▁t", merged last): merged
  // whole, not a word at a time (against tokenizers on the file, whose pipeline it is)
  {
    test::TempDir d;
    json j = json::parse(read_whole_file(fixture("sp_hf_file/tokenizer.json")));
    j["model"]["vocab"]["e\u2581t"] = 2000;
    j["model"]["merges"].push_back(json::array({"e", "\u2581t"}));
    std::ofstream(d / "tokenizer.json") << j.dump();
    auto crossing = load_hf_tokenizer(d / "tokenizer.json");
    std::vector<std::string> with = strings;
    for (int i = 0; i < 50; i++) with.push_back(fmt::format("the tree {} #e t# xe t", i));
    expect_reference_ids(*crossing, "hf", d / "tokenizer.json", with, RoundTrip::none);
    const std::vector<uint32_t> tree = encode(*crossing, "#e t#");  // the piece is used
    EXPECT_NE(std::find(tree.begin(), tree.end(), 2000u), tree.end());
  }
  // decode: the text back, less the one space the prefix made (transformers' decoder strips it);
  // a continuation keeps its first space, as transformers decodes it after its context (and
  // sentencepiece, whose decoder strips the same space)
  auto tok = load_pretrained_tokenizer(fixture("sp_hf"));
  for (std::string s : {"In the beginning", " lead", "a\n\n b", "\xf0\x9f\x98\x80 x"}) {
    std::vector<uint32_t> ids = encode(*tok, s);
    EXPECT_EQ(tok->decode(std::vector<int32_t>(ids.begin(), ids.end())), s[0] == ' ' ? s.substr(1) : s);
  }
  for (auto [kind, path] : {std::pair{"auto", fixture("sp_hf")}, std::pair{"sp", fixture("sp/tokenizer.model")}}) {
    SCOPED_TRACE(kind);
    auto t = load_pretrained_tokenizer(path);
    json pairs = json::array();
    for (std::string s : {"And God said, Let there be light", "In the beginning \xc3\xa9t\xc3\xa9 </s> x"}) {
      std::vector<uint32_t> ids = encode(*t, s);
      for (size_t k = 1; k < ids.size(); k++)
        pairs.push_back({std::vector<int32_t>(ids.begin() + long(k) - 1, ids.begin() + long(k)),
                         std::vector<int32_t>(ids.begin() + long(k), ids.end())});
    }
    test::TempDir d;
    std::ofstream(d / "in.json") << pairs.dump();
    ASSERT_TRUE(test::run_reference("pretrained_tokenizers.py", std::string("continue ") + kind + " " + path + " " + d / "in.json " + d / "out.json"));
    const json want = json::parse(std::ifstream(d / "out.json"));
    size_t compared = 0;
    for (size_t k = 0; k < pairs.size(); k++)
      if (!want[k].is_null()) {
        EXPECT_EQ(decode_continuation(*t, pairs[k][0], pairs[k][1]), want[k].get<std::string>()) << pairs[k].dump();
        compared++;
      }
    EXPECT_GT(compared, pairs.size() * 3 / 4);
  }
}

// A long .txt document with a byte-fallback tokenizer is cut at lines into pieces of about 1 MB,
// each but the first encoded with no prefix: the shards hold the ids transformers gives the whole
// text, after the BOS and before the end of text.
TEST(Prepare, ByteFallbackCutsALongDocumentAtLines) {
  test::TempDir d;
  std::ofstream(d / "small.txt") << "A short one.";
  for (const char* name : {"sp_hf", "sp_hf_legacy", "sp_hf_file"}) {
    SCOPED_TRACE(name);
    auto tok = load_pretrained_tokenizer(fixture(name));
    EXPECT_TRUE(tok->cuts_at_lines());
    CorpusOptions o;
    o.val_docs = 1;
    TokenizerOptions topt;
    topt.pretrained = fixture(name);
    prepare_corpus({fixtures() / "kjv.txt", d / "small.txt"}, d / name, o, topt);
    ASSERT_TRUE(test::run_reference("pretrained_tokenizers.py", "text auto " + fixture(name) + " " + fixtures() / "kjv.txt " + d / "ref.bin"));
    const std::string ref = read_whole_file(d / "ref.bin");
    std::vector<uint32_t> want(ref.size() / 4 + 2);
    want[0] = 1;  // <s>
    std::memcpy(want.data() + 1, ref.data(), ref.size());
    want.back() = tok->eot();
    auto read = [&](const std::string& f) {
      TokenShard s(d / name + "/" + f, 0);
      std::vector<uint32_t> v;
      for (int64_t i = 0; i < s.size(); i++) v.push_back(s[i]);
      return v;
    };
    std::vector<uint32_t> train = read("train_000.bin"), val = read("val_000.bin");
    if (train.size() < val.size()) std::swap(train, val);  // whichever the seed drew
    ASSERT_GT(train.size(), 1'000'000u);
    size_t first = 0;
    while (first < want.size() && first < train.size() && want[first] == train[first]) first++;
    EXPECT_EQ(first, want.size()) << "first difference at token " << first;
    EXPECT_EQ(train.size(), want.size());
  }
}

// Bad byte-fallback files and configs: one line naming the file and the field.
TEST(HfTokenizer, ByteFallbackFilesFrugalCannotReadAreUserErrors) {
  test::TempDir d;
  const json base = json::parse(read_whole_file(fixture("sp_hf_file/tokenizer.json")));
  const std::string f = d / "tokenizer.json";
  auto expect = [&](const std::function<void(json&)>& change, const std::string& error) {
    json j = base;
    change(j);
    std::ofstream(f) << j.dump();
    test::expect_user_error([&] { load_hf_tokenizer(f); }, f + ": " + error);
  };
  expect([](json& j) { j["normalizer"]["normalizers"].erase(0); }, "normalizer is");
  expect([](json& j) {
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "first"}, {"split", true}};
  }, "pre_tokenizer.split is true, expected false");
  expect([](json& j) { j["model"]["vocab"].erase("<0x41>"); }, "model.vocab is \"missing <0x41>\"");
  expect([](json& j) { j["added_tokens"][2]["normalized"] = true; }, "added_tokens[2].normalized is true, expected false");
  std::ofstream(d / "tokenizer_config.json") << R"({"tokenizer_class": "LlamaTokenizer", "legacy": "no"})";
  std::ofstream(f) << base.dump();
  test::expect_user_error([&] { load_hf_tokenizer(f); }, d / "tokenizer_config.json: legacy is \"no\", expected true, false or null");
  // with the class, the file's pipeline is not read: a Metaspace split true loads
  std::ofstream(d / "tokenizer_config.json") << R"({"tokenizer_class": "LlamaTokenizer", "legacy": true})";
  json j = base;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"split", true}};
  std::ofstream(f) << j.dump();
  EXPECT_EQ(load_hf_tokenizer(f)->vocab_size(), 2000);
}

// A tokenizer.model alone: sentencepiece's encoder; tokenizer_config.json's add_bos_token decides
// its BOS (none: false), a bad one is one line.
TEST(SentencePiece, AModelAloneTakesItsBosFromTheConfig) {
  test::TempDir d;
  std::filesystem::copy_file(fixture("sp/tokenizer.model"), d / "tokenizer.model");
  try {
    EXPECT_EQ(load_pretrained_tokenizer(d.path.string())->bos_prefix(), -1);
  } catch (const UserError& e) {
    if (std::string(e.what()).find("built without SentencePiece") != std::string::npos) GTEST_SKIP() << e.what();
    throw;
  }
  EXPECT_EQ(load_pretrained_tokenizer(d.path.string())->kind(), TokenizerKind::sentencepiece);
  for (auto [config, error] : {std::pair{R"({"add_bos_token": "yes"})", "add_bos_token is \"yes\", expected true, false or null"},
                               std::pair{R"({"add_bos_token": true, "bos_token": "<|bos|>"})",
                                         "add_bos_token is true, but bos_token \"<|bos|>\" is not a token of the tokenizer"}}) {
    std::ofstream(d / "tokenizer_config.json") << config;
    test::expect_user_error([&] { load_pretrained_tokenizer(d.path.string()); }, d / "tokenizer_config.json: " + error);
  }
  std::ofstream(d / "tokenizer_config.json") << R"({"add_bos_token": true, "bos_token": {"content": "<s>"}})";
  EXPECT_EQ(load_pretrained_tokenizer(d.path.string())->bos_prefix(), 1);
}

// tokenizer.json files frugal cannot reproduce: one UserError naming the file and the field.
TEST(HfTokenizer, UnsupportedFilesAreUserErrors) {
  test::TempDir d;
  json base = json::parse(read_whole_file(fixture("llama3/tokenizer.json")));
  std::string f = d / "tokenizer.json";
  auto expect = [&](const std::function<void(json&)>& change, const std::string& error) {
    json j = base;
    change(j);
    std::ofstream(f) << j.dump();
    test::expect_user_error([&] { load_hf_tokenizer(f); }, f + ": " + error);
  };
  expect([](json& j) { j["model"] = {{"type", "WordPiece"}, {"vocab", json::object()}}; },
         "model.type is \"WordPiece\", expected \"BPE\"");
  expect([](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "normalizer is \"NFKC\", expected null or \"NFC\"");
  expect([](json& j) { j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}}; },
         "normalizer.normalizers[1] is \"Lowercase\", expected \"NFC\"");
  {  // a Sequence of NFC alone is NFC
    json j = base;
    j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
    std::ofstream(f) << j.dump();
    auto tok = load_hf_tokenizer(f);
    EXPECT_EQ(encode(*tok, "cafe\u0301"), encode(*tok, "caf\u00e9"));
  }
  // byte fallback with a byte-level pipeline (a converted SentencePiece model has Metaspace)
  expect([](json& j) { j["model"]["byte_fallback"] = true; }, R"(pre_tokenizer is {"pretokenizers":[{"behavior":"Isolated")");
  expect([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"; },
         "pre_tokenizer.pretokenizers[0].pattern.Regex is {\"Regex\":\"\\\\w+\"}, expected GPT-2's, Llama 3's or Qwen2's regex");
  expect([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer is \"Whitespace\", expected ByteLevel");
  expect([](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
         "pre_tokenizer.pretokenizers[1].add_prefix_space is true, expected false");
  expect([](json& j) { j["model"]["merges"][5] = json::array({"zz", "qq"}); }, "model.merges[5] is [\"zz\",\"qq\"], expected two tokens");
  expect([](json& j) { j["model"]["merges"][5] = "nospace"; }, "model.merges[5] is \"nospace\", expected \"A B\"");
  expect([](json& j) { j["added_tokens"][0]["lstrip"] = true; }, "added_tokens[0].lstrip is true, expected false");
  // a BOS that is not one token in the template
  expect([](json& j) {
    j["post_processor"] = {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                           {"special_tokens", json::object()}};
  }, "post_processor.single starts with special token \"<s>\", expected it in post_processor.special_tokens with one id "
     "below 4138, got null");
  expect([](json& j) {
    j["post_processor"] = {{"type", "Sequence"}, {"processors", {{{"type", "ByteLevel"}}, {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
                           {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {99999}}}}}}}}}};
  }, "post_processor.processors[1].single starts with special token \"<s>\", expected it in "
     "post_processor.processors[1].special_tokens with one id below 4138, got [99999]");
  // beside a tokenizer.json, tokenizer_config.json's add_bos_token adds nothing (as in transformers 5)
  std::ofstream(f) << base.dump();
  std::ofstream(d / "tokenizer_config.json") << R"({"add_bos_token": true, "bos_token": "<|begin_of_text|>"})";
  EXPECT_EQ(load_hf_tokenizer(f)->bos_prefix(), -1);
  std::filesystem::remove(d / "tokenizer_config.json");
  std::ofstream(f) << "{not json";
  test::expect_user_error([&] { load_hf_tokenizer(f); }, f + ": not JSON");
  std::ofstream(d / "tokenizer_config.json") << R"({"eos_token": "<|nope|>"})";
  std::ofstream(f) << base.dump();
  test::expect_user_error([&] { load_hf_tokenizer(f); }, "eos_token \"<|nope|>\" is not a token of " + f);
}

// prepare --tokenizer DIR: the shards are the tokenizer's ids, the Hugging Face files are copied
// next to them and frugal's description is frugal_tokenizer.json; an old directory whose
// tokenizer.json is frugal's description still loads.
TEST(Prepare, PretrainedTokenizerShards) {
  test::TempDir d;
  std::string doc = "In the beginning God created the heaven and the earth.<|eot_id|>\n";
  std::string text;
  for (int i = 0; i < 3000; i++) text += doc;
  std::ofstream(d / "doc.txt") << text;
  TokenizerOptions opt;
  opt.pretrained = fixture("llama3");
  prepare_corpus({d / "doc.txt", d / "doc.txt"}, d / "out", 4, opt);
  auto ref = load_hf_tokenizer(fixture("llama3/tokenizer.json"));
  std::vector<uint32_t> one = encode(*ref, text);
  TokenShard train(d / "out/train_000.bin", 4138);
  for (size_t i = 0; i < 50; i++) EXPECT_EQ(train[int64_t(i)], one[i]);
  EXPECT_EQ(read_whole_file(d / "out/tokenizer.json"), read_whole_file(fixture("llama3/tokenizer.json")));
  EXPECT_TRUE(std::filesystem::exists(d / "out/tokenizer_config.json"));
  auto info = tokenizer_info(d / "out");
  EXPECT_EQ(info.kind, "hf_bpe");
  EXPECT_EQ(info.vocab_size, 4138);
  auto tok = load_tokenizer(d / "out");
  EXPECT_EQ(tok->kind(), TokenizerKind::hf_bpe);
  EXPECT_EQ(tok->eot(), 4132u);
  EXPECT_EQ(encode(*tok, doc), encode(*ref, doc));
  // a tiktoken file with its pattern: the pattern is in the description
  opt.pretrained = fixture("cl100k.tiktoken");
  opt.tiktoken_pattern = "cl100k";
  prepare_corpus({d / "doc.txt"}, d / "tk", 4, opt);
  EXPECT_EQ(tokenizer_info(d / "tk").pattern, "cl100k");
  EXPECT_EQ(load_tokenizer(d / "tk")->split_pattern(), "cl100k");
  // an older shard directory: tokenizer.json is frugal's description
  std::filesystem::create_directories(d / "old");
  std::ofstream(d / "old/tokenizer.json") << R"({"kind": "byte", "vocab_size": 257})";
  EXPECT_EQ(load_tokenizer(d / "old")->kind(), TokenizerKind::byte);
  // a Hugging Face tokenizer.json alone
  std::filesystem::create_directories(d / "hf");
  std::filesystem::copy_file(fixture("gpt2/tokenizer.json"), d / "hf/tokenizer.json");
  EXPECT_EQ(load_tokenizer(d / "hf")->kind(), TokenizerKind::hf_bpe);
  test::expect_user_error([&] { load_pretrained_tokenizer(d / "nothing"); }, "no such file or directory");
  std::filesystem::create_directories(d / "empty");
  test::expect_user_error([&] { load_pretrained_tokenizer(d / "empty"); }, "no tokenizer.json, tokenizer.model or *.tiktoken");
}

// prepare on text with a tokenizer that puts a BOS before a text (Llama 3's post_processor,
// Llama 2's add_bos_token): each document is the BOS transformers' tokenizer puts there, the
// text's ids (tokenizers', sentencepiece's), then end of text, as TRL ends it. Without one
// (Qwen2's, GPT-2's, a tokenizer.json with no template) end of text stands between documents, as
// before. The shard directory keeps the BOS (a SentencePiece model's too, whose
// tokenizer_config.json is not copied there), sample's prompt starts with it as transformers
// encodes the prompt, and data.document_mask cuts after each end of text.
TEST(Prepare, DocumentsStartWithTheBosTransformersPuts) {
  test::TempDir d;
  Rng rng(test::test_seed() + 2);
  const std::vector<std::string> words = {"In", " the", " beginning", "\n", " God", "  ", " Ångström", "1234", "!",
                                          "\t", " and", "Enos", " ", "<|begin_of_text|>", "</s>", " <s>"};
  std::vector<std::string> docs;
  std::ofstream jsonl(d / "docs.jsonl");
  for (int i = 0; i < 40; i++) {
    std::string text;
    for (int k = 0, n = 1 + int(rng.below(30)); k < n; k++) text += words[rng.below(words.size())];
    docs.push_back(text);
    jsonl << json({{"text", text}}).dump() << "\n";
  }
  jsonl.close();
  std::ofstream(d / "docs.json") << json(docs).dump();
  struct Case { std::string name; bool bos; };
  for (const Case& c : {Case{"llama3_bos", true}, Case{"sp_bos", true}, Case{"sp_hf", true}, Case{"sp_hf_file", true},
                        Case{"llama3", false}, Case{"qwen2", false}, Case{"gpt2", false}}) {
    SCOPED_TRACE(c.name);
    ASSERT_TRUE(test::run_reference("pretrained_tokenizers.py", "documents " + fixture(c.name) + " " + d / "docs.json " + d / "ref.json"));
    const json ref = json::parse(std::ifstream(d / "ref.json"));
    auto tok = load_pretrained_tokenizer(fixture(c.name));
    const int64_t bos = c.bos ? int64_t(ref["ids"][0][0]) : -1;
    EXPECT_EQ(tok->bos_prefix(), bos);
    if (c.bos) { EXPECT_EQ(uint32_t(ref["eos"]), tok->eot()); }
    // each document as it should be in a shard: BOS, text, end of text; or the text alone, end of
    // text between documents
    std::vector<std::vector<uint32_t>> want;
    for (auto& ids : ref["ids"]) {
      want.push_back(ids.get<std::vector<uint32_t>>());
      if (c.bos) {
        EXPECT_EQ(want.back().at(0), bos);
        want.back().push_back(tok->eot());
      }
    }
    auto stream = [&](int64_t skip) {  // every document but one, in order
      std::vector<uint32_t> s;
      for (size_t k = 0; k < want.size(); k++) {
        if (int64_t(k) == skip) continue;
        if (!c.bos && !s.empty()) s.push_back(tok->eot());
        s.insert(s.end(), want[k].begin(), want[k].end());
      }
      return s;
    };
    CorpusOptions o;
    o.val_docs = 1;
    TokenizerOptions topt;
    topt.pretrained = fixture(c.name);
    const std::string out = d / c.name;
    prepare_corpus({d / "docs.jsonl"}, out, o, topt);
    auto read = [&](const std::string& f) {
      TokenShard s(out + "/" + f, 0);
      std::vector<uint32_t> v;
      for (int64_t i = 0; i < s.size(); i++) v.push_back(s[i]);
      return v;
    };
    const std::vector<uint32_t> train = read("train_000.bin"), val = read("val_000.bin");
    int64_t v = 0;
    while (v < int64_t(want.size()) && want[size_t(v)] != val) v++;
    ASSERT_LT(v, int64_t(want.size())) << "the validation shard is no document's ids";
    EXPECT_EQ(train, stream(v));
    // what the shard directory says: the same BOS, the cut, sample's prompt
    auto shard_tok = load_tokenizer(out);
    EXPECT_EQ(shard_tok->bos_prefix(), bos);
    const DocumentCut cut = document_cut(out + "/train_000.bin", false);
    EXPECT_EQ(cut.sep, int32_t(tok->eot()));
    EXPECT_EQ(cut.after, c.bos);
    for (size_t k = 0; k < docs.size(); k++)  // the shard directory's tokenizer is the model directory's
      EXPECT_EQ(ChatTemplate().prompt_ids(*shard_tok, docs[k], "", false), ref["ids"][k].get<std::vector<uint32_t>>()) << k;
    // a mistral model's config.json decides how transformers reads its tokenizer.json: kept there
    EXPECT_EQ(tokenizer_info(out).model_type, c.name == "sp_hf_file" ? "mistral" : "");
  }
  // a description whose BOS is no token of its tokenizer
  const std::string desc = d / "gpt2/frugal_tokenizer.json";
  json j = json::parse(read_whole_file(desc));
  j["bos_prefix"] = int64_t(j["vocab_size"]);
  std::ofstream(desc) << j.dump();
  test::expect_user_error([&] { load_tokenizer(d / "gpt2"); },
                          fmt::format("{}: bos_prefix {}, expected -1 (none) or a token id below {}", desc, j["vocab_size"].dump(), j["vocab_size"].dump()));
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// The reference's rendering (tests/reference/pretrained_tokenizers.py): ids and mask of every
// record, in the tokenizer's chat template (transformers and TRL) or the plain one.
std::pair<std::vector<uint32_t>, std::vector<uint8_t>> rendered(const std::string& tok_dir, bool chat, const std::string& jsonl) {
  test::TempDir d;
  std::string args = (chat ? "chat " : "render ") + tok_dir;
  EXPECT_TRUE(test::run_reference("pretrained_tokenizers.py", args + " " + jsonl + " " + d / "out.json"));
  std::ifstream in(d / "out.json");
  std::vector<uint32_t> ids;
  std::vector<uint8_t> mask;
  for (auto& r : json::parse(in)) {
    for (auto& x : r["ids"]) ids.push_back(x);
    for (auto& x : r["mask"]) mask.push_back(x);
  }
  return {ids, mask};
}

// prepare --format jsonl, split by chunks of 8192 tokens (every val_every-th to validation)
PrepareStats prepare_records(const std::vector<std::string>& in, const std::string& out, int val_every,
                             const TokenizerOptions& tok) {
  CorpusOptions o;
  o.instruct = true;
  o.val_every = val_every;
  return prepare_corpus(in, out, o, tok);
}

// Instruction records: shards are the reference's ids of the rendered records, the masks its
// trained positions, the loader's targets -1 exactly at untrained targets; bad records are one
// error naming file:line and the field, and nothing is written.
TEST(Instruct, ShardsMasksAndLoaderTargets) {
  test::TempDir d;
  {
    std::ofstream pc(d / "pc.jsonl");
    std::ofstream msg(d / "msg.jsonl");
    std::ofstream tools(d / "tools.jsonl");
    for (int i = 0; i < 1500; i++) {
      pc << json({{"prompt", fmt::format("What begat {}?\n", i)}, {"completion", fmt::format(" And Seth lived {} years.", i * 7)}}).dump() << "\n";
      msg << json({{"messages", {{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", fmt::format("Verse {}?", i)}},
                                 {{"role", "assistant"}, {"content", "In the beginning God created the heaven."}},
                                 {{"role", "user"}, {"content", "More"}},
                                 {{"role", "assistant"}, {"content", fmt::format("And the earth {}.", i)}}}}}).dump() << "\n";
      // function calling: the record's tools, the assistant's tool call (arguments in their
      // order: "days" before "city"), the tool's answer
      tools << nlohmann::ordered_json::parse(fmt::format(R"({{"tools": [{{"type": "function", "function": {{"name": "get_weather",
          "description": "Weather", "parameters": {{"type": "object", "properties": {{"days": {{"type": "integer"}},
          "city": {{"type": "string"}}}}}}}}}}], "messages": [{{"role": "system", "content": "Use tools."}},
          {{"role": "user", "content": "Weather in Ur {}?"}}, {{"role": "assistant", "content": "", "tool_calls": [{{"type":
          "function", "function": {{"name": "get_weather", "arguments": {{"days": {}, "city": "Ur"}}}}}}]}},
          {{"role": "tool", "content": "{{\"temp\": {}}}"}}, {{"role": "assistant", "content": "It is {} degrees."}}]}})",
          i, i % 7, i, i)).dump() << "\n";
    }
  }
  struct Case { std::string tok_dir, tmpl; };
  // llama3's fixture has Llama 3.1's chat template, qwen2's Qwen2.5's; the gpt2 one has none: plain
  // sp_bos is Llama 2's kind: a SentencePiece model alone (plain) whose tokenizer puts <s> first;
  // sp_hf is TinyLlama-Chat's directory (its template), sp_hf_legacy Llama-2-chat's, sp_hf_file Mistral's
  for (const Case& c : {Case{fixture("llama3"), "llama3"}, Case{fixture("qwen2"), "qwen2"}, Case{fixture("gpt2"), "plain"},
                        Case{fixture("sp_bos"), "plain"}, Case{fixture("sp_hf"), "zephyr"},
                        Case{fixture("sp_hf_legacy"), "llama2"}, Case{fixture("sp_hf_file"), "mistral"}}) {
    for (const char* file : {"pc.jsonl", "msg.jsonl", "tools.jsonl"}) {
      SCOPED_TRACE(c.tok_dir + " " + file);
      if (c.tmpl == "plain" && file == std::string("tools.jsonl")) continue;  // tools need a template: refused below
      // Llama 2's and Mistral's templates refuse a tool's turn, Mistral's a system message
      if ((c.tmpl == "llama2" && file == std::string("tools.jsonl")) || (c.tmpl == "mistral" && file != std::string("pc.jsonl")))
        continue;
      TokenizerOptions opt;
      opt.pretrained = c.tok_dir;
      std::string out = d / (std::filesystem::path(c.tok_dir).filename().string() + file);
      prepare_records({d / file}, out, 4, opt);
      auto [ids, mask] = rendered(c.tok_dir, c.tmpl != "plain", d / file);
      std::vector<uint32_t> got;
      std::vector<uint8_t> got_mask;
      // the stream is cut into chunks of 8192, every 4th to val: put it back together
      TokenShard train(out + "/train_000.bin", 0), val(out + "/val_000.bin", 0);
      auto tm = read_mask(out + "/train_000.mask", train.size()), vm = read_mask(out + "/val_000.mask", val.size());
      for (int64_t i = 0, t = 0, v = 0, k = 0; i < int64_t(ids.size()); i += 8192, k++) {
        bool to_val = k % 4 == 3;
        for (int64_t j = i; j < std::min<int64_t>(int64_t(ids.size()), i + 8192); j++) {
          got.push_back(to_val ? val[v] : train[t]);
          got_mask.push_back(to_val ? vm[size_t(v)] : tm[size_t(t)]);
          (to_val ? v : t)++;
        }
      }
      EXPECT_EQ(got, ids);
      EXPECT_EQ(got_mask, mask);
      EXPECT_GT(std::count(mask.begin(), mask.end(), 0), 1000);
      EXPECT_GT(std::count(mask.begin(), mask.end(), 1), 1000);
      // the loader: targets are the next tokens, -1 where the mask says not trained on
      const int B = 2, T = 64;
      DataLoader loader({out + "/train_000.bin"}, 0, B, T, 1, false);
      std::vector<int32_t> in(B * T), tg(B * T);
      int masked = 0;
      for (int batch = 0; batch < 10; batch++) {
        loader.next(in.data(), tg.data());
        for (int b = 0; b < B; b++)
          for (int t = 0; t < T; t++) {
            int64_t pos = (int64_t(batch) * B + b) * T + t;  // file order: window w starts at w*T
            EXPECT_EQ(in[size_t(b * T + t)], int32_t(train[pos]));
            int32_t want = tm[size_t(pos + 1)] ? int32_t(train[pos + 1]) : -1;
            EXPECT_EQ(tg[size_t(b * T + t)], want) << "batch " << batch << " row " << b << " t " << t;
            masked += want < 0;
          }
      }
      EXPECT_GT(masked, 0);
    }
  }
  // bad records: one error each, naming file:line and the field; nothing written
  auto bad = [&](const std::string& line, const std::string& error) {
    std::ofstream(d / "bad.jsonl") << json({{"prompt", "a"}, {"completion", "b"}}).dump() << "\n" << line << "\n";
    TokenizerOptions opt;
    opt.pretrained = fixture("llama3");
    test::expect_user_error([&] { prepare_records({d / "bad.jsonl"}, d / "badout", 4, opt); }, d / "bad.jsonl" + ":2: " + error);
    EXPECT_FALSE(std::filesystem::exists(d / "badout/train_000.bin"));
  };
  bad("[1, 2]", "expected a JSON object");
  bad("{\"prompt\": \"x\"", "not JSON");
  bad(R"({"prompt": "x"})", "no \"completion\"");
  bad(R"({"prompt": "x", "completion": 3})", "\"completion\" is 3, expected a string");
  bad(R"({"messages": [{"role": "user", "content": "hi"}]})", "messages: no message with role \"assistant\"");
  bad(R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}]})",
      "messages[1].content is 7, expected a string, null or a list of parts");
  bad(R"({"messages": [{"role": "assistant", "content": "x"}], "tools": {}})", "\"tools\" is {}, expected a list");
  // what the plain template cannot render
  auto bad_plain = [&](const std::string& line, const std::string& error) {
    std::ofstream(d / "bad.jsonl") << json({{"prompt", "a"}, {"completion", "b"}}).dump() << "\n" << line << "\n";
    TokenizerOptions opt;
    opt.pretrained = fixture("gpt2");
    test::expect_user_error([&] { prepare_records({d / "bad.jsonl"}, d / "badout", 4, opt); }, d / "bad.jsonl" + ":2: " + error);
  };
  bad_plain(R"({"messages": [{"role": "bot", "content": "hi"}]})",
            "messages[0].role is \"bot\", expected system, user or assistant (other roles need the tokenizer's chat template)");
  bad_plain(R"({"messages": [{"role": "assistant"}]})", "no \"content\" (messages[0])");
  bad_plain(R"({"messages": [{"role": "assistant", "content": "x"}], "tools": []})", "\"tools\" needs the tokenizer's chat template");
  // badout held the llama3 fixture's tokenizer_config.json (eos <|end_of_text|>, its template); the
  // gpt2 fixture has none, and prepare left the old one there, which then named a missing eos
  EXPECT_FALSE(std::filesystem::exists(d / "badout/tokenizer_config.json"));
  // the template's own refusal: Llama 3.1's reads messages[0] of the conversation before the reply
  bad(R"({"messages": [{"role": "assistant", "content": "hi"}]})",
      fixture("llama3") + "/tokenizer_config.json's chat_template, line 16: an undefined value has no item role");
  // too few tokens for every 4th chunk of 8192 to reach validation: the same line as a text prepare's
  std::ofstream(d / "short.jsonl") << json({{"prompt", "a"}, {"completion", "b"}}).dump() << "\n";
  TokenizerOptions plain;
  test::expect_user_error([&] { prepare_records({d / "short.jsonl"}, d / "shortout", 4, plain); },
                          "too few for a validation split by --val-every 4 (the first validation chunk of 8192 tokens starts at "
                          "token 24576): a split by chunks needs more than 8192 tokens");
  // a mask that does not fit its shard
  std::string out = d / "llama3pc.jsonl";
  write_mask(out + "/train_000.mask", {1, 0, 1});
  test::expect_user_error([&] { DataLoader({out + "/train_000.bin"}, 0, 1, 8, 1, false); }, "train_000.mask: 3 mask bytes");
}

// Instruction records split as documents: each record whole in one split (--val-docs exactly,
// --val-fraction about its share, by --seed), read from a directory or a glob of plain and .gz
// files, in shards of --shard-tokens each with its mask, the same bits on 1 and 2 threads, reused
// by a rerun; --skip-bad-lines counts a bad record; what is not instruction records is refused.
TEST(Instruct, SplitByRecordsFromFilesDirectoriesAndGlobs) {
  test::TempDir d;
  std::filesystem::create_directories(d / "in");
  std::string all;
  for (int f = 0; f < 2; f++) {
    std::string text;
    for (int n = f * 400; n < (f + 1) * 400; n++) {
      json r = n % 2 ? json{{"prompt", fmt::format("Verse {}?", n)}, {"completion", fmt::format(" Seth lived {} years.", n * 7)}}
                     : json{{"messages", {{{"role", "user"}, {"content", fmt::format("Who begat {}?", n)}},
                                          {{"role", "assistant"}, {"content", fmt::format("Enos, {} times.", n)}}}}};
      text += r.dump() + "\n";
    }
    all += text;
    std::ofstream(d / fmt::format("in/{}.jsonl", f)) << text;
  }
  std::ofstream(d / "all.jsonl") << all;
  ASSERT_EQ(std::system(("gzip " + d / "in/1.jsonl").c_str()), 0);  // in/1.jsonl.gz
  TokenizerOptions tok;
  tok.pretrained = fixture("llama3");
  // the reference's records, each ending in end of text
  auto [ids, mask] = rendered(tok.pretrained, true, d / "all.jsonl");
  const uint32_t eot = load_pretrained_tokenizer(tok.pretrained)->eot();
  std::vector<size_t> ends;
  for (size_t i = 0; i < ids.size(); i++)
    if (ids[i] == eot) ends.push_back(i + 1);
  ASSERT_EQ(ends.size(), 800u);
  // a split's shards and masks in order
  auto split = [](const std::string& dir, const char* name) {
    std::pair<std::vector<uint32_t>, std::vector<uint8_t>> s;
    for (int k = 0;; k++) {
      std::string f = dir + fmt::format("/{}_{:03d}.bin", name, k);
      if (!std::filesystem::exists(f)) break;
      TokenShard shard(f, 0);
      for (int64_t i = 0; i < shard.size(); i++) s.first.push_back(shard[i]);
      auto m = read_mask(mask_path(f), shard.size());
      s.second.insert(s.second.end(), m.begin(), m.end());
    }
    return s;
  };
  // every record whole in train or in val, in order; returns the val records
  auto val_records = [&](const std::string& dir) {
    auto [train, train_mask] = split(dir, "train");
    auto [val, val_mask] = split(dir, "val");
    size_t t = 0, v = 0, begin = 0;
    int in_val = 0;
    for (size_t end : ends) {
      auto is_at = [&](const std::vector<uint32_t>& s, const std::vector<uint8_t>& m, size_t at) {
        return at + end - begin <= s.size() && std::equal(ids.begin() + long(begin), ids.begin() + long(end), s.begin() + long(at)) &&
               std::equal(mask.begin() + long(begin), mask.begin() + long(end), m.begin() + long(at));
      };
      if (is_at(train, train_mask, t)) {
        t += end - begin;
      } else {
        EXPECT_TRUE(is_at(val, val_mask, v)) << dir << ": record " << &end - ends.data() << " is in neither split";
        v += end - begin;
        in_val++;
      }
      begin = end;
    }
    EXPECT_EQ(t, train.size());
    EXPECT_EQ(v, val.size());
    return in_val;
  };
  CorpusOptions o;
  o.instruct = true;
  o.val_docs = 40;
  o.shard_tokens = 5000;
  o.threads = 1;
  PrepareStats one = prepare_corpus({d / "in"}, d / "one", o, tok);
  EXPECT_EQ(val_records(d / "one"), 40);
  EXPECT_EQ(one.val_docs, 40);
  EXPECT_EQ(one.train_docs, 760);
  EXPECT_EQ(one.chat_template, fixture("llama3") + "/tokenizer_config.json's chat_template");
  EXPECT_GT(one.files.size(), 4u);
  o.threads = 2;
  PrepareStats two = prepare_corpus({d / "in"}, d / "two", o, tok);
  ASSERT_EQ(two.files.size(), one.files.size());
  for (auto& f : one.files) {
    std::string name = std::filesystem::path(f).filename();
    EXPECT_EQ(read_whole_file(d / "two/" + name), read_whole_file(f)) << name;
    EXPECT_EQ(read_whole_file(mask_path(d / "two/" + name)), read_whole_file(mask_path(f))) << name;
  }
  PrepareStats again = prepare_corpus({d / "in"}, d / "one", o, tok);  // a rerun verifies and keeps them
  EXPECT_EQ(again.reused_shards, int64_t(one.files.size()));
  EXPECT_EQ(val_records(d / "one"), 40);
  o.val_docs = 0;
  o.val_fraction = 0.1;
  o.seed = 7;
  prepare_corpus({d / "in/*.jsonl*"}, d / "frac", o, tok);
  int frac = val_records(d / "frac");
  EXPECT_GT(frac, 50);
  EXPECT_LT(frac, 110);
  // a bad record: one line naming file:line, or counted and skipped
  std::ofstream(d / "bad.jsonl") << all.substr(0, all.find('\n') + 1) << "{\"prompt\": 1}\n" << all;
  o.val_fraction = 0;
  o.val_docs = 20;
  test::expect_user_error([&] { prepare_corpus({d / "bad.jsonl"}, d / "bad", o, tok); },
                          d / "bad.jsonl" + ":2: \"prompt\" is 1, expected a string (--skip-bad-lines");
  o.skip_bad_lines = true;
  PrepareStats skipped = prepare_corpus({d / "bad.jsonl"}, d / "bad", o, tok);
  EXPECT_EQ(skipped.skipped_lines, 1);
  EXPECT_EQ(skipped.train_docs + skipped.val_docs, 801);
  // not instruction records
  std::ofstream(d / "doc.txt") << "In the beginning";
  test::expect_user_error([&] { prepare_corpus({d / "doc.txt"}, d / "x", o, tok); },
                          "doc.txt: --format jsonl reads .jsonl files");
  test::expect_user_error([&] { prepare_corpus({}, d / "x", o, tok); }, "expected one or more .jsonl files");
  TokenizerOptions sp;
  sp.kind = TokenizerKind::sentencepiece;
  sp.vocab_size = 300;
  test::expect_user_error([&] { prepare_corpus({d / "all.jsonl"}, d / "x", o, sp); }, "--train-tokenizer trains on text");
}

// sample --chat's prompt (prompt_ids; a plain one after the tokenizer's BOS) is what the
// reference renders of a messages record up to the assistant's content, and the end of the
// assistant's turn is one token, the one the record trains after its (empty) content.
TEST(Instruct, ChatPromptIsTheRecordUpToTheAssistantsTurn) {
  test::TempDir d;
  for (const char* name : {"llama3", "qwen2", "gpt2", "sp_bos", "llama3_bos", "sp_hf"})
   for (std::string system : {"", "Be brief."}) {
    SCOPED_TRACE(std::string(name) + " system '" + system + "'");
    json msgs = {{{"role", "user"}, {"content", "Who begat Enos?"}}, {{"role", "assistant"}, {"content", ""}}};
    if (!system.empty()) msgs.insert(msgs.begin(), json::object({{"role", "system"}, {"content", system}}));
    std::ofstream(d / "one.jsonl") << json({{"messages", msgs}}).dump() << "\n";
    auto tok = load_pretrained_tokenizer(fixture(name));
    const ChatTemplate tmpl = ChatTemplate::of(fixture(name), *tok);
    ASSERT_EQ(tmpl.plain(), name == std::string("gpt2") || name == std::string("sp_bos"));
    std::vector<uint32_t> prompt = tmpl.prompt_ids(*tok, "Who begat Enos?", system, true), end;
    tok->encode(tmpl.end_of_turn(), end);
    auto [ids, mask] = rendered(fixture(name), !tmpl.plain(), d / "one.jsonl");
    // the record: the prompt, (no content), the end of the turn, what follows it, EOT
    ASSERT_GT(ids.size(), prompt.size());
    EXPECT_EQ(std::vector<uint32_t>(ids.begin(), ids.begin() + long(prompt.size())), prompt);
    EXPECT_EQ(ids.back(), tok->eot());
    if (tmpl.plain()) {
      EXPECT_TRUE(end.empty());
    } else {
      ASSERT_EQ(end.size(), 1u) << tmpl.end_of_turn();
      EXPECT_EQ(ids[prompt.size()], end[0]);
      EXPECT_EQ(mask[prompt.size()], 1);
    }
   }
  EXPECT_EQ(ChatTemplate::of(fixture("llama3"), *load_pretrained_tokenizer(fixture("llama3"))).end_of_turn(), "<|eot_id|>");
  EXPECT_EQ(ChatTemplate::of(fixture("qwen2"), *load_pretrained_tokenizer(fixture("qwen2"))).end_of_turn(), "<|im_end|>");
  // the bos export names: tokenizer_config.json's bos_token (Qwen2.5's is null)
  auto llama3 = load_pretrained_tokenizer(fixture("llama3"));
  std::vector<uint32_t> bos;
  llama3->encode("<|begin_of_text|>", bos);
  ASSERT_EQ(bos.size(), 1u);
  EXPECT_EQ(llama3->bos(), int64_t(bos[0]));
  EXPECT_EQ(load_pretrained_tokenizer(fixture("qwen2"))->bos(), -1);
}

// Where transformers finds a template: chat_template.jinja first, else tokenizer_config.json's
// chat_template, a string or a list of named ones ("default" applies). What frugal cannot use is
// one line naming the file: a list without "default", a template that does not parse.
TEST(Instruct, ChatTemplateFromTheJinjaFileOrTheConfigsDefault) {
  test::TempDir d;
  std::filesystem::copy_file(fixture("qwen2") + "/tokenizer.json", d / "tokenizer.json");
  auto tok = load_pretrained_tokenizer(d.path.string());
  const std::string chatml = "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
                             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  auto prompt = [&] {
    std::string text;
    for (const RecordPiece& p : ChatTemplate::of(d.path.string(), *tok).chat_prompt("hi")) text += p.text;
    return text;
  };
  EXPECT_TRUE(ChatTemplate::of(d.path.string(), *tok).plain());  // no tokenizer_config.json
  std::ofstream(d / "tokenizer_config.json") << R"({"chat_template": null})";
  EXPECT_TRUE(ChatTemplate::of(d.path.string(), *tok).plain());
  std::ofstream(d / "tokenizer_config.json") << json({{"chat_template", {{{"name", "tool_use"}, {"template", "x"}},
                                                                          {{"name", "default"}, {"template", "A" + chatml}}}}}).dump();
  EXPECT_EQ(prompt(), "A<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(ChatTemplate::of(d.path.string(), *tok).note(), d / "tokenizer_config.json's chat_template");
  std::ofstream(d / "chat_template.jinja") << "B" + chatml;
  EXPECT_EQ(prompt(), "B<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(ChatTemplate::of(d.path.string(), *tok).note(), d / "chat_template.jinja");
  std::ofstream(d / "chat_template.jinja") << "\n{% for m in messages %}";
  test::expect_user_error([&] { ChatTemplate::of(d.path.string(), *tok); }, d / "chat_template.jinja, line 2: {% for %} is not closed");
  std::filesystem::remove(d / "chat_template.jinja");
  std::ofstream(d / "tokenizer_config.json") << json({{"chat_template", {{{"name", "tool_use"}, {"template", "x"}}}}}).dump();
  test::expect_user_error([&] { ChatTemplate::of(d.path.string(), *tok); }, "tokenizer_config.json's chat_template: expected a template named \"default\"");
}

// A tokenizer_config.json field of a type transformers refuses is one line naming the file and
// the field, from the tokenizer's reader and the chat template's: not an abort (a list entry's
// "name" a number), nor a silent wrong result (bos_token 5 left the template's {{ bos_token }}
// empty; eos_token 5 fell back to a conventional end-of-text token).
TEST(HfTokenizer, TokenizerConfigFieldsOfAnotherTypeAreNamed) {
  test::TempDir d;
  std::filesystem::copy_file(fixture("qwen2") + "/tokenizer.json", d / "tokenizer.json");
  const std::string file = d / "tokenizer_config.json";
  for (auto [config, error] :
       {std::pair{R"({"bos_token": 5})", "bos_token is 5, expected a string, an AddedToken's {\"content\": string} or null"},
        std::pair{R"({"eos_token": {"content": ["<|im_end|>"]}})", "eos_token is {\"content\":[\"<|im_end|>\"]}, expected"},
        std::pair{R"({"pad_token": false})", "pad_token is false, expected"},
        std::pair{R"({"add_eos_token": 1})", "add_eos_token is 1, expected true, false or null"},
        std::pair{R"({"tokenizer_class": ["Qwen2Tokenizer"]})", "tokenizer_class is [\"Qwen2Tokenizer\"], expected a string or null"},
        std::pair{R"({"chat_template": 5})", "chat_template is 5, expected a string (a template), a list of"},
        std::pair{R"({"chat_template": [{"name": 5, "template": "x"}]})", "chat_template[0] is {\"name\":5,\"template\":\"x\"}, expected {\"name\": string, \"template\": string}"},
        std::pair{R"([])", "expected a JSON object, got array"}, std::pair{R"({"bos_token": )", "not JSON"}}) {
    std::ofstream(file) << config;
    test::expect_user_error([&] { load_pretrained_tokenizer(d.path.string()); }, file + ": " + error);
    std::filesystem::remove(file);
    auto tok = load_pretrained_tokenizer(d.path.string());
    std::ofstream(file) << config;
    test::expect_user_error([&] { ChatTemplate::of(d.path.string(), *tok); }, file + ": " + error);
  }
  std::ofstream(file) << R"({"bos_token": null, "eos_token": {"content": "<|im_end|>", "lstrip": false}, "add_bos_token": null,
                            "chat_template": [{"name": "default", "template": "x"}]})";
  auto tok = load_pretrained_tokenizer(d.path.string());
  EXPECT_EQ(tok->decode({int32_t(tok->eot())}), "<|im_end|>");  // the AddedToken's content
  EXPECT_EQ(ChatTemplate::of(d.path.string(), *tok).note(), file + "'s chat_template");
}

}  // namespace
}  // namespace frugal
