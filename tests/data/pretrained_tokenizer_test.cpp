// Pretrained tokenizers against the Python packages they come from: Hugging Face tokenizer.json
// byte-level BPE (GPT-2's ByteLevel regex, Llama 3's Split regex with its special tokens) against
// tokenizers, a SentencePiece model with Llama 2's settings against sentencepiece, a tiktoken rank
// file with cl100k's pattern against tiktoken. The vocabularies are trained on the KJV by
// tests/reference/pretrained_tokenizers.py; compared on the whole KJV, hard strings and random
// Unicode: the same ids, and decode(encode(s)) == s. Bad tokenizer.json files are UserErrors
// naming the file and the field; `prepare --tokenizer` writes the tokenizer next to the shards.
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

// Same ids as the reference on every string; lossless: decode gives each string back.
void expect_reference_ids(Tokenizer& tok, const std::string& kind, const std::string& path,
                          const std::vector<std::string>& strings, bool lossless) {
  auto ref = reference_ids(kind, path, strings);
  ASSERT_EQ(ref.size(), strings.size());
  int wrong = 0;
  for (size_t i = 0; i < strings.size() && wrong < 5; i++) {
    std::vector<uint32_t> ids = encode(tok, strings[i]);
    EXPECT_EQ(ids, ref[i]) << kind << " string " << i << ": '" << strings[i].substr(0, 200)
                           << "' (FRUGAL_TEST_SEED=" << test::test_seed() << ")";
    wrong += ids != ref[i];
    if (lossless) {
      EXPECT_EQ(tok.decode(std::vector<int32_t>(ids.begin(), ids.end())), strings[i]) << kind << " string " << i;
    }
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
  expect_reference_ids(*tok, "hf", path, hard_strings(), true);
  expect_reference_ids(*tok, "hf", path, random_strings(3000), true);
  expect_reference_corpus(*tok, "hf", path);
}

TEST(HfTokenizer, Llama3StyleEqualsTokenizers) {
  std::string path = fixture("llama3/tokenizer.json");
  auto tok = load_hf_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 4138);  // 4000 trained, 131 boundary tokens, 7 special
  EXPECT_EQ(tok->eot(), 4132u);  // tokenizer_config.json's eos_token <|end_of_text|>
  EXPECT_EQ(encode(*tok, "<|eot_id|>"), std::vector<uint32_t>{4135});
  EXPECT_EQ(tok->decode({4135}), "<|eot_id|>");
  expect_reference_ids(*tok, "hf", path, hard_strings(), true);
  expect_reference_ids(*tok, "hf", path, random_strings(3000), true);
  expect_reference_corpus(*tok, "hf", path);
}

// Any bytes (not UTF-8 too): ids in range and an exact round trip.
TEST(HfTokenizer, RoundTripsAnyBytes) {
  for (const char* f : {"gpt2/tokenizer.json", "llama3/tokenizer.json"}) {
    auto tok = load_hf_tokenizer(fixture(f));
    Rng rng(test::test_seed());
    for (int i = 0; i < 3000; i++) {
      std::string s(size_t(rng.below(64)), '\0');
      for (auto& c : s) c = char(rng.below(256));
      std::vector<uint32_t> ids = encode(*tok, s);
      for (uint32_t id : ids) ASSERT_LT(id, uint32_t(tok->vocab_size()));
      ASSERT_EQ(tok->decode(std::vector<int32_t>(ids.begin(), ids.end())), s) << f << " string " << i;
    }
  }
}

