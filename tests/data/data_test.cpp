// Token shards, the loader and the byte tokenizer.
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "support/support.h"

namespace frugal {
namespace {

std::vector<uint32_t> iota_tokens(size_t n, uint32_t mod) {
  std::vector<uint32_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = uint32_t(i % mod);
  return v;
}

TEST(Shards, RoundTripUint16AndUint32) {
  test::TempDir d;
  auto small = iota_tokens(1000, 50257), big = iota_tokens(1000, 50257);
  big[3] = 100000;  // needs uint32
  write_shard(d / "a.bin", small);
  write_shard(d / "b.bin", big);
  EXPECT_EQ(std::filesystem::file_size(d / "a.bin"), 1024 + 2 * 1000u);
  EXPECT_EQ(std::filesystem::file_size(d / "b.bin"), 1024 + 4 * 1000u);
  TokenShard a(d / "a.bin", 0), b(d / "b.bin", 0);
  ASSERT_EQ(a.size(), 1000);
  for (int i = 0; i < 1000; i++) {
    EXPECT_EQ(a[i], small[i]);
    EXPECT_EQ(b[i], big[i]);
  }
}

TEST(Shards, ReadsLlmcLayout) {
  // Written by hand as llm.c's dev/data scripts do: 256 int32 header then uint16 tokens.
  test::TempDir d;
  int32_t h[256] = {20240520, 1, 3};
  uint16_t toks[3] = {50256, 7, 42};
  std::ofstream(d / "llmc.bin", std::ios::binary).write((char*)h, sizeof h).write((char*)toks, sizeof toks);
  TokenShard s(d / "llmc.bin", 50257);
  EXPECT_EQ(s.size(), 3);
  EXPECT_EQ(s[0], 50256u);
  EXPECT_EQ(s[2], 42u);
}

TEST(Shards, BadFilesGiveOneClearError) {
  test::TempDir d;
  write_shard(d / "ok.bin", iota_tokens(100, 300));
  // wrong magic
  {
    std::vector<char> bytes(1024 + 200, 0);
    std::ofstream(d / "magic.bin", std::ios::binary).write(bytes.data(), bytes.size());
  }
  test::expect_user_error([&] { TokenShard s(d / "magic.bin", 0); }, "magic.bin: bad header: magic 0");
  // truncated body
  std::filesystem::copy_file(d / "ok.bin", d / "trunc.bin");
  std::filesystem::resize_file(d / "trunc.bin", 1024 + 150);
  test::expect_user_error([&] { TokenShard s(d / "trunc.bin", 0); }, "header says 100 tokens (200 bytes of body), but the body has 150 bytes");
  // shorter than the header
  std::filesystem::resize_file(d / "trunc.bin", 10);
  test::expect_user_error([&] { TokenShard s(d / "trunc.bin", 0); }, "shorter than the 1024-byte header");
  // token ids >= vocab
  test::expect_user_error([&] { TokenShard s(d / "ok.bin", 50); }, "token 50 has id 50, expected ids below model.vocab_size = 50");
  test::expect_user_error([&] { TokenShard s(d / "missing.bin", 0); }, "missing.bin: cannot open");
  test::expect_user_error([&] { resolve_shards(d / "none_*.bin", "data.train"); }, "data.train: no token shards match");
}

// A directory of prepared shards given as data.train or data.val: each takes its own split.
TEST(Shards, ADirectoryGivesEachSplitItsOwnShards) {
  test::TempDir d;
  std::filesystem::create_directories(d / "prep");
  for (const char* f : {"prep/train_000.bin", "prep/train_001.bin", "prep/val_000.bin"}) write_shard(d / f, {1, 2, 3});
  EXPECT_EQ(resolve_shards(d / "prep", "data.train"), (std::vector<std::string>{d / "prep/train_000.bin", d / "prep/train_001.bin"}));
  EXPECT_EQ(resolve_shards(d / "prep", "data.val"), std::vector<std::string>{d / "prep/val_000.bin"});
  EXPECT_EQ(resolve_shards(d / "prep", "--data").size(), 3u);  // eval's own choice: all of them
}

TEST(Loader, WindowsAreConsecutiveTokensAndShuffleIsSeeded) {
  test::TempDir d;
  write_shard(d / "s0.bin", iota_tokens(401, 1000));        // 100 windows of T=4
  std::vector<uint32_t> t1(201);
  for (size_t i = 0; i < t1.size(); i++) t1[i] = uint32_t(500 + i);
  write_shard(d / "s1.bin", t1);                            // 50 windows
  auto files = resolve_shards(d / "s*.bin", "data.train");
  ASSERT_EQ(files.size(), 2u);
  const int B = 3, T = 4;
  DataLoader a(files, 1000, B, T, 7, true), b(files, 1000, B, T, 7, true), c(files, 1000, B, T, 8, true);
  EXPECT_EQ(a.num_windows(), 150);
  std::vector<int32_t> ia(B * T), ta(B * T), ib(B * T), tb(B * T), ic(B * T), tc(B * T);
  std::set<int32_t> starts;
  bool differs = false;
  for (int k = 0; k < 50; k++) {  // exactly one epoch: 150 windows
    a.next(ia.data(), ta.data());
    b.next(ib.data(), tb.data());
    c.next(ic.data(), tc.data());
    EXPECT_EQ(ia, ib);
    EXPECT_EQ(ta, tb);
    differs |= ia != ic;
    for (int r = 0; r < B; r++) {
      for (int t = 0; t < T; t++) EXPECT_EQ(ta[r * T + t], ia[r * T + t] + 1);  // targets shift by one
      starts.insert(ia[r * T]);
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(starts.size(), 150u);  // every window once per epoch
  EXPECT_EQ(a.epoch(), 0);
  a.next(ia.data(), ta.data());
  EXPECT_EQ(a.epoch(), 1);
}

// Documents masked apart. In text a document starts at its separator, whose target (the
// document's first token) stays trained, and windows are the stream's; text whose documents end
// at it (BOS ... end of text) leaves the target at it untrained. In records (shards with loss
// masks) each window holds whole records, packed best fit decreasing (TRL's: tests/data/
// pretrained_tokenizer_test.cpp checks against it) and padded; a record longer than the window is
// cut to it; the target at each separator (the next record's first token) is untrained.
TEST(Loader, RecordsMaskedApartAreWholeInTheirWindows) {
  test::TempDir d;
  // records ending in separator 1: A(3) B(5) C(2) D(10) E(3) F(5); T = 6: windows of up to 7 tokens
  const std::vector<uint32_t> tokens = {5, 6, 1, 7, 8, 9, 10, 1, 11, 1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 1,
                                        21, 22, 1, 23, 24, 25, 26, 1};
  write_shard(d / "text.bin", tokens);
  write_shard(d / "rec.bin", tokens);
  write_mask(mask_path(d / "rec.bin"), std::vector<uint8_t>(tokens.size(), 1));
  const int T = 6;
  {
    DataLoader text({d / "text.bin"}, 100, 1, T, 1, false);
    text.set_documents({1, false});
    EXPECT_FALSE(text.records());
    EXPECT_EQ(text.num_windows(), 4);  // (28 - 1) / 6
    std::vector<int32_t> in(T), tg(T);
    text.next(in.data(), tg.data());
    EXPECT_EQ(in, (std::vector<int32_t>{5, 6, 1, 7, 8, 9}));
    EXPECT_EQ(tg, (std::vector<int32_t>{6, 1, 7, 8, 9, 10}));
    // text whose documents end at the separator (a tokenizer with a BOS): the stream's windows,
    // the target at the separator untrained
    DataLoader after({d / "text.bin"}, 100, 1, T, 1, false);
    after.set_documents({1, true});
    EXPECT_EQ(after.num_windows(), 4);
    after.next(in.data(), tg.data());
    EXPECT_EQ(in, (std::vector<int32_t>{5, 6, 1, 7, 8, 9}));
    EXPECT_EQ(tg, (std::vector<int32_t>{6, 1, -1, 8, 9, 10}));
  }
  DataLoader rec({d / "rec.bin"}, 100, 1, T, 1, false);
  rec.set_documents({1, true});
  EXPECT_TRUE(rec.records());
  // best fit decreasing: D (cut to 7) alone; B (5), then F (5) in a window of its own; A (3) in a
  // third, E (3) beside it (room 4); C (2) into the window with the least room, B's (2)
  EXPECT_EQ(rec.num_windows(), 4);
  EXPECT_EQ(rec.truncated(), 1);
  const std::vector<std::vector<int32_t>> in_want = {{12, 13, 14, 15, 16, 17}, {7, 8, 9, 10, 1, 11}, {23, 24, 25, 26, 1, 0},
                                                     {5, 6, 1, 21, 22, 1}},
                                          tg_want = {{13, 14, 15, 16, 17, 18}, {8, 9, 10, 1, -1, 1}, {24, 25, 26, 1, -1, -1},
                                                     {6, 1, -1, 22, 1, -1}};
  std::vector<int32_t> in(T), tg(T);
  for (int epoch = 0; epoch < 2; epoch++)
    for (size_t w = 0; w < in_want.size(); w++) {
      rec.next(in.data(), tg.data());
      EXPECT_EQ(in, in_want[w]) << "window " << w;
      EXPECT_EQ(tg, tg_want[w]) << "window " << w;
    }
  std::vector<uint32_t> long_records(60, 7);  // three of 20 tokens: 14 windows of 4+1 in the stream, 3 of records
  long_records[19] = long_records[39] = long_records[59] = 1;
  write_shard(d / "long.bin", long_records);
  write_mask(mask_path(d / "long.bin"), std::vector<uint8_t>(long_records.size(), 1));
  test::expect_user_error([&] { DataLoader(std::vector<std::string>{d / "long.bin"}, 100, 4, 4, 1, false).set_documents({1, true}); },
                          "long.bin: 3 windows of whole records up to 4+1 tokens in 1 file(s), fewer than one global batch of 4");
}

// Whole-record windows are TRL's best-fit-decreasing packing (pack_dataset, "bfd", at T+1
// tokens a row): the same records in the same windows, in the same order, on random lengths from
// one token to twice the window (those longer cut to it, as TRL truncates).
TEST(Loader, RecordWindowsAreTrlsBestFitDecreasing) {
  test::TempDir d;
  const int T = 32;
  const int32_t sep = 1;
  Rng rng(test::test_seed());
  std::vector<uint32_t> tokens;
  std::vector<std::vector<uint32_t>> records;
  for (int r = 0; r < 300; r++) {
    auto& rec = records.emplace_back(rng.below(2 * T));  // then sep: 1 to 2T tokens
    for (auto& t : rec) t = 2 + uint32_t(rng.below(98));
    rec.push_back(sep);
    tokens.insert(tokens.end(), rec.begin(), rec.end());
  }
  write_shard(d / "rec.bin", tokens);
  write_mask(mask_path(d / "rec.bin"), std::vector<uint8_t>(tokens.size(), 1));
  std::ofstream(d / "records.json") << nlohmann::json(records).dump();
  ASSERT_TRUE(test::run_reference("packing_reference.py", d / "records.json " + std::to_string(T + 1) + " " + d / "rows.json"));
  const auto rows = nlohmann::json::parse(std::ifstream(d / "rows.json")).get<std::vector<std::vector<int32_t>>>();
  DataLoader loader({d / "rec.bin"}, 100, 1, T, 1, false);
  loader.set_documents({sep, true});
  ASSERT_EQ(loader.num_windows(), int64_t(rows.size()));
  std::vector<int32_t> in(T), tg(T);
  for (size_t w = 0; w < rows.size(); w++) {
    loader.next(in.data(), tg.data());
    const std::vector<int32_t>& row = rows[w];
    std::vector<int32_t> in_want(T, 0), tg_want(T, -1);
    for (size_t t = 0; t < size_t(T); t++) {
      if (t < row.size()) in_want[t] = row[t];
      if (t + 1 < row.size() && row[t] != sep) tg_want[t] = row[t + 1];
    }
    EXPECT_EQ(in, in_want) << "window " << w;
    EXPECT_EQ(tg, tg_want) << "window " << w;
  }
  EXPECT_GT(loader.truncated(), 50);
  EXPECT_LT(loader.num_windows(), 300);  // records share windows
}

TEST(Loader, SeekContinuesExactlyWhereThePositionWasTaken) {
  // positions in the middle of a shard, at a shard's end and across an epoch boundary
  test::TempDir d;
  write_shard(d / "s0.bin", iota_tokens(401, 1000));  // 100 windows of T=4
  write_shard(d / "s1.bin", iota_tokens(201, 1000));  // 50 windows
  auto files = resolve_shards(d / "s*.bin", "data.train");
  const int B = 5, T = 4;
  for (int skip : {0, 7, 10, 29, 30, 31, 45}) {  // batches of 5: 30 per epoch
    DataLoader a(files, 1000, B, T, 3, true);
    std::vector<int32_t> in(B * T), tg(B * T), in2(B * T), tg2(B * T);
    for (int k = 0; k < skip; k++) a.next(in.data(), tg.data());
    DataLoader b(files, 1000, B, T, 3, true);
    b.seek(a.position(), "ckpt");
    for (int k = 0; k < 20; k++) {
      a.next(in.data(), tg.data());
      b.next(in2.data(), tg2.data());
      ASSERT_EQ(in, in2) << "skip " << skip << " batch " << k;
      ASSERT_EQ(tg, tg2);
    }
  }
  DataLoader c(files, 1000, B, T, 3, true);
  test::expect_user_error([&] { c.seek({0, 2, 0}, "ckpt-4/state.json"); }, "ckpt-4/state.json: data position (epoch 0, shard 2, window 0) is out of range for 2 shard(s)");
}

TEST(Loader, RanksReadDisjointPartsOfTheGlobalBatch) {
  test::TempDir d;
  write_shard(d / "s.bin", iota_tokens(801, 100000));
  auto files = resolve_shards(d / "s.bin", "data.train");
  DataLoader whole(files, 0, 4, 4, 3, true);
  DataLoader r0(files, 0, 2, 4, 3, true, 0, 2), r1(files, 0, 2, 4, 3, true, 1, 2);
  std::vector<int32_t> w(16), wt(16), a(8), at(8), b(8), bt(8);
  for (int k = 0; k < 10; k++) {
    whole.next(w.data(), wt.data());
    r0.next(a.data(), at.data());
    r1.next(b.data(), bt.data());
    EXPECT_EQ(std::vector<int32_t>(w.begin(), w.begin() + 8), a);
    EXPECT_EQ(std::vector<int32_t>(w.begin() + 8, w.end()), b);
  }
}

TEST(Loader, ValidationOrderIsFileOrderAndResets) {
  test::TempDir d;
  write_shard(d / "v.bin", iota_tokens(41, 1000));
  DataLoader v({d / "v.bin"}, 1000, 2, 4, 1, false);
  std::vector<int32_t> in(8), tg(8);
  v.next(in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  v.next(in.data(), tg.data());
  v.reset();
  v.next(in.data(), tg.data());
  EXPECT_EQ(in[0], 0);
  EXPECT_THROW(DataLoader({d / "v.bin"}, 1000, 20, 4, 1, false), UserError);  // 10 windows < 20
}

TEST(Prepare, ByteTokensSplitIntoTrainAndVal) {
  test::TempDir d;
  std::string text;
  for (int i = 0; i < 40000; i++) text += char('a' + i % 26);
  std::ofstream(d / "doc1.txt") << text;
  std::ofstream(d / "doc2.txt") << "héllo";
  PrepareStats st = prepare_corpus({d / "doc1.txt", d / "doc2.txt"}, d / "out", 4);
  const int64_t total = 40000 + 1 + 6;  // + end of text + 6 bytes of UTF-8
  EXPECT_EQ(st.train_tokens + st.val_tokens, total);
  EXPECT_EQ(st.val_tokens, 8192);  // the 4th of 5 chunks
  TokenShard train(d / "out/train_000.bin", kByteVocab);
  EXPECT_EQ(train[0], uint32_t('a'));
  EXPECT_EQ(train[train.size() - 7], uint32_t(kByteEot));
  std::vector<uint32_t> enc;
  byte_encode("héllo", enc);
  std::vector<int32_t> ids(enc.begin(), enc.end());
  EXPECT_EQ(byte_decode(ids), "héllo");
}

}  // namespace
}  // namespace frugal
