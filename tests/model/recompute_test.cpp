// Activation checkpointing: every recompute policy gives the gradients of `none`, bit for bit
// (documents masked apart too),
// and the MemoryPool's measured activation bytes match the closed forms of docs/memory.md.
#include "data/data.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

const char* kPolicies[] = {"none", "selective", "every:2", "every:3", "full"};  // every:k mixes full and selective

// A tiny llama: grouped queries, q/k/v biases, an untied head.
const ModelConfig kLlama{"custom", 4, 4, 48, 301, 80, Family::llama, 2, 112, true, false, 1e-5, 10000};

// The same under LoRA on every module (an int8 or nf4 base quantizes the blocks), and GPT-2 with
// every module adapted.
ModelConfig with_lora(ModelConfig c, BaseFormat base) {
  c.lora.rank = 4;
  c.lora.targets = c.family == Family::llama
                       ? std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
                       : std::vector<std::string>{"c_attn", "c_proj", "c_fc"};
  c.lora.base = base;
  return c;
}
ModelConfig with_dropout(ModelConfig c) {  // its masks redrawn alike in a recompute
  c.lora.dropout = 0.1;
  return c;
}

TEST(Recompute, EveryPolicyGivesBitIdenticalGradients) {
  const ModelConfig gpt2{"custom", 4, 3, 48, 301, 80};
  struct Case { ModelConfig cfg; int32_t sep = -1; bool after = false; };  // documents masked apart: cut at sep
  const Case cases[] = {{gpt2}, {kLlama}, {gpt2, 3, false}, {kLlama, 3, true}, {with_lora(gpt2, BaseFormat::compute)},
                        {with_lora(kLlama, BaseFormat::nf4)}, {with_dropout(with_lora(kLlama, BaseFormat::compute))}};
  for (const auto& [cfg, sep, after] : cases)
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    std::vector<std::vector<float>> ref;
    float ref_loss = 0;
    for (const char* name : kPolicies) {
      Model m(cfg, cpu_backend(), dt);
      m.init(11);
      m.set_documents(sep, after);
      TrainSettings t;
      t.seq_len = 70;  // not a multiple of the attention tile
      t.micro_batch = 2;
      PrecisionSettings p;
      p.compute = dt;
      auto comm = make_local_comm();
      Stepper st(m, cpu_backend(), *comm, t, 2, p, RecomputePolicy::parse(name, "test").per_block(4));
      Rng rng(5);
      float loss = st.forward_backward([&](int32_t* in, int32_t* tg) {
        for (int i = 0; i < 140; i++) { in[i] = int32_t(rng.below(301)); tg[i] = int32_t(rng.below(301)); }
        if (sep >= 0) {  // documents of 1 to 23 tokens
          for (int i = 0; i < 140; i += 1 + int(rng.below(23))) in[i] = sep;
          if (after) mask_document_starts(in, tg, 140, sep);
        }
      });
      std::vector<std::vector<float>> grads;
      for (auto& u : m.units())
        if (!u.frozen) grads.emplace_back(u.grads.data(), u.grads.data() + u.numel);
      if (ref.empty()) {
        ref = grads;
        ref_loss = loss;
        continue;
      }
      EXPECT_EQ(loss, ref_loss) << name << " " << dtype_name(dt) << " " << family_name(cfg.family);
      for (size_t u = 0; u < ref.size(); u++)
        EXPECT_EQ(0, std::memcmp(grads[u].data(), ref[u].data(), ref[u].size() * 4))
            << name << " " << dtype_name(dt) << " " << family_name(cfg.family) << " unit " << u << " lora " << cfg.lora.rank
            << " documents " << (sep >= 0);
    }
  }
}

