// The frugal command line, end to end: bad input gets one clear line and a non-zero exit;
// train, eval and sample work together on a tiny run.
#include <sys/wait.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "io/io.h"
#include "support/support.h"

namespace frugal {
namespace {

struct Result { int code; std::string out; };

Result run(const std::string& args, const std::string& cwd) {
  std::string cmd = "cd " + cwd + " && OMP_NUM_THREADS=2 " + FRUGAL_BINARY + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir;
    std::string text;
    for (int i = 0; i < 3000; i++) text += "In the beginning was the word, and the word was " + std::to_string(i % 7) + ".\n";
    std::ofstream(*dir_ / "corpus.txt") << text;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string d() { return dir_->path.string(); }
  // the error must be exactly one line, start with "frugal: error:" and contain needle
  static void expect_error(const std::string& args, const std::string& needle) {
    Result r = run(args, d());
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out;
    EXPECT_EQ(r.out.rfind("frugal: error: ", 0), 0u) << r.out;
    EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << r.out;
  }
  static test::TempDir* dir_;
};
test::TempDir* Cli::dir_ = nullptr;

const char* kTiny = "--model.preset=tiny --train.seq_len=64 --train.micro_batch=4 --data.train=data/train_*.bin --data.val=data/val_*.bin";

TEST_F(Cli, PrepareTrainEvalSample) {
  Result p = run("prepare corpus.txt --out data --val-every 5", d());
  ASSERT_EQ(p.code, 0) << p.out;
  Result t = run(std::string("train ") + kTiny + " --train.steps=30 --train.eval_every=10 --train.eval_batches=4 --run.dir=run1", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("step    30/30"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("peak memory: params"), std::string::npos) << t.out;
  // one metrics record per step, validation every 10 steps
  std::ifstream in(*dir_ / "run1/metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> recs;
  while (std::getline(in, line)) recs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(recs.size(), 30u);
  for (auto& key : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_peak"})
    EXPECT_TRUE(recs[0].contains(key)) << key;
  EXPECT_TRUE(recs[9].contains("val_loss"));
  EXPECT_FALSE(recs[10].contains("val_loss"));
  double val = recs.back()["val_loss"].get<double>();
  // eval over the same 4 validation batches reproduces the trainer's number
  Result e = run("eval --run run1 --batches 4", d());
  ASSERT_EQ(e.code, 0) << e.out;
  double loss = std::stod(e.out.substr(e.out.find("loss ") + 5));
  EXPECT_NEAR(loss, val, 1e-4);
  // sampling is seeded: the same seed gives the same text, another seed another text
  Result s1 = run("sample --run run1 --prompt 'In the' --tokens 40 --seed 3", d());
  Result s2 = run("sample --run run1 --prompt 'In the' --tokens 40 --seed 3", d());
  Result s3 = run("sample --run run1 --prompt 'In the' --tokens 40 --seed 4 --temperature 0", d());
  ASSERT_EQ(s1.code, 0) << s1.out;
  EXPECT_EQ(s1.out, s2.out);
  EXPECT_EQ(s1.out.rfind("In the", 0), 0u);
  EXPECT_GE(s1.out.size(), 40u + 6u);
  EXPECT_NE(s1.out, s3.out);
}

// A run's weights exported for transformers load in the PyTorch twin (its own safetensors
// reader, GPT2LMHeadModel names, config.json) and give frugal's logits within 1e-4 relative;
// --init-from starts a run from them exactly; a shape that does not fit is one clear line.
TEST_F(Cli, ExportLoadsInTheTwinAndInitFromStartsFromIt) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  Result t = run(std::string("train ") + kTiny + " --train.steps=6 --train.eval_batches=1 --run.dir=hf", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("checkpoint: hf/ckpt-6 written"), std::string::npos) << t.out;  // one at the end
  Result x = run("export hf --out hf_export", d());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("hf/ckpt-6/model.safetensors -> hf_export/model.safetensors"), std::string::npos) << x.out;
  auto cfg = nlohmann::json::parse(std::ifstream(*dir_ / "hf_export/config.json"));
  EXPECT_EQ(cfg["model_type"], "gpt2");
  EXPECT_EQ(cfg["architectures"][0], "GPT2LMHeadModel");
  EXPECT_EQ(cfg["vocab_size"], 257);
  EXPECT_EQ(cfg["n_positions"], 128);
  EXPECT_EQ(cfg["n_layer"], 2);
  EXPECT_EQ(cfg["activation_function"], "gelu_new");

  GptConfig gc = read_model_config(*dir_ / "hf/model.safetensors");
  Gpt model(gc, cpu_backend());
  load_model(*dir_ / "hf/model.safetensors", model);
  const int B = 2, T = 50;
  std::vector<int32_t> tokens(B * T);
  for (int i = 0; i < B * T; i++) tokens[i] = int32_t((i * 37 + 11) % 257);
  save_safetensors(*dir_ / "tok.safetensors", {{"tokens", "I32", {B, T}, tokens.data()}}, {});
  std::string cmd = fmt::format("/usr/bin/python3 {}/tests/reference/gpt2_reference.py --hf {} --batches {} --out {}",
                                FRUGAL_SOURCE_DIR, *dir_ / "hf_export", *dir_ / "tok.safetensors", *dir_ / "logits.safetensors");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<float> ref(size_t(B) * T * 257), ours;
  SafeTensors(*dir_ / "logits.safetensors").read("logits", "F32", {B, T, 257}, ref.data());
  model.allocate(B, T);
  model.logits(tokens.data(), B, T, false, ours);
  EXPECT_LT(test::rel_error(ours, ref), 1e-4);

  // lr 0: one step leaves the weights as they came
  Result f = run(std::string("train ") + kTiny + " --train.steps=1 --train.lr=0 --train.min_lr=0 --train.eval_batches=1 "
                 "--run.dir=ft --init-from hf_export/model.safetensors", d());
  ASSERT_EQ(f.code, 0) << f.out;
  auto slurp = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(slurp(*dir_ / "ft/model.safetensors"), slurp(*dir_ / "hf_export/model.safetensors"));
  expect_error(std::string("train ") + kTiny + " --model.n_embd=32 --run.dir=ft2 --init-from hf_export/model.safetensors",
               "hf_export/model.safetensors: tensor 'transformer.wte.weight' is F32 [257, 64], expected F32 [257, 32]");
  expect_error("train --resume hf --model.n_layer=3",
               "the configuration changes the model shape of checkpoint hf/ckpt-6: model.n_layer 2 -> 3");
}

// The other tokenizers: GPT-2's BPE and a SentencePiece vocabulary trained by prepare; train
// needs the model's vocabulary to match, sample decodes with the data's tokenizer.
TEST_F(Cli, PrepareTrainSampleWithGpt2AndTrainedTokenizers) {
  std::string gpt2_dir = std::string(FRUGAL_SOURCE_DIR) + "/data/gpt2";
  if (!std::filesystem::exists(gpt2_dir + "/vocab.bpe")) GTEST_SKIP() << gpt2_dir << " is missing (scripts/setup.sh)";
  Result p = run("prepare corpus.txt --out gdata --val-every 5 --tokenizer gpt2 --gpt2-dir " + gpt2_dir, d());
  ASSERT_EQ(p.code, 0) << p.out;
  std::string data = " --data.train=gdata/train_*.bin --data.val=gdata/val_*.bin --train.steps=2 --train.eval_every=0 --train.eval_batches=1";
  std::string tiny = "--model.preset=tiny --train.seq_len=64 --train.micro_batch=4";
  expect_error("train " + tiny + data, "the shards' tokenizer, gpt2, has 50257 ids: set model.vocab_size = 50257");
  Result t = run("train " + tiny + data + " --model.vocab_size=50257 --run.dir=grun", d());
  ASSERT_EQ(t.code, 0) << t.out;
  Result s = run("sample --run grun --prompt 'In the beginning' --tokens 5 --seed 3", d());
  ASSERT_EQ(s.code, 0) << s.out;
  EXPECT_EQ(s.out.rfind("In the beginning", 0), 0u) << s.out;
  // a model whose vocabulary is not the data's tokenizer's cannot sample
  Result t2 = run("train " + tiny + data + " --model.vocab_size=50304 --run.dir=grun2", d());
  ASSERT_EQ(t2.code, 0) << t2.out;
  expect_error("sample --run grun2", "grun2/model.safetensors: vocab_size 50304, but the gpt2 tokenizer of its data (gdata) has 50257");

  Result sp = run("prepare corpus.txt --out sdata --val-every 5 --train-tokenizer --vocab-size 286 --model-type bpe", d());
  if (sp.out.find("built without SentencePiece") != std::string::npos) GTEST_SKIP() << sp.out;
  ASSERT_EQ(sp.code, 0) << sp.out;
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "sdata/tokenizer.model"));
  Result ts = run("train " + tiny + " --data.train=sdata/train_*.bin --data.val=sdata/val_*.bin --train.steps=2 --train.eval_every=0 --train.eval_batches=1 --model.vocab_size=286 --run.dir=srun", d());
  ASSERT_EQ(ts.code, 0) << ts.out;
  Result ss = run("sample --run srun --prompt 'In the' --tokens 5", d());
  ASSERT_EQ(ss.code, 0) << ss.out;
  EXPECT_EQ(ss.out.rfind("In the", 0), 0u) << ss.out;
  expect_error("prepare corpus.txt --out sdata2 --train-tokenizer --vocab-size 100", "--vocab-size: expected at least 260");
  expect_error("prepare corpus.txt --out sdata2 --train-tokenizer --vocab-size 5000 --model-type unigram",
               "--vocab-size 5000: SentencePiece training failed");  // more pieces than the corpus has
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "sdata2/train_000.bin"));
}

