// The step and the Trainer: schedule, accumulation, learning on the default corpus, determinism.
#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "support/support.h"
#include "train/train.h"

namespace frugal {
namespace {

TEST(Schedule, WarmupThenCosineToTheFloor) {
  TrainSettings t;
  t.lr = 1e-3;
  t.min_lr = 1e-4;
  t.warmup_steps = 10;
  t.steps = 110;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1e-4);
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1e-3);
  EXPECT_DOUBLE_EQ(lr_at(t, 10), 1e-3);
  EXPECT_NEAR(lr_at(t, 60), 5.5e-4, 1e-12);  // half way down the cosine
  EXPECT_NEAR(lr_at(t, 110), 1e-4, 1e-12);
  t.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 1e-3);
}

// Windows 0, 1, 2, ... of a fixed pseudo-random token stream.
struct Stream {
  int T;
  int64_t next_window = 0;
  void operator()(int32_t* in, int32_t* tg, int B) {
    for (int b = 0; b < B; b++) test::stream_window(next_window++, T, in + b * T, tg + b * T);
  }
};

TEST(Stepper, AccumulationEqualsOneBigBatch) {
  ModelConfig cfg{"custom", 2, 2, 32, 97, 16};
  TrainSettings big, small;
  big.seq_len = small.seq_len = 16;
  big.micro_batch = 8;
  small.micro_batch = 2;  // 4 micro-batches of 2 = one batch of 8
  big.steps = small.steps = 3;
  auto comm = make_local_comm();
  Model a(cfg, cpu_backend()), b(cfg, cpu_backend());
  a.init(1);
  b.init(1);
  Stepper sa(a, cpu_backend(), *comm, big, 1), sb(b, cpu_backend(), *comm, small, 4);
  Stream ra{16}, rb{16};
  for (int step = 0; step < 3; step++) {
    StepStats x = sa.step(step, [&](int32_t* in, int32_t* tg) { ra(in, tg, 8); });
    StepStats y = sb.step(step, [&](int32_t* in, int32_t* tg) { rb(in, tg, 2); });
    EXPECT_NEAR(x.loss, y.loss, 1e-5 * x.loss);
    EXPECT_NEAR(x.grad_norm, y.grad_norm, 1e-4 * x.grad_norm);
    EXPECT_EQ(x.tokens, y.tokens);
  }
  for (size_t u = 0; u < a.units().size(); u++) {
    std::vector<float> pa(a.units()[u].params.data(), a.units()[u].params.data() + a.units()[u].numel);
    std::vector<float> pb(b.units()[u].params.data(), b.units()[u].params.data() + b.units()[u].numel);
    EXPECT_LT(test::rel_error(pb, pa), 1e-5) << a.units()[u].name;
  }
}

// A copy of every master weight and AdamW moment, to compare bit for bit.
std::vector<float> snapshot(Model& m, Stepper& st) {
  std::vector<float> out;
  for (size_t u = 0; u < m.units().size(); u++) {  // ddp: one optimizer segment per unit
    Unit& unit = m.units()[u];
    for (const auto* buf : {&unit.params, &st.optimizer().m(u), &st.optimizer().v(u)})
      out.insert(out.end(), buf->data(), buf->data() + unit.numel);
  }
  return out;
}

struct Fp16Run {
  ModelConfig cfg{"custom", 2, 2, 32, 97, 16};
  TrainSettings t;
  PrecisionSettings p;
  std::unique_ptr<Comm> comm = make_local_comm();
  Stream data{16};
  Fp16Run(double scale, int window) {
    t.seq_len = 16;
    t.micro_batch = 4;
    t.steps = 10;
    t.warmup_steps = 0;
    p.compute = DType::f16;
    p.loss_scale = scale;
    p.loss_scale_window = window;
  }
  NextBatch next() { return [this](int32_t* in, int32_t* tg) { data(in, tg, 4); }; }
};

