// LoRA against PEFT + transformers: tests/reference/lora_reference.py makes a tiny Llama or GPT-2
// with transformers' random init and PEFT adapters on it (lora_B drawn nonzero, so that every
// adapter matrix has a gradient); frugal loads both and must compute the same, in fp32:
//  - with the first K targets of every row masked (a prompt), the loss equals the cross-entropy
//    over the counted targets and transformers' own loss with labels -100 on the prompt;
//  - every adapter matrix's gradient within 1e-4 (elementwise), and its values after 5 AdamW steps
//    (frugal's schedule, clipping, decay) within 1e-4 (per tensor);
//  - the adapters frugal writes load in peft.PeftModel.from_pretrained and give frugal's logits;
//  - the frozen base has no gradient and does not move.
#include <limits>

#include "io/io.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

struct Case {
  const char* family;
  int L, NH, NKV, C, F, V, ctx, B, T, rank;
  const char* targets;
  BaseFormat base = BaseFormat::compute;  // nf4: the reference loads the base through bitsandbytes
};

std::vector<float> read_all(const SafeTensors& st, const std::string& name) {
  int64_t n = 1;
  for (auto d : st.shape(name)) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  st.read(name, "F32", st.shape(name), v.data());
  return v;
}

void run_lora_parity(const Case& c) {
  test::TempDir dir;
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(fmt::format("{} ({}): seed {} (FRUGAL_TEST_SEED reproduces it)", c.family, c.targets, seed));
  const std::string ref = dir / "ref";
  ASSERT_TRUE(test::run_reference(
      "lora_reference.py",
      fmt::format("save {} --family {} --layers {} --heads {} --kv-heads {} --hidden {} --ffn {} --vocab {} --context {} "
                  "--rank {} --alpha {} --targets {} --seed {}",
                  ref, c.family, c.L, c.NH, c.NKV, c.C, c.F, c.V, c.ctx, c.rank, 2 * c.rank, c.targets, seed % 100000)));
  const int S = 5, W = c.T + 1, K = c.T / 4;  // K prompt targets per row
  std::vector<int32_t> tokens(size_t(S) * c.B * W);
  Rng rng(seed + 1);
  for (auto& t : tokens) t = int32_t(rng.below(uint64_t(c.V)));
  save_safetensors(dir / "x.safetensors", {{"tokens", "I32", {S, c.B, W}, tokens.data()}}, {});
  const std::string nf4 = c.base == BaseFormat::nf4 ? " --nf4" : "";
  ASSERT_TRUE(test::run_reference("lora_reference.py", fmt::format("run {} {} {} --prompt {} --steps {}{}", ref,
                                                                   dir / "x.safetensors", dir / "r.safetensors", K, S, nf4)));
  SafeTensors r(dir / "r.safetensors");

  ModelConfig cfg = read_hf_config(ref + "/base/config.json");
  cfg.lora = read_adapter_config(ref + "/adapter");
  cfg.lora.base = c.base;
  EXPECT_EQ(cfg.lora.rank, c.rank);
  Backend& be = cpu_backend();
  auto comm = make_local_comm();
  TrainSettings t;  // lora_reference.py's defaults
  t.seq_len = c.T;
  t.micro_batch = c.B;
  t.steps = S;
  t.lr = 1e-3;
  t.min_lr = 1e-4;
  t.warmup_steps = 2;
  t.grad_clip = 1.0;
  t.weight_decay = 0.1;
  Model model(cfg, be, DType::f32);
  Stepper st(model, be, *comm, t, 1);
  load_model(ref + "/base", model);
  load_adapters(ref + "/adapter", model);
  std::vector<float> base_before;
  for (auto& n : model.named_params())
    if (n.spec->site < 0 && n.data) base_before.insert(base_before.end(), n.data, n.data + n.spec->numel);

  int batch = 0;
  NextBatch next = [&](int32_t* in, int32_t* tg) { test::batch_of(tokens, batch++, c.B, c.T, in, tg, K); };
  // Within 1e-4 elementwise; QLoRA's whole tensors within 1e-3 (relative norm of the difference):
  // bitsandbytes' absmax offset is torch's fp32 mean, frugal's a float64 one, and where they differ
  // in the last bit an absmax code at a rounding boundary can take the neighbouring code (a 1 %
  // different scale for that block of 64 weights)
  auto close = [&](const std::vector<float>& a, const std::vector<float>& b, double atol) {
    if (c.base == BaseFormat::nf4) {
      const double e = test::rel_error(a, b);
      return e < 1e-3 ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << "relative error " << e;
    }
    return test::all_close(a, b, 1e-4, atol);
  };
  const float loss = st.forward_backward(next);
  EXPECT_NEAR(loss, read_all(r, "loss")[0], 1e-5 * loss);
  EXPECT_NEAR(loss, read_all(r, "hf_loss")[0], 1e-5 * loss);
  int adapters = 0;
  for (auto& n : model.named_params()) {
    if (n.spec->site < 0) {
      EXPECT_EQ(n.grad, nullptr) << n.spec->name << ": the frozen base has a gradient";
      continue;
    }
    adapters++;
    const std::vector<float> g(n.grad, n.grad + n.spec->numel);
    EXPECT_TRUE(close(g, read_all(r, "grad." + n.spec->hf[0].name), 1e-7)) << n.spec->name;
  }
  EXPECT_EQ(adapters, int(r.names().size() - 3) / 2);  // every one of PEFT's (grad. and param.)

  batch = 0;
  std::vector<float> losses;
  for (int i = 0; i < S; i++) losses.push_back(st.step(i, next).loss);
  EXPECT_TRUE(test::all_close(losses, read_all(r, "losses"), 1e-5, 0));
  std::vector<float> base_after;
  for (auto& n : model.named_params()) {
    if (n.spec->site < 0) {
      if (n.data) base_after.insert(base_after.end(), n.data, n.data + n.spec->numel);
      continue;
    }
    // After 5 steps, per tensor (the relative norm of the difference): AdamW divides each update by
    // sqrt(v), so an element whose gradient is at rounding level moves a full step either way, in
    // frugal and in PyTorch alike (seen: one element of a gpt2 lora_B 1e-3 apart, its tensor 1e-6)
    const std::vector<float> p(n.data, n.data + n.spec->numel), want = read_all(r, "param." + n.spec->hf[0].name);
    const double e = test::rel_error(p, want);
    EXPECT_LT(e, c.base == BaseFormat::nf4 ? 1e-3 : 1e-4) << n.spec->name << " after " << S << " steps (seed " << seed << ")";
  }
  EXPECT_EQ(base_before, base_after) << "the frozen base moved";

  // frugal's adapters, in PEFT's format, read by PEFT
  save_adapters(dir / "ours", model, ref + "/base");
  ASSERT_TRUE(test::run_reference("lora_reference.py", fmt::format("logits {} {} {} {}{}", ref + "/base", dir / "ours",
                                                                   dir / "x.safetensors", dir / "l.safetensors", nf4)));
  std::vector<int32_t> in(size_t(c.B) * c.T), tg(in.size());
  batch = 0;
  next(in.data(), tg.data());
  std::vector<float> logits;
  model.logits(in.data(), c.B, c.T, false, logits);
  EXPECT_TRUE(close(logits, read_all(SafeTensors(dir / "l.safetensors"), "logits"), 1e-5));
}

