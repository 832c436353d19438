// The frugal command line, end to end: bad input gets one clear line and a non-zero exit;
// train, eval and sample work together on a tiny run.
#include <sys/wait.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/data.h"
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
  expect_error("train --device.backend=gpu", "device.backend: expected cpu or cuda, got 'gpu'");
  // cuda where it cannot run (a build without it, or no usable GPU): one line saying why
  Result cuda = run(std::string("train ") + kTiny + " --train.steps=1 --device.backend=cuda --run.dir=cuda_run", d());
  if (cuda.code != 0) {
    EXPECT_EQ(cuda.code, 2) << cuda.out;
    EXPECT_EQ(cuda.out.rfind("frugal: error: device.backend = cuda: ", 0), 0u) << cuda.out;
    EXPECT_EQ(std::count(cuda.out.begin(), cuda.out.end(), '\n'), 1) << cuda.out;
  }
  expect_error("eval --run nowhere", "nowhere/config.toml");
  expect_error("sample --run nowhere", "nowhere/model.safetensors: cannot open");
}

}  // namespace
}  // namespace frugal
