// safetensors files and model weights.
#include <fstream>

#include "io/io.h"
#include "support/support.h"

namespace frugal {
namespace {

TEST(SafeTensors, RoundTripWithMetadataAndAlignment) {
  test::TempDir d;
  std::vector<float> a = test::randn(6, 1, 1);
  std::vector<int32_t> b = {1, -2, 3};
  save_safetensors(d / "t.safetensors", {{"a", "F32", {2, 3}, a.data()}, {"b", "I32", {3}, b.data()}},
                   {{"k", "v"}});
  SafeTensors st(d / "t.safetensors");
  std::vector<float> a2(6);
  std::vector<int32_t> b2(3);
  st.read("a", "F32", {2, 3}, a2.data());
  st.read("b", "I32", {3}, b2.data());
  EXPECT_EQ(a, a2);
  EXPECT_EQ(b, b2);
  EXPECT_EQ(st.metadata().at("k"), "v");
  uint64_t len;
  std::ifstream(d / "t.safetensors", std::ios::binary).read((char*)&len, 8);
  EXPECT_EQ(len % 8, 0u);
  test::expect_user_error([&] { st.read("a", "F32", {3, 2}, a2.data()); }, "tensor 'a' is F32 [2, 3], expected F32 [3, 2]");
  test::expect_user_error([&] { st.read("c", "F32", {1}, a2.data()); }, "tensor 'c' is missing");
}

TEST(SafeTensors, ModelRoundTripIsExactAndMismatchIsAClearError) {
  test::TempDir d;
  ModelConfig cfg{"custom", 2, 2, 32, 100, 16};
  Model a(cfg, cpu_backend()), b(cfg, cpu_backend());
  a.init(3);
  save_model(d / "m.safetensors", a);
  ModelConfig back = read_model_config(d / "m.safetensors");
  EXPECT_EQ(back.n_layer, 2);
  EXPECT_EQ(back.vocab_size, 100);
  load_model(d / "m.safetensors", b);
  for (size_t i = 0; i < a.units().size(); i++)
    EXPECT_EQ(0, std::memcmp(a.units()[i].params.data(), b.units()[i].params.data(), a.units()[i].numel * 4));
  ModelConfig other = cfg;
  other.n_embd = 64;
  Model c(other, cpu_backend());
  test::expect_user_error([&] { load_model(d / "m.safetensors", c); }, "m.safetensors: tensor 'transformer.wte.weight' is F32 [100, 32], expected F32, BF16 or F16 [100, 64]");
  std::ofstream(d / "junk.safetensors") << "not a safetensors file at all";
  test::expect_user_error([&] { SafeTensors s(d / "junk.safetensors"); }, "junk.safetensors: not a safetensors file");
  // weights that are not finite numbers are corrupt, not a learning-rate problem later
  a.block_unit(1).p.fc_b[3] = NAN;
  save_model(d / "nan.safetensors", a);
  test::expect_user_error([&] { load_model(d / "nan.safetensors", b); },
                          "nan.safetensors: tensor 'transformer.h.1.mlp.c_fc.bias' holds nan: the weights are corrupt");
}

TEST(SafeTensors, ModelFileIsInTheHuggingFaceLayout) {
  // GPT2LMHeadModel's names, Conv1D weights [in, out], wte with V rows, no lm_head (tied)
  test::TempDir d;
  ModelConfig cfg{"custom", 2, 2, 32, 100, 16};
  Model a(cfg, cpu_backend());
  a.init(5);
  save_model(d / "m.safetensors", a);
  SafeTensors st(d / "m.safetensors");
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_FALSE(st.has("lm_head.weight"));
  EXPECT_EQ(st.shape("transformer.wte.weight"), (std::vector<int64_t>{100, 32}));
  EXPECT_EQ(st.shape("transformer.wpe.weight"), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(st.shape("transformer.ln_f.bias"), (std::vector<int64_t>{32}));
  const Tensors& p1 = a.block_unit(1).p;
  struct Case { const char* name; const float* ours; int64_t out, in; };
  for (const Case& c : {Case{"attn.c_attn.weight", p1.qkv_w, 96, 32}, Case{"attn.c_proj.weight", p1.proj_w, 32, 32},
                        Case{"mlp.c_fc.weight", p1.fc_w, 128, 32}, Case{"mlp.c_proj.weight", p1.fcproj_w, 32, 128}}) {
    std::string name = std::string("transformer.h.1.") + c.name;
    ASSERT_EQ(st.shape(name), (std::vector<int64_t>{c.in, c.out})) << name;
    const float* f = st.f32(name, c.in * c.out);
    for (int64_t o = 0; o < c.out; o++)
      for (int64_t i = 0; i < c.in; i++) ASSERT_EQ(f[i * c.out + o], c.ours[o * c.in + i]) << name;
  }
  // the hub's GPT2Model names (no "transformer." prefix) load too, extra tensors ignored
  std::vector<StTensor> ts;
  std::vector<std::vector<float>> keep;
  for (auto& n : a.named_params()) {
    std::string name = n.spec->hf[0].name.substr(std::string("transformer.").size());
    auto shape = st.shape(n.spec->hf[0].name);
    int64_t numel = shape.size() == 1 ? shape[0] : shape[0] * shape[1];
    const float* f = st.f32(n.spec->hf[0].name, numel);
    keep.emplace_back(f, f + numel);
    ts.push_back({name, "F32", shape, keep.back().data()});
  }
  float mask[4] = {1, 1, 1, 1};
  ts.push_back({"h.0.attn.bias", "F32", {2, 2}, mask});
  save_safetensors(d / "hub.safetensors", ts, {});
  Model b(cfg, cpu_backend());
  load_model(d / "hub.safetensors", b);
  for (size_t i = 0; i < a.units().size(); i++)
    EXPECT_EQ(0, std::memcmp(a.units()[i].params.data(), b.units()[i].params.data(), a.units()[i].numel * 4));
}

// A safetensors file from a header (any bytes) and a data section of `data` zero bytes.
std::vector<char> st_file(const std::string& header, size_t data, uint64_t len = UINT64_MAX) {
  if (len == UINT64_MAX) len = header.size();
  std::string f(reinterpret_cast<const char*>(&len), 8);
  f += header;
  f.append(data, '\0');
  return {f.begin(), f.end()};
}

// Opening must throw a UserError that names the file and contains needle.
void expect_rejected(const std::string& header, size_t data, const std::string& needle, uint64_t len = UINT64_MAX) {
  SCOPED_TRACE(header);
  try {
    SafeTensors("x.safetensors", st_file(header, data, len));
    ADD_FAILURE() << "accepted; expected an error mentioning: " << needle;
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("x.safetensors: ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Every malformed file is a UserError naming the file and the fault, found when it is opened.
TEST(SafeTensors, MalformedFilesAreRejected) {
  const std::string a = R"("a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]})";
  // well formed, with an empty tensor and metadata: accepted, and the data read back
  SafeTensors ok("x.safetensors", st_file("{" + a + R"(, "e": {"dtype": "BF16", "shape": [0, 4], "data_offsets": [24, 24]},
      "__metadata__": {"k": "v"}})", 24));
  EXPECT_EQ(ok.shape("a"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ok.shape("e"), (std::vector<int64_t>{0, 4}));
  // header length beyond the file, a file shorter than the length field
  expect_rejected("{" + a + "}", 24, "not a safetensors file (header length 1000 for a", 1000);
  expect_rejected("{" + a + "}", 24, "not a safetensors file (header length 18446744073709551614", UINT64_MAX - 1);
  test::expect_user_error([&] { SafeTensors("x.safetensors", std::vector<char>(5)); }, "x.safetensors: not a safetensors file");
  // invalid JSON, non-UTF-8 text, JSON that is not an object
  expect_rejected("{" + a, 24, "bad safetensors header (not UTF-8 JSON)");
  expect_rejected(std::string("{\"a") + "\xff\xfe\": 1}", 24, "bad safetensors header (not UTF-8 JSON)");
  expect_rejected(std::string("{\"a\": \"") + "\xc3\x28\"}", 24, "bad safetensors header (not UTF-8 JSON)");
  expect_rejected("[1, 2]", 24, "expected a JSON object");
  // unknown dtype, missing fields, malformed offsets and shapes
  expect_rejected(R"({"a": {"dtype": "F33", "shape": [2, 3], "data_offsets": [0, 24]}})", 24, "tensor 'a': unknown dtype \"F33\"");
  expect_rejected(R"({"a": {"dtype": 4, "shape": [2, 3], "data_offsets": [0, 24]}})", 24, "tensor 'a': unknown dtype 4");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3]}})", 24, "tensor 'a': expected an object with dtype, shape and data_offsets");
  expect_rejected(R"({"a": [1]})", 24, "tensor 'a': expected an object");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [-4, 20]}})", 24, "data_offsets [-4,20], expected [begin, end]");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24.5]}})", 24, "data_offsets [0,24.5], expected [begin, end]");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0]}})", 24, "data_offsets [0], expected [begin, end]");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [-2, 3], "data_offsets": [0, 24]}})", 24, "shape [-2,3], expected non-negative integers");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}})", 24, "shape \"2x3\", expected an array");
  expect_rejected(R"({"a": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 24]}})", 24, "is too large");
  // shape and size disagree
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24, "F32 [2, 3] is 24 bytes, but data_offsets 0..20 hold 20");
  expect_rejected(R"({"a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 24]}})", 24, "F16 [2, 3] is 12 bytes");
  // out-of-range and reversed offsets, overlapping tensors
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 48]}})", 24, "tensor 'a' lies outside the file (offsets 24..48, 24 bytes of data)");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", 24, "tensor 'a' lies outside the file (offsets 8..4");
  expect_rejected("{" + a + R"(, "b": {"dtype": "I32", "shape": [4], "data_offsets": [8, 24]}})", 32, "tensors overlap (bytes 0..24 and 8..24)");
  // tensors that do not tile the data (the safetensors library refuses them too): bytes past the
  // last tensor, a gap before one
  expect_rejected("{" + a + "}", 32, "the tensors hold 24 of the file's 32 bytes of data (bytes 24.. belong to none");
  expect_rejected(R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [8, 32]}})", 32,
                  "the tensors hold 0 of the file's 32 bytes of data");
  // metadata that is not strings
  expect_rejected(R"({"__metadata__": {"k": 1}})", 0, "metadata 'k' is not a string");
  expect_rejected(R"({"__metadata__": [1]})", 0, "__metadata__ is not an object");
}

}  // namespace
}  // namespace frugal