TEST(LossScaler, OverflowSkipsTheStepLeavesStateBitIdenticalAndHalvesTheScale) {
  // At a scale of 2^40 the fp16 gradients overflow (fp16 tops out at 65504): a real overflow.
  Fp16Run r(0x1p40, 1000);
  Model m(r.cfg, cpu_backend(), DType::f16);
  m.init(3);
  Stepper st(m, cpu_backend(), *r.comm, r.t, 1, r.p);
  st.step(0, r.next());  // the first step overflows
  EXPECT_EQ(st.scaler().skipped_total, 1);
  auto before = snapshot(m, st);
  StepStats s = st.step(1, r.next());
  EXPECT_TRUE(s.skipped);
  EXPECT_EQ(s.loss_scale, 0x1p39);
  EXPECT_EQ(st.scaler().scale, 0x1p38);
  EXPECT_EQ(st.scaler().skipped_total, 2);
  EXPECT_EQ(snapshot(m, st), before);  // weights and AdamW moments untouched, bit for bit
  // It recovers by itself: the scale keeps halving until the gradients fit, then training goes on.
  int step = 2;
  while (st.step(step, r.next()).skipped) step++;
  EXPECT_LT(st.scaler().scale, 0x1p38);
  EXPECT_NE(snapshot(m, st), before);
}

TEST(LossScaler, ScaleDoublesAfterWindowCleanSteps) {
  Fp16Run r(1024.0, 2);
  Model m(r.cfg, cpu_backend(), DType::f16);
  m.init(3);
  Stepper st(m, cpu_backend(), *r.comm, r.t, 1, r.p);
  std::vector<double> scales;
  for (int step = 0; step < 5; step++) {
    StepStats s = st.step(step, r.next());
    EXPECT_FALSE(s.skipped);
    scales.push_back(s.loss_scale);
  }
  EXPECT_EQ(scales, (std::vector<double>{1024, 1024, 2048, 2048, 4096}));
}

// A batch whose targets are all masked out (instruction data's prompts) trains nothing: no loss,
// no update (weights and AdamW moments bit for bit); one counted target and it updates. evaluate
// over such batches is NaN, not a loss of 0.
TEST(Stepper, ABatchWithNoTargetTrainedOnIsNoUpdate) {
  ModelConfig cfg{"custom", 2, 2, 32, 97, 16};
  TrainSettings t;
  t.seq_len = 16;
  t.micro_batch = 2;
  t.steps = 4;
  t.warmup_steps = 0;
  auto comm = make_local_comm();
  Model m(cfg, cpu_backend());
  m.init(1);
  Stepper st(m, cpu_backend(), *comm, t, 2);
  Stream data{16};
  int keep = 16;  // targets left unmasked in each micro-batch
  auto next = [&](int32_t* in, int32_t* tg) {
    data(in, tg, 2);
    std::fill(tg + keep, tg + 2 * 16, -1);
  };
  st.step(0, next);  // AdamW moments that are not zero
  auto before = snapshot(m, st);
  keep = 0;
  StepStats s = st.step(1, next);
  EXPECT_EQ(s.targets, 0);
  EXPECT_EQ(snapshot(m, st), before);
  keep = 1;
  s = st.step(2, next);
  EXPECT_EQ(s.targets, 2);
  EXPECT_TRUE(std::isfinite(s.loss) && s.loss > 0);
  EXPECT_NE(snapshot(m, st), before);
  m.allocate(2, 16);
  test::TempDir d;
  std::vector<uint32_t> tokens(200, 5);
  write_shard(d / "t.bin", tokens);
  write_mask(mask_path(d / "t.bin"), std::vector<uint8_t>(200, 0));
  DataLoader loader({d / "t.bin"}, 97, 2, 16, 0, false);
  EXPECT_TRUE(std::isnan(evaluate([&](const int32_t* in, const int32_t* tg) { return m.forward_loss(in, tg, 2, 16); },
                                  loader, 2)));
}