TEST_F(Cli, BadInputIsOneClearLine) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  std::ofstream(*dir_ / "bad.toml") << "[train]\nlearning_rate = 1\n";
  expect_error("train bad.toml", "bad.toml: unknown key train.learning_rate");
  expect_error("train --train.stepz=3", "--train.stepz: unknown key train.stepz");
  expect_error("train --model.preset=gpt5", "unknown model preset 'gpt5'");
  expect_error("train --memory.recompute=most", "memory.recompute: expected none, selective, full or every:K");
  expect_error(std::string("train ") + kTiny + " --memory.budget=1MiB", "memory.budget = 1.0 MiB is below what any recompute policy needs");
  expect_error("train --precision.compute=half", "precision.compute: expected one of fp32, bf16, fp16, got 'half'");
  expect_error(std::string("train ") + kTiny + " --train.seq_len=1000", "train.seq_len = 1000 is above the model's context of 128");
  // a data file with a wrong header, a truncated one, token ids beyond the vocabulary
  std::ofstream(*dir_ / "junk.bin") << std::string(2000, 'x');
  expect_error(std::string("train ") + kTiny + " --data.train=junk.bin", "junk.bin: bad header");
  std::filesystem::copy_file(*dir_ / "data/val_000.bin", *dir_ / "trunc.bin", std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(*dir_ / "trunc.bin", 3000);
  expect_error(std::string("train ") + kTiny + " --data.train=trunc.bin", "trunc.bin: header says");
  expect_error(std::string("train ") + kTiny + " --model.vocab_size=100", "expected ids below model.vocab_size = 100");
  // an unwritable run directory: nothing is written
  std::ofstream(*dir_ / "afile") << "x";
  expect_error(std::string("train ") + kTiny + " --run.dir=afile/run", "afile/run: cannot create the run directory");
  expect_error("eval --run nowhere", "nowhere/config.toml");
  expect_error("sample --run nowhere", "nowhere/model.safetensors: cannot open");
}

}  // namespace
}  // namespace frugal
