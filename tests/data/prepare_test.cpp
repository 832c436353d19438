// prepare_corpus at scale: streamed inputs (.txt, .jsonl, .gz, .zst), the split by whole
// documents, shards bit-identical for any thread count and after a resume, the manifest's
// checksums checked by the reader, bad input named.
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "support/support.h"

namespace frugal {
namespace {

namespace fs = std::filesystem;
const std::string kGpt2Files = std::string(FRUGAL_SOURCE_DIR) + "/" + kGpt2Dir;

std::string slurp(const fs::path& p) { return read_whole_file(p.string()); }
void put(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// The tokens of a split, shard after shard, in the manifest's order.
std::vector<uint32_t> split_tokens(const fs::path& dir, const std::string& split) {
  std::vector<uint32_t> out;
  for (auto& f : resolve_shards(dir.string(), "data." + split)) {
    TokenShard s(f, 0);
    for (int64_t i = 0; i < s.size(); i++) out.push_back(s[i]);
  }
  return out;
}

// Every file of a directory, by name.
std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> m;
  for (auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = slurp(e.path());
  return m;
}

// A corpus of every input kind: text documents with lines of ASCII and other scripts (one long
// enough to be cut into pieces), records in .jsonl, .jsonl.gz and .jsonl.zst.
fs::path make_corpus(const fs::path& d) {
  fs::path c = d / "corpus";
  fs::create_directories(c / "sub");
  std::mt19937_64 g(5);
  const char* words[] = {"the", "Word", "beginning", "ünïcödé", "中文", "Ελληνικά", "😀", "  ", "it's", "42", "\t"};
  auto line = [&](int n) {
    std::string s;
    for (int k = 0; k < n; k++) s += std::string(k ? " " : "") + words[g() % 11];
    return s + (g() % 3 ? ".\n" : "\n\n");
  };
  std::string big;
  while (big.size() < 2'500'000) big += line(int(g() % 20));
  put(c / "a_big.txt", big);
  put(c / "b_small.txt", line(30));
  put(c / "c_empty.txt", "");
  std::string jsonl;
  for (int i = 0; i < 300; i++)
    jsonl += nlohmann::json{{"id", i}, {"text", "record " + std::to_string(i) + ": " + line(int(g() % 40))}}.dump() + "\n";
  // the same records, compressed: documents again (the split decides per document index)
  put(c / "d.jsonl", jsonl);
  put(c / "sub/e.jsonl", jsonl);
  put(c / "sub/f.jsonl", jsonl);
  EXPECT_EQ(std::system(("gzip " + (c / "sub/e.jsonl").string() + " && zstd -q --rm " + (c / "sub/f.jsonl").string()).c_str()), 0);
  return c;
}

CorpusOptions small_shards(int threads) {
  CorpusOptions o;
  o.val_fraction = 0.05;
  o.shard_tokens = 100'000;
  o.threads = threads;
  o.seed = 3;
  return o;
}

TokenizerOptions gpt2_options() {
  TokenizerOptions t;
  t.kind = TokenizerKind::gpt2;
  t.gpt2_dir = kGpt2Files;
  return t;
}

// 1 and 2 threads, and a run interrupted then resumed, give the same files, bit for bit.
TEST(Prepare, SameShardsForAnyThreadCountAndAfterAResume) {
  test::TempDir d;
  fs::path c = make_corpus(d.path);
  PrepareStats one = prepare_corpus({c.string()}, d / "t1", small_shards(1), gpt2_options());
  PrepareStats two = prepare_corpus({c.string()}, d / "t2", small_shards(2), gpt2_options());
  EXPECT_GT(one.files.size(), 8u);  // several shards of each split
  EXPECT_EQ(one.train_docs + one.val_docs, 2 + 3 * 300);  // the empty file is no document
  EXPECT_EQ(two.train_tokens, one.train_tokens);
  EXPECT_EQ(two.val_docs, one.val_docs);
  auto want = files_of(d / "t1");
  EXPECT_EQ(files_of(d / "t2"), want);
  // the shards hold the tokens of the documents, end of text between them
  std::vector<uint32_t> train = split_tokens(d / "t1", "train"), val = split_tokens(d / "t1", "val");
  EXPECT_EQ(int64_t(train.size()), one.train_tokens);
  EXPECT_EQ(int64_t(val.size()), one.val_tokens);
  // an interruption: the last shards gone, a half-written temporary, an unfinished manifest;
  // and a listed shard damaged since
  fs::copy(d / "t1", d / "t3");
  std::string m = slurp(d / "t3/manifest.json");
  m.replace(m.find("\"complete\": true"), 16, "\"complete\": false");
  put(d / "t3/manifest.json", m);
  fs::remove(d / "t3/train_004.bin");
  fs::remove(d / "t3/val_000.bin");
  put(d / "t3/train_004.bin.tmp", "half");
  std::string s1 = slurp(d / "t3/train_001.bin");
  s1[5000] ^= 1;
  put(d / "t3/train_001.bin", s1);
  EXPECT_THROW(resolve_shards(d / "t3", "data.train"), UserError);  // unfinished, by directory or glob
  test::expect_user_error([&] { resolve_shards(d / "t3/train_*.bin", "data.train"); },
                          "t3/manifest.json: prepare did not finish here");
  PrepareStats again = prepare_corpus({c.string()}, d / "t3", small_shards(2), gpt2_options());
  EXPECT_EQ(again.reused_shards, int64_t(one.files.size()) - 3);
  EXPECT_EQ(files_of(d / "t3"), want);
  // a rerun of a finished directory rewrites nothing
  EXPECT_EQ(prepare_corpus({c.string()}, d / "t3", small_shards(1), gpt2_options()).reused_shards,
            int64_t(one.files.size()));
  // other options: a fresh preparation, and the shards of the earlier one are removed
  CorpusOptions bigger = small_shards(2);
  bigger.shard_tokens = 10'000'000;
  PrepareStats b = prepare_corpus({c.string()}, d / "t3", bigger, gpt2_options());
  EXPECT_EQ(b.reused_shards, 0);
  EXPECT_EQ(b.files.size(), 2u);
  EXPECT_FALSE(fs::exists(d / "t3/train_001.bin"));
  EXPECT_EQ(split_tokens(d / "t3", "train"), train);
}

// A long .txt document is tokenized in pieces cut at lines: the ids of the whole text.
TEST(Prepare, PiecesOfALongDocumentGiveTheWholeTextsIds) {
  test::TempDir d;
  fs::path c = make_corpus(d.path);
  auto tok = make_gpt2_tokenizer(kGpt2Files);
  for (int threads : {1, 2}) {
    CorpusOptions o;
    o.val_docs = 1;
    o.seed = 2;
    o.threads = threads;
    PrepareStats st = prepare_corpus({(c / "a_big.txt").string(), (c / "b_small.txt").string()}, d / "p", o, gpt2_options());
    ASSERT_EQ(st.val_docs, 1);
    std::vector<uint32_t> whole, small;
    tok->encode(slurp(c / "a_big.txt"), whole);
    tok->encode(slurp(c / "b_small.txt"), small);
    EXPECT_GT(whole.size(), 700'000u);
    std::vector<uint32_t> train = split_tokens(d / "p", "train"), val = split_tokens(d / "p", "val");
    if (train.size() < val.size()) std::swap(train, val);  // whichever the seed drew
    EXPECT_EQ(train, whole);
    EXPECT_EQ(val, small);
  }
}

// The split is by whole documents, drawn by the seed: never one document in both.
TEST(Prepare, NoDocumentInBothSplits) {
  test::TempDir d;
  std::string jsonl;
  for (int i = 0; i < 1000; i++) jsonl += "{\"text\": \"doc " + std::to_string(i) + " says hello\"}\n";
  put(d / "docs.jsonl", jsonl);
  auto ids = [&](const fs::path& dir, const std::string& split) {
    std::vector<uint32_t> t = split_tokens(dir, split);
    std::vector<int> out;
    std::string cur;
    for (size_t i = 0; i <= t.size(); i++) {
      if (i == t.size() || t[i] == uint32_t(kByteEot)) {
        EXPECT_EQ(cur.rfind("doc ", 0), 0u) << cur;
        out.push_back(std::stoi(cur.substr(4)));
        EXPECT_EQ(cur, "doc " + std::to_string(out.back()) + " says hello");
        cur.clear();
      } else {
        cur += char(t[i]);
      }
    }
    return out;
  };
  std::set<int> first_val;
  for (uint64_t seed : {1, 2}) {
    CorpusOptions o;
    o.val_fraction = 0.1;
    o.seed = seed;
    o.shard_tokens = 3000;
    PrepareStats st = prepare_corpus({d / "docs.jsonl"}, d / "s", o);
    std::vector<int> tr = ids(d / "s", "train"), va = ids(d / "s", "val");
    EXPECT_EQ(int64_t(va.size()), st.val_docs);
    EXPECT_NEAR(double(va.size()), 100, 35);
    std::set<int> all(tr.begin(), tr.end());
    for (int v : va) EXPECT_TRUE(all.insert(v).second) << "document " << v << " in both splits";
    EXPECT_EQ(all.size(), 1000u);
    EXPECT_TRUE(std::is_sorted(tr.begin(), tr.end()));  // input order within a split
    if (seed == 1) first_val.insert(va.begin(), va.end());
    else EXPECT_NE(first_val, std::set<int>(va.begin(), va.end()));  // the seed draws them
  }
  CorpusOptions o;
  o.val_docs = 37;
  PrepareStats st = prepare_corpus({d / "docs.jsonl"}, d / "n", o);
  EXPECT_EQ(st.val_docs, 37);
  EXPECT_EQ(ids(d / "n", "val").size(), 37u);
  EXPECT_EQ(ids(d / "n", "train").size(), 963u);
}

// A damaged shard of a prepared directory is refused by name; so is one the manifest lacks.
TEST(Prepare, ManifestChecksumsRefuseDamagedShards) {
  test::TempDir d;
  std::string text;
  for (int i = 0; i < 20000; i++) text += "line " + std::to_string(i) + "\n";
  put(d / "a.txt", text);
  CorpusOptions o;
  o.val_every = 4;
  o.shard_tokens = 20000;
  prepare_corpus({d / "a.txt"}, d / "out", o);
  auto j = slurp(d / "out/manifest.json");
  ASSERT_NE(j.find("\"checksum\""), std::string::npos);
  for (auto& f : resolve_shards(d / "out", "data.train")) {
    TokenShard ok(f, kByteVocab);
    EXPECT_GT(ok.size(), 0);
  }
  std::string s = slurp(d / "out/train_002.bin");
  std::string flipped = s;
  flipped[2000] ^= 0x10;
  put(d / "out/train_002.bin", flipped);
  test::expect_user_error([&] { TokenShard(d / "out/train_002.bin", 0); },
                          "out/train_002.bin: checksum ");
  test::expect_user_error([&] { DataLoader(resolve_shards(d / "out", "data.train"), kByteVocab, 4, 64, 1, true); },
                          "train_002.bin: checksum ");
  put(d / "out/train_002.bin", s.substr(0, s.size() - 2));
  test::expect_user_error([&] { TokenShard(d / "out/train_002.bin", 0); }, "train_002.bin: header says");
  put(d / "out/train_002.bin", s);
  fs::copy_file(d / "out/train_000.bin", d / "out/train_099.bin");
  test::expect_user_error([&] { TokenShard(d / "out/train_099.bin", 0); }, "train_099.bin: not listed in");
  fs::remove(d / "out/train_099.bin");
  // entries without their checksums: the manifest is named; prepare again writes them anew
  std::string edited = j;
  for (size_t at; (at = edited.find("\"checksum\"")) != std::string::npos;) edited.replace(at, 10, "\"sum\"");
  put(d / "out/manifest.json", edited);
  test::expect_user_error([&] { TokenShard(d / "out/train_000.bin", 0); },
                          "out/manifest.json: not a frugal manifest: [json.exception.out_of_range.403] key 'checksum' not found");
  PrepareStats again = prepare_corpus({d / "a.txt"}, d / "out", o);
  EXPECT_EQ(again.reused_shards, 0);
  EXPECT_EQ(slurp(d / "out/manifest.json"), j);
}

// Bad .jsonl lines name the file and the line; --skip-bad-lines counts them; no text at all
// is an error; invalid UTF-8 is tokenized as its bytes.
TEST(Prepare, BadInputIsNamed) {
  test::TempDir d;
  put(d / "bad.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\"\n{\"body\": \"x\"}\n[1]\n{\"text\": 3}\n{\"text\": \"six\"}\n");
  CorpusOptions o;
  o.val_docs = 1;
  test::expect_user_error([&] { prepare_corpus({d / "bad.jsonl"}, d / "o", o); }, "bad.jsonl:3: not JSON");
  put(d / "b2.jsonl", "{\"text\": \"one\"}\n{\"body\": \"x\"}\n");
  CorpusOptions half;
  half.val_fraction = 0.5;
  test::expect_user_error([&] { prepare_corpus({d / "b2.jsonl"}, d / "o", half); },
                          "b2.jsonl:2: no \"text\" field (--field names the field that holds the text)");
  // --val-docs counts the documents first: a bad line is its own error there, not a count of too few
  put(d / "allbad.jsonl", "{\"body\": \"x\"}\n{\"body\": \"y\"}\n");
  test::expect_user_error([&] { prepare_corpus({d / "allbad.jsonl"}, d / "o", o); },
                          "allbad.jsonl:1: no \"text\" field (--field names the field that holds the text) (--skip-bad-lines");
  o.skip_bad_lines = true;
  test::expect_user_error([&] { prepare_corpus({d / "allbad.jsonl"}, d / "o", o); },
                          "--val-docs 1: the input holds 0 documents (2 bad .jsonl lines skipped), expected more than that");
  CorpusOptions tiny = half;  // 2-token shards: thousands of files, and not one window in them
  tiny.shard_tokens = 2;
  test::expect_user_error([&] { prepare_corpus({d / "b2.jsonl"}, d / "o", tiny); },
                          "--shard-tokens: expected 1024 to 2147483647 (a window does not cross shards), got 2");
  // refused before a shard is written (here by --val-docs' count): no directory is left behind
  test::expect_user_error([&] { prepare_corpus({d / "allbad.jsonl"}, d / "none", o); }, "--val-docs 1: the input holds 0");
  EXPECT_FALSE(fs::exists(d / "none"));
  PrepareStats st = prepare_corpus({d / "bad.jsonl"}, d / "o", o);
  EXPECT_EQ(st.skipped_lines, 4);
  EXPECT_EQ(st.train_docs + st.val_docs, 2);
  o.field = "body";
  o.val_docs = 0;
  o.val_every = 2;
  test::expect_user_error([&] { prepare_corpus({d / "b2.jsonl"}, d / "o", o); },
                          "too few for a validation split by --val-every 2 (the first validation chunk of 8192 tokens starts "
                          "at token 8192): a split by chunks needs more than 8192 tokens");
  std::string lines;  // 40000 byte tokens: the 5th chunk is the last to start inside them
  for (int i = 0; i < 4000; i++) lines += fmt::format("line {:04}\n", i);
  put(d / "lines.txt", lines);
  CorpusOptions every20;
  every20.val_every = 20;
  test::expect_user_error([&] { prepare_corpus({d / "lines.txt"}, d / "o", every20); },
                          "the input has 40000 tokens, too few for a validation split by --val-every 20 (the first validation "
                          "chunk of 8192 tokens starts at token 155648): give --val-every 5 or less");
  put(d / "empty.txt", "");
  test::expect_user_error([&] { prepare_corpus({d / "empty.txt"}, d / "o", CorpusOptions{}); }, "the input holds no text");
  test::expect_user_error([&] { prepare_corpus({d / "nothing*.txt"}, d / "o", CorpusOptions{}); }, "nothing*.txt: no files match");
  // invalid UTF-8: byte-level GPT-2 encodes the bytes, and they decode back
  std::string bad = "caf\xC3 \xFF\xFE ok\n";
  std::string text;
  for (int i = 0; i < 3000; i++) text += bad;
  put(d / "u.txt", text);
  CorpusOptions c;
  c.val_every = 2;
  PrepareStats u = prepare_corpus({d / "u.txt"}, d / "u", c, gpt2_options());
  EXPECT_EQ(u.invalid_utf8_docs, 1);
  auto tok = load_tokenizer(d / "u");
  std::vector<uint32_t> ids = split_tokens(d / "u", "train");
  std::vector<int32_t> first(ids.begin(), ids.begin() + 10);
  EXPECT_EQ(tok->decode(first).substr(0, bad.size()), bad);
  // a trained SentencePiece: each byte that is not UTF-8 becomes U+FFFD (SentencePiece's own
  // normalisation, whatever the byte fallback)
  TokenizerOptions sp;
  sp.kind = TokenizerKind::sentencepiece;
  sp.vocab_size = 270;
  try {
    PrepareStats s = prepare_corpus({d / "u.txt"}, d / "sp", c, sp);
    EXPECT_EQ(s.invalid_utf8_docs, 1);
    auto spt = load_tokenizer(d / "sp");
    std::vector<uint32_t> sid = split_tokens(d / "sp", "train");
    std::vector<int32_t> head(sid.begin(), sid.begin() + 40);
    const std::string replaced = "caf\xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD ok\n";
    EXPECT_EQ(spt->decode(head).substr(0, replaced.size()), replaced);
  } catch (const UserError& e) {
    if (std::string(e.what()).find("built without SentencePiece") == std::string::npos) throw;
  }
}

}  // namespace
}  // namespace frugal
