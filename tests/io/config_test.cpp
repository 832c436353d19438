// The run configuration: file + overrides, presets, and one clear error per mistake.
#include <filesystem>
#include <fstream>

#include "core/core.h"
#include "dist/comm.h"
#include "io/io.h"
#include "support/support.h"

namespace frugal {
namespace {

using test::expect_user_error;

std::string write(const test::TempDir& d, const std::string& text) {
  std::string p = d / "c.toml";
  std::ofstream(p) << text;
  return p;
}

TEST(Config, FileThenOverridesPresetThenExplicitKeys) {
  test::TempDir d;
  auto p = write(d, "[model]\npreset = \"gpt2\"\nn_layer = 3\n[train]\nlr = 6e-4\nsteps = 7\nseq_len = 128\n"
                    "[data]\ntrain = \"x/train_*.bin\"\n");
  RunConfig c = load_config(p, {"train.steps=9", "train.batch_tokens=8192", "run.dir=out/r1",
                                "model.n_head=4", "device.peak_flops=1e12"});
  EXPECT_EQ(c.model.n_layer, 3);      // explicit key over the preset
  EXPECT_EQ(c.model.n_embd, 768);     // from the preset
  EXPECT_EQ(c.model.n_head, 4);       // override
  EXPECT_EQ(c.model.vocab_size, 50257);
  EXPECT_DOUBLE_EQ(c.train.lr, 6e-4);
  EXPECT_EQ(c.train.steps, 9);
  EXPECT_EQ(c.train.batch_tokens, 8192);
  EXPECT_EQ(c.accum_steps(), 8);      // 8192 / (8 * 128)
  EXPECT_EQ(c.data.train, "x/train_*.bin");
  EXPECT_EQ(c.data.val, "x/val_*.bin");  // data.train's own split, not the default corpus's
  EXPECT_EQ(c.run.dir, "out/r1");
  EXPECT_DOUBLE_EQ(c.device.peak_flops, 1e12);
}

// data.train without data.val validates on data.train's own split (it validated on the default
// corpus, the KJV, wherever that had been prepared); where that cannot be read off, one line.
TEST(Config, DataTrainAloneBringsItsValidationSplit) {
  test::TempDir d;
  std::filesystem::create_directories(d / "prep");
  EXPECT_EQ(load_config("", {"data.train=" + d / "prep"}).data.val, d / "prep");
  EXPECT_EQ(load_config("", {"data.train=fw/fineweb_train_*.bin"}).data.val, "fw/fineweb_val_*.bin");
  EXPECT_EQ(load_config("", {"data.train=train/train_*.bin"}).data.val, "train/val_*.bin");
  EXPECT_EQ(load_config("", {"data.train=a/train_*.bin", "data.val=b/*.bin"}).data.val, "b/*.bin");
  EXPECT_EQ(load_config("", {}).data.val, "data/kjv/val_*.bin");
  expect_user_error([] { load_config("", {"data.train=train/x_*.bin"}); },
                    "--data.train: data.val: not set, and data.train = 'train/x_*.bin' has no \"train\" in its name");
}

TEST(Config, ResolvedTomlLoadsBackToTheSameConfig) {
  test::TempDir d;
  RunConfig c = load_config("", {"model.preset=tiny", "train.lr=0.002", "data.val=v/*.bin", "train.seq_len=64",
                                 "precision.compute=bf16"});
  std::string p = d / "resolved.toml";
  std::ofstream(p) << c.to_toml();
  RunConfig r = load_config(p, {});
  EXPECT_EQ(r.to_toml(), c.to_toml());
  EXPECT_EQ(r.model.n_embd, 64);
  EXPECT_DOUBLE_EQ(r.train.lr, 0.002);
  EXPECT_EQ(r.data.val, "v/*.bin");
  EXPECT_EQ(r.precision.compute, DType::bf16);
}

TEST(Config, ShippedConfigsLoad) {
  RunConfig mini = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/mini.toml", {});
  RunConfig defaults = load_config("", {});
  EXPECT_EQ(mini.to_toml(), defaults.to_toml());  // mini.toml spells out the defaults
  RunConfig gpt2 = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/gpt2.toml", {});
  EXPECT_EQ(gpt2.model.num_params(), 124475904);
  EXPECT_EQ(gpt2.accum_steps(), 128);  // 524288 / (4 * 1024)
  // run.sh's default where bf16 is native: mini's model, in bf16, on mini's data
  RunConfig mb = load_config(std::string(FRUGAL_SOURCE_DIR) + "/configs/mini-bf16.toml", {});
  EXPECT_EQ(mb.model.num_params(), mini.model.num_params());
  EXPECT_EQ(mb.precision.compute, DType::bf16);
  EXPECT_EQ(mb.data.train, mini.data.train);
  EXPECT_EQ(mb.train.steps, 1000);
}

TEST(Config, EveryMistakeIsOneLineNamingFileAndField) {
  test::TempDir d;
  expect_user_error([&] { load_config(write(d, "[train]\nlrr = 1\n"), {}); },
                    "c.toml: unknown key train.lrr (expected one of: seed, steps");
  expect_user_error([&] { load_config("", {"train.stepz=3"}); }, "--train.stepz: unknown key train.stepz");
  expect_user_error([&] { load_config(write(d, "[trian]\nlr = 1\n"), {}); }, "unknown section [trian]");
  expect_user_error([&] { load_config(write(d, "[train]\nlr = \"fast\"\n"), {}); },
                    "c.toml: train.lr: expected a number, got a string");
  expect_user_error([&] { load_config("", {"train.steps=1.5"}); }, "--train.steps: train.steps: expected an integer, got a number");
  expect_user_error([&] { load_config("", {"train.steps=0"}); }, "train.steps: expected an integer >= 1, got 0");
  expect_user_error([&] { load_config("", {"model.preset=gpt3"}); }, "--model.preset: unknown model preset 'gpt3' (expected one of:");
  expect_user_error([&] { load_config("", {"model.preset=gpt2", "train.seq_len=2048"}); },
                    "train.seq_len = 2048 is above the model's context of 1024 positions");
  expect_user_error([&] { load_config("", {"train.steps=2147483648"}); },  // was -2147483648 steps
                    "train.steps: expected an integer <= 2147483647, got 2147483648");
  expect_user_error([&] { load_config("", {"train.threads=100000"}); }, "train.threads = 100000: expected at most 4096");
  expect_user_error([&] { load_config("", {"train.eps=0"}); }, "command line: train.eps must be above 0: AdamW divides");
  expect_user_error([&] { load_config("", {"train.lr=0.5", "train.weight_decay=4"}); },
                    "train.lr * train.weight_decay = 2 must be below 1: AdamW's decay multiplies the weights by");
  expect_user_error([&] { load_config("", {"train.batch_tokens=1000"}); },
                    "train.batch_tokens = 1000 must be a multiple of micro_batch * seq_len = 2048");
  expect_user_error([&] { load_config("", {"model.n_head=3"}); }, "model.n_embd (256) must be divisible by model.n_head (3)");
  expect_user_error([&] { load_config(write(d, "[train\nlr = 1\n"), {}); }, "c.toml:1:");
  expect_user_error([&] { load_config("", {"trainlr=1"}); }, "expected --section.key=value");
  expect_user_error([&] { load_config("", {"precision.compute=fp8"}); },
                    "--precision.compute: precision.compute: expected one of fp32, bf16, fp16, got 'fp8'");
  expect_user_error([&] { load_config("", {"precision.reduce=fp16"}); },
                    "precision.reduce: expected one of fp32, bf16, got 'fp16'");
  expect_user_error([&] { load_config("", {"precision.loss_scale_min=1e9"}); },
                    "precision.loss_scale_min = 1000000000 is above precision.loss_scale = 65536");
  expect_user_error([&] { load_config("", {"dist.strategy=zero4"}); },
                    "dist.strategy: expected ddp, zero1, zero2, zero3 (or fsdp) or yafsdp, got 'zero4'");
  EXPECT_EQ(parse_strategy(load_config("", {"dist.strategy=fsdp"}).dist.strategy, "x"), Strategy::zero3);
}

}  // namespace
}  // namespace frugal