TEST(LossScaler, CollapseToTheFloorIsAClearError) {
  Fp16Run r(4.0, 1000);
  r.p.loss_scale_min = 1.0;
  Model m(r.cfg, cpu_backend(), DType::f16);
  m.init(3);
  m.units()[1].p.qkv_w[5] = NAN;  // gradients are NaN at any scale
  m.sync_compute_weights();
  Stepper st(m, cpu_backend(), *r.comm, r.t, 1, r.p);
  EXPECT_TRUE(st.step(0, r.next()).skipped);  // 4 -> 2
  EXPECT_TRUE(st.step(1, r.next()).skipped);  // 2 -> 1
  test::expect_user_error([&] { st.step(2, r.next()); },
                          "gradients are not finite at the loss-scale floor precision.loss_scale_min = 1 after 3 skipped step(s) in a row");
  // In fp32 there is no scale to lower: the first non-finite gradient stops the run.
  Model f(r.cfg, cpu_backend());
  f.init(3);
  f.units()[1].p.qkv_w[5] = NAN;
  Stepper sf(f, cpu_backend(), *r.comm, r.t, 1);
  test::expect_user_error([&] { sf.step(0, r.next()); }, "gradients are not finite after 1 skipped step(s) in a row in fp32/bf16");
}

TEST(MemoryBudget, ChoosesTheLeastRecomputeThatFitsOrSaysTheSmallest) {
  RunConfig c = load_config("", {"model.preset=gpt2", "train.seq_len=1024", "train.micro_batch=4", "precision.compute=bf16"});
  auto need = [&](const char* name) {
    return estimate_memory(c.model, 4, 1024, DType::bf16, RecomputePolicy::parse(name, "t").per_block(12)).total();
  };
  c.memory.budget = int64_t(need("none"));
  EXPECT_EQ(choose_recompute(c).name(), "none");
  c.memory.budget = int64_t(need("none")) - 1;
  EXPECT_EQ(choose_recompute(c).name(), "selective");
  c.memory.budget = int64_t(need("every:2")) + 1;
  EXPECT_EQ(choose_recompute(c).name(), "every:2");
  c.memory.budget = int64_t(need("full"));
  EXPECT_EQ(choose_recompute(c).name(), "full");
  c.memory.budget = int64_t(need("full")) - 1;
  test::expect_user_error([&] { choose_recompute(c); }, "is below what any recompute policy needs: the smallest, full recompute, needs");
  // per rank under the strategy: zero3 on 4 ranks shards the model states, so less recompute fits
  c.dist.strategy = "zero3";
  c.memory.budget = int64_t(estimate_memory(c.model, 4, 1024, DType::bf16, RecomputePolicy::parse("none", "t").per_block(12),
                                            false, {Strategy::zero3, 4, DType::f32}).total());
  EXPECT_EQ(choose_recompute(c, 4).name(), "none");
  EXPECT_LT(c.memory.budget, int64_t(need("none")));  // which ddp on one rank would not fit
  RunConfig d = load_config("", {"memory.budget=16GiB", "memory.recompute=every:2"});
  EXPECT_EQ(d.memory.budget, int64_t(16) << 30);
  EXPECT_EQ(d.memory.recompute.name(), "every:2");
  EXPECT_EQ(load_config("", {"memory.budget=\"512 MiB\""}).memory.budget, int64_t(512) << 20);
  test::expect_user_error([] { load_config("", {"memory.budget=lots"}); }, "memory.budget: expected bytes or a size like \"16GiB\", got 'lots'");
}

std::vector<double> losses_of(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  return out;
}

class TrainOnKjv : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    prepare_corpus({}, *dir_ / "kjv", 20);
  }
  static void TearDownTestSuite() { delete dir_; }
  RunConfig config(const std::string& run, std::vector<std::string> extra) {
    std::vector<std::string> ov = {"model.preset=tiny", "train.seq_len=128", "train.micro_batch=8",
                                   "train.lr=3e-3", "train.warmup_steps=20", "train.eval_batches=8",
                                   "run.log_every=1000", "data.train=" + *dir_ / "kjv/train_*.bin",
                                   "data.val=" + *dir_ / "kjv/val_*.bin", "run.dir=" + *dir_ / run};
    ov.insert(ov.end(), extra.begin(), extra.end());
    return load_config("", ov);
  }
  static test::TempDir* dir_;
};
test::TempDir* TrainOnKjv::dir_ = nullptr;