TEST(Tiktoken, Cl100kPatternEqualsTiktoken) {
  std::string path = fixture("cl100k.tiktoken");
  auto tok = make_tiktoken_tokenizer(path, "cl100k");
  EXPECT_EQ(tok->kind(), TokenizerKind::tiktoken);
  EXPECT_EQ(tok->split_pattern(), "cl100k");
  expect_reference_ids(*tok, "tiktoken-cl100k", path, hard_strings(), true);
  expect_reference_ids(*tok, "tiktoken-cl100k", path, random_strings(3000), true);
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
  expect_reference_ids(*tok, "sp", path, hard_strings(), false);
  expect_reference_ids(*tok, "sp", path, random_strings(1000), false);
  expect_reference_corpus(*tok, "sp", path);
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
  expect([](json& j) { j["normalizer"] = {{"type", "NFC"}}; }, "normalizer is \"NFC\", expected null");
  expect([](json& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback is true");
  expect([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"; },
         "pre_tokenizer.pretokenizers[0].pattern.Regex is {\"Regex\":\"\\\\w+\"}, expected GPT-2's, Llama 3's or Qwen2's regex");
  expect([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer is \"Whitespace\", expected ByteLevel");
  expect([](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
         "pre_tokenizer.pretokenizers[1].add_prefix_space is true, expected false");
  expect([](json& j) { j["model"]["merges"][5] = json::array({"zz", "qq"}); }, "model.merges[5] is [\"zz\",\"qq\"], expected two tokens");
  expect([](json& j) { j["model"]["merges"][5] = "nospace"; }, "model.merges[5] is \"nospace\", expected \"A B\"");
  expect([](json& j) { j["added_tokens"][0]["lstrip"] = true; }, "added_tokens[0].lstrip is true, expected false");
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

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

// The reference's rendering (tests/reference/pretrained_tokenizers.py render): ids and mask of
// every record.
std::pair<std::vector<uint32_t>, std::vector<uint8_t>> rendered(const std::string& tok_dir, const std::string& tmpl,
                                                               const std::string& jsonl) {
  test::TempDir d;
  EXPECT_TRUE(test::run_reference("pretrained_tokenizers.py", "render " + tok_dir + "/tokenizer.json " + tmpl + " " + jsonl + " " + d / "out.json"));
  std::ifstream in(d / "out.json");
  std::vector<uint32_t> ids;
  std::vector<uint8_t> mask;
  for (auto& r : json::parse(in)) {
    for (auto& x : r["ids"]) ids.push_back(x);
    for (auto& x : r["mask"]) mask.push_back(x);
  }
  return {ids, mask};
}

// Instruction records: shards are the reference's ids of the rendered records, the masks its
// trained positions, the loader's targets -1 exactly at untrained targets; bad records are one
// error naming file:line and the field, and nothing is written.
TEST(Instruct, ShardsMasksAndLoaderTargets) {
  test::TempDir d;
  {
    std::ofstream pc(d / "pc.jsonl");
    std::ofstream msg(d / "msg.jsonl");
    for (int i = 0; i < 1500; i++) {
      pc << json({{"prompt", fmt::format("What begat {}?\n", i)}, {"completion", fmt::format(" And Seth lived {} years.", i * 7)}}).dump() << "\n";
      msg << json({{"messages", {{{"role", "system"}, {"content", "Be brief."}},
                                 {{"role", "user"}, {"content", fmt::format("Verse {}?", i)}},
                                 {{"role", "assistant"}, {"content", "In the beginning God created the heaven."}},
                                 {{"role", "user"}, {"content", "More"}},
                                 {{"role", "assistant"}, {"content", fmt::format("And the earth {}.", i)}}}}}).dump() << "\n";
    }
  }
  struct Case { std::string tok_dir, tmpl; };
  // llama3's fixture names Llama 3's template; the gpt2 one has none: plain
  for (const Case& c : {Case{fixture("llama3"), "llama3"}, Case{fixture("gpt2"), "plain"}}) {
    for (const char* file : {"pc.jsonl", "msg.jsonl"}) {
      SCOPED_TRACE(c.tmpl + " " + file);
      TokenizerOptions opt;
      opt.pretrained = c.tok_dir;
      std::string out = d / (c.tmpl + file);
      prepare_instruct({d / file}, out, 4, opt);
      auto [ids, mask] = rendered(c.tok_dir, c.tmpl, d / file);
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
    test::expect_user_error([&] { prepare_instruct({d / "bad.jsonl"}, d / "badout", 4, opt); }, d / "bad.jsonl" + ":2: " + error);
    EXPECT_FALSE(std::filesystem::exists(d / "badout/train_000.bin"));
  };
  bad("[1, 2]", "expected a JSON object");
  bad("{\"prompt\": \"x\"", "not JSON");
  bad(R"({"prompt": "x"})", "no \"completion\"");
  bad(R"({"prompt": "x", "completion": 3})", "\"completion\" is 3, expected a string");
  bad(R"({"messages": [{"role": "user", "content": "hi"}]})", "messages: no message with role \"assistant\"");
  bad(R"({"messages": [{"role": "bot", "content": "hi"}]})", "messages[0].role is \"bot\", expected system, user or assistant");
  bad(R"({"messages": [{"role": "assistant"}]})", "no \"content\" (messages[0])");
  // a mask that does not fit its shard
  std::string out = d / "llama3pc.jsonl";
  write_mask(out + "/train_000.mask", {1, 0, 1});
  test::expect_user_error([&] { DataLoader({out + "/train_000.bin"}, 0, 1, 8, 1, false); }, "train_000.mask: 3 mask bytes");
}

}  // namespace
}  // namespace frugal
