// The GPT-2 model: sizes of the presets, the initialisation, padding, determinism.
#include <cmath>

#include "io/io.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

TEST(ModelConfig, PresetSizesMatchGpt2) {
  // llm.c's gpt2_124M.bin holds 124,475,904 floats with Vp = 50304.
  EXPECT_EQ(model_preset("gpt2", "t").num_params(), 124475904);
  EXPECT_EQ(model_preset("gpt2", "t").padded_vocab(), 50304);
  // Hugging Face counts (V = 50257 rows, wpe included): 124.44M / 354.82M / 774.03M / 1557.6M
  auto hf = [](const ModelConfig& c) {
    return c.num_params() - (c.padded_vocab() - c.vocab_size) * int64_t(c.n_embd);
  };
  EXPECT_EQ(hf(model_preset("gpt2", "t")), 124439808);
  EXPECT_EQ(hf(model_preset("gpt2-medium", "t")), 354823168);
  EXPECT_EQ(hf(model_preset("gpt2-large", "t")), 774030080);
  EXPECT_EQ(hf(model_preset("gpt2-xl", "t")), 1557611200);
  EXPECT_THROW(model_preset("gpt3", "t"), UserError);
}

TEST(Model, InitFollowsGpt2AndIsDeterministic) {
  ModelConfig cfg{"custom", 4, 4, 128, 300, 64};
  Model a(cfg, cpu_backend()), b(cfg, cpu_backend());
  a.init(5);
  b.init(5);
  auto pa = a.named_params(), pb = b.named_params();
  for (size_t i = 0; i < pa.size(); i++) {
    const ParamSpec& s = *pa[i].spec;
    ASSERT_EQ(0, std::memcmp(pa[i].data, pb[i].data, s.numel * sizeof(float))) << s.name;
    double sum = 0, sq = 0;
    int64_t n = s.name == "wte" ? int64_t(cfg.vocab_size) * cfg.n_embd : s.numel;
    for (int64_t j = 0; j < n; j++) { sum += pa[i].data[j]; sq += double(pa[i].data[j]) * pa[i].data[j]; }
    double mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    switch (s.init) {
      case Init::normal: EXPECT_NEAR(sd, 0.02, 0.002) << s.name; break;
      case Init::normal_residual: EXPECT_NEAR(sd, 0.02 / std::sqrt(8.0), 0.0008) << s.name; break;
      case Init::ones: EXPECT_EQ(mean, 1.0) << s.name; break;
      case Init::zeros: EXPECT_EQ(sq, 0.0) << s.name; break;
      case Init::kaiming_uniform: FAIL() << s.name << ": no adapters here"; break;
    }
    EXPECT_EQ(s.decay, s.shape.size() == 2) << s.name;
    if (s.name == "wte") {
      for (int64_t j = n; j < s.numel; j++) ASSERT_EQ(pa[i].data[j], 0.0f);  // padding rows
    }
  }
  Model c(cfg, cpu_backend());
  c.init(6);
  EXPECT_NE(0, std::memcmp(a.units()[1].p.qkv_w, c.units()[1].p.qkv_w, 64));
}

TEST(Model, PaddingRowsGetNoGradientAndStayZero) {
  ModelConfig cfg{"custom", 1, 2, 32, 130, 16};  // Vp = 256: 126 padding rows
  Model m(cfg, cpu_backend());
  m.init(1);
  TrainSettings t;
  t.seq_len = 16;
  t.micro_batch = 2;
  t.steps = 3;
  t.warmup_steps = 0;
  auto comm = make_local_comm();
  Stepper st(m, cpu_backend(), *comm, t, 1);
  Rng rng(2);
  for (int step = 0; step < 3; step++)
    st.step(step, [&](int32_t* in, int32_t* tg) {
      for (int i = 0; i < 32; i++) { in[i] = int32_t(rng.below(130)); tg[i] = int32_t(rng.below(130)); }
    });
  const float* wte = m.units()[0].p.wte;
  const float* dwte = m.units()[0].g.wte;
  for (int64_t j = 130 * 32; j < 256 * 32; j++) {
    ASSERT_EQ(wte[j], 0.0f);
    ASSERT_EQ(dwte[j], 0.0f);
  }
}