TEST_F(TrainOnKjv, ValidationLossFallsBelow2_5Within300Steps) {
  // Byte-level: uniform is ln 257 = 5.55 nats and the unigram entropy of the text about 2.9;
  // below 2.5 the model must be using context.
  auto comm = make_local_comm();
  train(config("learn", {"train.steps=300", "train.eval_every=0"}), *comm);
  std::ifstream in(*dir_ / "learn/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line)) last = line;
  auto rec = nlohmann::json::parse(last);
  EXPECT_EQ(rec["step"], 300);
  EXPECT_LT(rec["val_loss"].get<double>(), 2.5);
  EXPECT_GT(rec["mem_peak"]["activations"].get<double>(), 0);
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "learn/model.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "learn/config.toml"));
}

TEST_F(TrainOnKjv, Bf16AndFp16ReachTheValidationLossOfFp32Within2Percent) {
  auto comm = make_local_comm();
  auto final_val = [&](const std::string& run) {
    std::ifstream in(*dir_ / (run + "/metrics.jsonl"));
    std::string line, last;
    while (std::getline(in, line)) last = line;
    return nlohmann::json::parse(last)["val_loss"].get<double>();
  };
  for (const char* p : {"fp32", "bf16", "fp16"})
    train(config(std::string("prec_") + p, {"train.steps=200", "train.eval_every=0", std::string("precision.compute=") + p}), *comm);
  double f32 = final_val("prec_fp32");
  EXPECT_LT(f32, 2.7);  // it learned
  EXPECT_NEAR(final_val("prec_bf16"), f32, 0.02 * f32);
  EXPECT_NEAR(final_val("prec_fp16"), f32, 0.02 * f32);
}

TEST_F(TrainOnKjv, SameSeedGivesBitIdenticalLossesAndWeights) {
  auto comm = make_local_comm();
  train(config("a", {"train.steps=12", "train.batch_tokens=2048"}), *comm);
  EXPECT_EQ(MemoryPool::get().kept_bytes(), 0u);  // a process that goes on after a run keeps none of its blocks
  train(config("b", {"train.steps=12", "train.batch_tokens=2048"}), *comm);
  train(config("c", {"train.steps=12", "train.batch_tokens=2048", "train.seed=99"}), *comm);
  auto a = losses_of(*dir_ / "a/metrics.jsonl"), b = losses_of(*dir_ / "b/metrics.jsonl"),
       c = losses_of(*dir_ / "c/metrics.jsonl");
  ASSERT_EQ(a.size(), 12u);
  EXPECT_EQ(a, b);  // bit-identical (JSON keeps every digit of the float)
  EXPECT_NE(a, c);
  auto slurp = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(slurp(*dir_ / "a/model.safetensors"), slurp(*dir_ / "b/model.safetensors"));
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Resuming from a checkpoint continues bit-exactly: 8 steps with checkpoints every 2 (the
// newest 3 kept), the last two removed as if the run had died after step 4, then resume: every
// loss and the final weights equal the uninterrupted run's, in fp32, bf16 and fp16 (with a short
// loss-scale window, so the scaler's state changes across the checkpoint).
TEST_F(TrainOnKjv, ResumeContinuesBitExactlyInEveryPrecision) {
  auto comm = make_local_comm();
  for (const char* p : {"fp32", "bf16", "fp16"}) {
    std::vector<std::string> common = {"train.steps=8", "train.eval_batches=2", std::string("precision.compute=") + p,
                                       "precision.loss_scale_window=3"};
    auto with = [&](std::vector<std::string> extra) { extra.insert(extra.end(), common.begin(), common.end()); return extra; };
    const std::string u = std::string("whole_") + p, r = std::string("resumed_") + p;
    train(config(u, with({"run.checkpoint_every=0"})), *comm);
    train(config(r, with({"run.checkpoint_every=2", "run.keep_checkpoints=3"})), *comm);
    for (int s : {2, 4, 6, 8}) {
      EXPECT_EQ(std::filesystem::exists(*dir_ / (r + "/ckpt-" + std::to_string(s))), s >= 4) << p << " ckpt-" << s;
    }
    EXPECT_FALSE(std::filesystem::exists(*dir_ / u + "/ckpt-8"));
    EXPECT_EQ(latest_checkpoint(*dir_ / r), *dir_ / r + "/ckpt-8");
    std::filesystem::remove_all(*dir_ / r + "/ckpt-8");
    std::filesystem::remove_all(*dir_ / r + "/ckpt-6");
    train(config(r, with({"run.checkpoint_every=2", "run.keep_checkpoints=3"})), *comm, true);
    auto a = losses_of(*dir_ / u + "/metrics.jsonl"), b = losses_of(*dir_ / r + "/metrics.jsonl");
    ASSERT_EQ(a.size(), 8u);
    EXPECT_EQ(a, b) << p;  // bit-identical
    EXPECT_EQ(slurp(*dir_ / u + "/model.safetensors"), slurp(*dir_ / r + "/model.safetensors")) << p;
  }
}

// Bad resumes are one clear error and leave the run directory as it was.
TEST_F(TrainOnKjv, BadResumeIsAClearErrorAndOverwritesNothing) {
  auto comm = make_local_comm();
  const std::string r = *dir_ / "bad";
  std::vector<std::string> base = {"train.steps=4", "run.checkpoint_every=2", "train.eval_batches=1"};
  auto with = [&](std::vector<std::string> extra) { extra.insert(extra.end(), base.begin(), base.end()); return config("bad", extra); };
  test::expect_user_error([&] { train(with({}), *comm, true); }, "bad: no checkpoint to resume from");
  train(with({}), *comm);
  auto files = [&] {
    std::map<std::string, std::string> out;
    for (auto& e : std::filesystem::recursive_directory_iterator(r))
      if (e.is_regular_file()) out[e.path().string()] = slurp(e.path().string());
    return out;
  };
  const auto before = files();
  test::expect_user_error([&] { train(with({"model.n_layer=3", "model.n_embd=96", "model.n_head=4"}), *comm, true); },
                          "the configuration changes the model shape of checkpoint " + r + "/ckpt-4: model.n_layer 2 -> 3, model.n_embd 64 -> 96 (resume");
  test::expect_user_error([&] { train(with({"train.batch_tokens=2048"}), *comm, true); },
                          "ckpt-4/state.json: the checkpoint was trained with 1024 tokens per step, this run would take 2048 on 1 rank(s)");
  std::string state = slurp(r + "/ckpt-4/state.json");
  std::string newer = state;
  newer.replace(newer.find("\"format_version\": 1"), 19, "\"format_version\": 2");
  std::ofstream(r + "/ckpt-4/state.json") << newer;
  test::expect_user_error([&] { train(with({}), *comm, true); }, "ckpt-4/state.json: format_version 2 is newer than this frugal reads (1)");
  std::ofstream(r + "/ckpt-4/state.json") << state;
  // a rank file's metadata edited: named by key, not an exception out of the parser
  const std::string rank = slurp(r + "/ckpt-4/rank-0.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, rank.data(), 8);
  for (auto [key, value, message] : {std::tuple{"u0.numel", "x", "metadata 'u0.numel' is 'x', expected an integer"},
                                     std::tuple{"u0.ranges", "-3-4", "metadata u0.ranges = '-3-4': expected lo-hi,..."}}) {
    nlohmann::json h = nlohmann::json::parse(rank.substr(8, n));
    h["__metadata__"][key] = value;
    const std::string header = h.dump();
    const uint64_t len = header.size();
    std::ofstream(r + "/ckpt-4/rank-0.safetensors", std::ios::binary)
        << std::string(reinterpret_cast<const char*>(&len), 8) << header << rank.substr(8 + n);
    test::expect_user_error([&] { train(config("bad", {"train.steps=6", "run.checkpoint_every=2", "train.eval_batches=1"}), *comm, true); },
                            std::string("ckpt-4/rank-0.safetensors: ") + message);
  }
  std::ofstream(r + "/ckpt-4/rank-0.safetensors", std::ios::binary) << rank;
  std::filesystem::rename(r + "/ckpt-4/rank-0.safetensors", *dir_ / "rank-0.away");
  test::expect_user_error([&] { train(with({}), *comm, true); }, "ckpt-4/rank-0.safetensors: missing (the checkpoint was written by 1 rank file(s)");
  std::filesystem::rename(*dir_ / "rank-0.away", r + "/ckpt-4/rank-0.safetensors");
  EXPECT_EQ(files(), before);  // nothing was written
}

}  // namespace
}  // namespace frugal