TEST(Recompute, MeasuredBytesMatchTheFormulaForEveryPolicyShapeAndDtype) {
  struct Shape { ModelConfig cfg; int B, T; };
  const Shape shapes[] = {{{"custom", 4, 4, 64, 257, 128}, 4, 128},
                          {{"custom", 6, 3, 96, 1000, 256}, 2, 200},
                          {{"custom", 3, 2, 32, 50257, 64}, 8, 64},
                          {kLlama, 2, 70},
                          {{"custom", 3, 6, 96, 1000, 256, Family::llama, 2, 256, false, true, 1e-5, 10000}, 2, 200},
                          {with_lora({"custom", 4, 4, 64, 257, 128}, BaseFormat::compute), 4, 128},
                          {with_lora(kLlama, BaseFormat::compute), 2, 70},
                          {with_lora(kLlama, BaseFormat::nf4), 2, 70},
                          {with_dropout(with_lora(kLlama, BaseFormat::nf4)), 2, 70},
                          {with_lora({"custom", 3, 6, 96, 1000, 256, Family::llama, 2, 256, false, true, 1e-5, 10000},
                                     BaseFormat::int8), 2, 200}};
  for (auto& s : shapes)
    for (DType dt : {DType::f32, DType::bf16})
      for (const char* name : kPolicies) {
        auto plan = RecomputePolicy::parse(name, "test").per_block(s.cfg.n_layer);
        MemoryEstimate predicted = estimate_memory(s.cfg, s.B, s.T, dt, plan);
        auto& pool = MemoryPool::get();
        MemStats before = pool.stats();
        {
          Model m(s.cfg, cpu_backend(), dt);
          m.allocate(s.B, s.T, plan);
          for (Mem c : {Mem::params, Mem::grads, Mem::activations, Mem::workspace}) {
            double measured = double(pool.stats().current[int(c)] - before.current[int(c)]);
            double want = double(predicted.bytes[int(c)]);
            EXPECT_EQ(measured, want) << name << " " << dtype_name(dt) << " " << mem_name(c) << " L" << s.cfg.n_layer
                                                     << " " << family_name(s.cfg.family) << " lora " << s.cfg.lora.rank
                                                     << " " << base_format_name(s.cfg.lora.base);
          }
        }
      }
}

TEST(Recompute, PeakOrderingOnGpt2) {
  // gpt2 (124M) at T=1024, B=4, bf16: allocation only (zero-filled), no step.
  ModelConfig cfg = model_preset("gpt2", "test");
  Model m(cfg, cpu_backend(), DType::bf16);
  std::vector<size_t> acts;
  for (const char* name : {"none", "selective", "every:2", "full"}) {
    size_t base = MemoryPool::get().stats().current[int(Mem::activations)];
    m.allocate(4, 1024, RecomputePolicy::parse(name, "test").per_block(12));
    acts.push_back(MemoryPool::get().stats().current[int(Mem::activations)] - base);
    m.allocate(1, 1);  // release before the next policy
  }
  EXPECT_GT(acts[0], acts[1]);
  EXPECT_GT(acts[1], acts[2]);
  EXPECT_GT(acts[2], acts[3]);
  // the targets, in bytes: selective at least 40 % and full at least 75 % below none
  EXPECT_LE(double(acts[1]), 0.60 * double(acts[0]));
  EXPECT_LE(double(acts[3]), 0.25 * double(acts[0]));
}

TEST(Recompute, PolicyNamesAndBadInput) {
  EXPECT_EQ(RecomputePolicy::parse("every:3", "t").name(), "every:3");
  auto p = RecomputePolicy::parse("every:2", "t").per_block(5);
  EXPECT_EQ(p, (std::vector<Recompute>{Recompute::full, Recompute::selective, Recompute::full,
                                       Recompute::selective, Recompute::full}));
  test::expect_user_error([] { RecomputePolicy::parse("some", "c.toml"); },
                          "c.toml: memory.recompute: expected none, selective, full or every:K (K >= 1), got 'some'");
  test::expect_user_error([] { RecomputePolicy::parse("every:0", "c.toml"); }, "got 'every:0'");
}

}  // namespace
}  // namespace frugal