TEST(Lora, LlamaEveryModuleMatchesPeft) {
  run_lora_parity({"llama", 2, 4, 2, 32, 64, 96, 64, 2, 16, 4, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"});
}
TEST(Lora, LlamaDefaultTargetsMatchPeft) { run_lora_parity({"llama", 2, 4, 4, 32, 64, 96, 64, 2, 16, 8, "q_proj,v_proj"}); }
// QLoRA: frugal's NF4 base, quantized per transformers tensor and dequantized panel by panel in
// the GEMMs, against PEFT over the weights bitsandbytes' quantize_4bit + dequantize_4bit give
TEST(Lora, QloraNf4BaseMatchesPeftOverBitsandbytes) {
  run_lora_parity({"llama", 2, 4, 2, 128, 256, 96, 64, 2, 16, 4, "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                   BaseFormat::nf4});
}
// A QLoRA base as transformers saves it from a bitsandbytes 4-bit model (the pre-quantized
// checkpoints on the hub): into an nf4 base its codes, absmax codes, absmax2 and offset go as they
// are (byte for byte), into an fp32 base dequantized; both compute transformers' logits over
// bitsandbytes' dequantized weights (the adapters' B is zero: they add nothing yet).
TEST(Lora, BitsandbytesCheckpointLoads) {
  test::TempDir dir;
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(fmt::format("seed {} (FRUGAL_TEST_SEED reproduces it)", seed));
  const std::string ref = dir / "ref";
  ASSERT_TRUE(test::run_reference("lora_reference.py", fmt::format("save {} --family llama --layers 2 --heads 4 --kv-heads 2 "
                                                                   "--hidden 64 --ffn 96 --vocab 64 --context 32 --rank 4 --seed {}",
                                                                   ref, seed % 100000)));
  const int B = 2, T = 16;
  std::vector<int32_t> tokens(size_t(B) * (T + 1));
  Rng rng(seed + 1);
  for (auto& t : tokens) t = int32_t(rng.below(64));
  save_safetensors(dir / "x.safetensors", {{"tokens", "I32", {1, B, T + 1}, tokens.data()}}, {});
  ASSERT_TRUE(test::run_reference("lora_reference.py", fmt::format("bnb {} {} {}", ref, dir / "x.safetensors", dir / "l.safetensors")));
  const std::vector<float> want = read_all(SafeTensors(dir / "l.safetensors"), "logits");
  SafeTensors file(ref + "/bnb/model.safetensors");
  std::vector<int32_t> in(size_t(B) * T), tg(in.size());
  test::batch_of(tokens, 0, B, T, in.data(), tg.data(), 0);
  for (BaseFormat base : {BaseFormat::nf4, BaseFormat::compute}) {
    ModelConfig cfg = read_hf_config(ref + "/bnb/config.json");
    cfg.lora.rank = 4;
    cfg.lora.targets = {"q_proj", "v_proj"};
    cfg.lora.base = base;
    Model model(cfg, cpu_backend(), DType::f32);
    model.allocate(B, T);
    model.init(1);
    load_model(ref + "/bnb", model);
    int parts = 0;
    for (const Unit& u : model.units())
      for (size_t k = 0; k < u.qv.size(); k++)
        for (size_t j = 0; j < u.qv[k].size(); j++, parts++) {
          const QuantView& v = u.qv[k][j];
          const std::string name = u.specs[k].hf[j].name;
          std::vector<uint8_t> q(size_t((v.n() + 1) / 2)), absmax(size_t((v.n() + 63) / 64));
          file.read(name, "U8", {int64_t(q.size()), 1}, q.data());
          file.read(name + ".absmax", "U8", {int64_t(absmax.size())}, absmax.data());
          EXPECT_TRUE(std::equal(q.begin(), q.end(), v.q)) << name;
          EXPECT_TRUE(std::equal(absmax.begin(), absmax.end(), v.absmax)) << name;
        }
    EXPECT_EQ(parts, base == BaseFormat::nf4 ? 2 * 7 : 0);
    std::vector<float> logits;
    model.logits(in.data(), B, T, false, logits);
    EXPECT_TRUE(test::all_close(logits, want, 1e-4, 1e-5)) << base_format_name(base);
  }
}

TEST(Lora, Gpt2EveryModuleMatchesPeft) { run_lora_parity({"gpt2", 2, 4, 4, 32, 128, 96, 64, 2, 16, 4, "c_attn,c_proj,c_fc"}); }

// A rank above a target's width (its adapters would hold more than the weight) is one line naming
// the module; at the width it trains.
TEST(Lora, RankAboveATargetsWidthIsRefused) {
  ModelConfig cfg = model_preset("llama-tiny", "test");
  cfg.lora.targets = {"k_proj", "down_proj"};
  const int64_t width = int64_t(cfg.kv_heads()) * cfg.head_size();  // k_proj: kv_heads x head_size rows
  cfg.lora.rank = int(width);
  cfg.validate("test");
  cfg.lora.rank = int(width) + 1;
  test::expect_user_error([&] { cfg.validate("test"); },
                          fmt::format("test: lora.rank = {} is above the width of model.layers.0.self_attn.k_proj ({} x {}): "
                                      "expected at most {}", width + 1, width, cfg.n_embd, width));
}

// LoRA's dropout (PEFT's masks are torch's random draws, so not comparable): with the masks of
// one seed fixed, the adapters' gradients are those of the loss, by central differences on
// entries of every adapter matrix (fp32, a tiny llama, p = 0.3).
TEST(Lora, DropoutGradientsAreTheLossGradientsUnderItsMasks) {
  ModelConfig cfg = model_preset("llama-tiny", "test");
  cfg.lora.rank = 4;
  cfg.lora.targets = {"q_proj", "o_proj", "up_proj", "down_proj"};
  cfg.lora.dropout = 0.3;
  const int B = 2, T = 16;
  Model m(cfg, cpu_backend(), DType::f32);
  m.init(5);
  for (auto& n : m.named_params())  // B nonzero, so that A has a gradient
    if (n.spec->lora_b) {
      std::vector<float> v = test::randn(size_t(n.spec->numel), 0.05f, uint64_t(n.spec->offset));
      m.write_param(n, v.data());
    }
  m.allocate(B, T);
  std::vector<int32_t> in(B * T), tg(B * T);
  Rng rng(test::test_seed());
  for (int i = 0; i < B * T; i++) { in[i] = int32_t(rng.below(257)); tg[i] = int32_t(rng.below(257)); }
  m.set_dropout(true, 77);
  m.zero_grads();
  m.embed_forward(in.data(), B, T);
  for (int l = 0; l < cfg.n_layer; l++) m.block_forward(l, B, T);
  m.head(tg.data(), B, T, 1.0f / (B * T));
  for (int l = cfg.n_layer - 1; l >= 0; l--) m.block_backward(l, B, T);
  int checked = 0;
  for (auto& n : m.named_params()) {
    if (n.spec->site < 0) continue;
    for (int64_t i : {int64_t(0), n.spec->numel / 2 + 1, n.spec->numel - 1}) {
      const float keep = n.data[i], h = 1e-2f;
      n.data[i] = keep + h;
      const double up = m.forward_loss(in.data(), tg.data(), B, T);
      n.data[i] = keep - h;
      const double down = m.forward_loss(in.data(), tg.data(), B, T);
      n.data[i] = keep;
      const double fd = (up - down) / (2 * h);
      // the difference quotient's floor: the fp32 loss's rounding (4 ulps of it) over 2h
      const double floor = 4 * std::numeric_limits<float>::epsilon() * std::abs(up) / (2 * h);
      EXPECT_NEAR(n.grad[i], fd, 2e-2 * std::abs(fd) + floor) << n.spec->name << " [" << i << "]";
      checked++;
    }
  }
  EXPECT_EQ(checked, 2 * 4 * cfg.n_layer * 3);
  // the masks matter: without dropout the gradient differs
  std::vector<float> with(m.named_params().back().grad, m.named_params().back().grad + m.named_params().back().spec->numel);
  m.set_dropout(false);
  m.zero_grads();
  m.embed_forward(in.data(), B, T);
  for (int l = 0; l < cfg.n_layer; l++) m.block_forward(l, B, T);
  m.head(tg.data(), B, T, 1.0f / (B * T));
  for (int l = cfg.n_layer - 1; l >= 0; l--) m.block_backward(l, B, T);
  std::vector<float> without(m.named_params().back().grad, m.named_params().back().grad + m.named_params().back().spec->numel);
  EXPECT_GT(test::rel_error(with, without), 0.05);
}

}  // namespace
}  // namespace frugal
