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
  GptConfig cfg{"custom", 2, 2, 32, 100, 16};
  Gpt a(cfg, cpu_backend()), b(cfg, cpu_backend());
  a.init(3);
  save_model(d / "m.safetensors", a);
  GptConfig back = read_model_config(d / "m.safetensors");
  EXPECT_EQ(back.n_layer, 2);
  EXPECT_EQ(back.vocab_size, 100);
  load_model(d / "m.safetensors", b);
  for (size_t i = 0; i < a.units().size(); i++)
    EXPECT_EQ(0, std::memcmp(a.units()[i].params.data(), b.units()[i].params.data(), a.units()[i].numel * 4));
  GptConfig other = cfg;
  other.n_embd = 64;
  Gpt c(other, cpu_backend());
  test::expect_user_error([&] { load_model(d / "m.safetensors", c); }, "m.safetensors: tensor 'wte' is F32 [128, 32], expected F32 [128, 64]");
  std::ofstream(d / "junk.safetensors") << "not a safetensors file at all";
  test::expect_user_error([&] { SafeTensors s(d / "junk.safetensors"); }, "junk.safetensors: not a safetensors file");
}

}  // namespace
}  // namespace frugal