TEST(Model, LossIsLogVAtUniformLogits) {
  // A zero wte gives uniform logits over the V real entries: the loss is exactly log(V), so
  // the 744 padding columns of Vp = 1024 are masked out.
  ModelConfig cfg{"custom", 1, 2, 16, 280, 8};
  Model m(cfg, cpu_backend());
  m.init(3);
  std::memset(m.units()[0].p.wte, 0, m.config().padded_vocab() * 16 * sizeof(float));
  m.allocate(2, 8);
  std::vector<int32_t> in(16, 1), tg(16, 7);
  EXPECT_NEAR(m.forward_loss(in.data(), tg.data(), 2, 8), std::log(280.0), 1e-5);
}

TEST(Model, ChunkedHeadEqualsOneChunk) {
  // The lm head in chunks of 5 rows (not dividing B*T = 24) gives the loss and gradients of
  // one chunk over all rows; in bf16 too, where the CPU backend keeps the head's weight packed
  // over the chunks (Backend::PackedB; C and the padded vocabulary suit its layout).
  for (auto [cfg, dt] : {std::pair{ModelConfig{"custom", 2, 2, 32, 200, 12}, DType::f32},
                         {ModelConfig{"custom", 2, 2, 64, 200, 12}, DType::bf16}}) {
    std::vector<std::vector<float>> grads[2];
    float loss[2];
    TrainSettings t;
    t.seq_len = 12;
    t.micro_batch = 2;
    PrecisionSettings p;
    p.compute = dt;
    auto comm = make_local_comm();
    for (int k = 0; k < 2; k++) {
      Model m(cfg, cpu_backend(), dt);
      m.init(9);
      m.allocate(2, 12, {}, k == 0 ? 5 : 24);
      Stepper st(m, cpu_backend(), *comm, t, 1, p);
      Rng rng(4);
      loss[k] = st.forward_backward([&](int32_t* in, int32_t* tg) {
        for (int i = 0; i < 24; i++) { in[i] = int32_t(rng.below(200)); tg[i] = int32_t(rng.below(200)); }
      });
      for (auto& p : m.named_params()) grads[k].emplace_back(p.grad, p.grad + p.spec->numel);
    }
    // the same products and sums, chunk by chunk: equal up to fp32 rounding in either dtype
    EXPECT_NEAR(loss[0], loss[1], 1e-6) << dtype_name(dt);
    for (size_t i = 0; i < grads[0].size(); i++)
      EXPECT_TRUE(test::all_close(grads[0][i], grads[1][i], 1e-5, 1e-7)) << dtype_name(dt) << " " << i;
  }
}

// Sampling with the key/value cache: a prompt, then a token at a time, gives the logits of the
// whole forward over the sequence so far at every position: gpt2 (learned positions), llama with
// grouped queries, rotary positions and an untied head, and llama under LoRA on an nf4 base.
TEST(Model, KvCacheDecodingEqualsTheWholeForward) {
  ModelConfig llama = model_preset("llama-tiny", "test"), lora = llama;
  lora.lora.rank = 4;
  lora.lora.targets = {"q_proj", "v_proj", "down_proj"};
  lora.lora.base = BaseFormat::nf4;
  for (const ModelConfig& cfg : {ModelConfig{"custom", 2, 2, 32, 200, 40}, llama, lora})
    for (DType dt : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(fmt::format("{} lora {} {}", family_name(cfg.family), cfg.lora.rank, dtype_name(dt)));
      const int T = 23, prompt = 9;
      std::vector<int32_t> tokens(T);
      Rng rng(test::test_seed());
      for (auto& t : tokens) t = int32_t(rng.below(uint64_t(cfg.vocab_size)));
      Model whole(cfg, cpu_backend(), dt), cached(cfg, cpu_backend(), dt);
      whole.init(3);
      cached.init(3);
      whole.allocate(1, T);
      cached.start_cache(T);
      std::vector<float> want, got;
      cached.prefill(tokens.data(), prompt, got);
      for (int n = prompt; n <= T; n++) {
        whole.logits(tokens.data(), 1, n, true, want);
        if (dt == DType::f32) EXPECT_TRUE(test::all_close(got, want, 1e-4, 1e-5)) << "position " << n - 1;
        else EXPECT_LT(test::rel_error(got, want), 2e-2) << "position " << n - 1;
        if (n < T) cached.next(tokens[size_t(n)], got);
      }
      EXPECT_EQ(cached.cached(), T);
    }
}

}  // namespace
}  // namespace frugal
