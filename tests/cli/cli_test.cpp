// The frugal command line, end to end: bad input gets one clear line and a non-zero exit;
// train, eval and sample work together on a tiny run.
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <fstream>
#include <thread>
#include <map>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "io/io.h"
#include "plan/plan.h"
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
  // transformers' AutoTokenizer ids of text, read from an exported directory (relative to d())
  static std::vector<uint32_t> transformers_ids(const std::string& hf_dir, const std::string& text) {
    std::ofstream(*dir_ / (hf_dir + ".txt")) << text;
    EXPECT_TRUE(test::run_reference("hf_reference.py", "tokenizer " + d() + "/" + hf_dir + " " + d() + "/" + hf_dir +
                                                           ".txt " + d() + "/" + hf_dir + ".ids"));
    std::vector<uint32_t> ids;
    std::ifstream in(*dir_ / (hf_dir + ".ids"));
    for (uint32_t id; in >> id;) ids.push_back(id);
    return ids;
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
  // the plan's prediction at the start, measured beside predicted at the end
  EXPECT_NE(t.out.find("plan: "), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("tok/s predicted"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("predicted vs measured (per rank):"), std::string::npos) << t.out;
  for (const char* row : {"  params ", "  activations ", "  tokens/s ", "  MFU/device ", "  cost "})
    EXPECT_NE(t.out.find(row), std::string::npos) << row << "\n" << t.out;
  // ... and as JSON: summary.json, the prediction's memory within 5 % of the measured peak
  auto sum = nlohmann::json::parse(std::ifstream(*dir_ / "run1/summary.json"));
  for (const char* c : {"params", "grads", "optimizer", "activations", "workspace"}) {
    const double want = sum["predicted"]["memory"][c].get<double>();
    EXPECT_NEAR(sum["measured"]["mem_peak"][c].get<double>(), want, 0.05 * want) << c;
  }
  EXPECT_GT(sum["measured"]["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(sum["measured"]["cost"].get<double>(), 0.0);
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
  // the same scalars in a TensorBoard event file, as tensorboard itself reads them
  EXPECT_TRUE(test::run_reference("tensorboard_check.py", *dir_ / "run1"));
  double val = recs.back()["val_loss"].get<double>();
  // eval over the same 4 validation batches reproduces the trainer's number
  Result e = run("eval --run run1 --batches 4", d());
  ASSERT_EQ(e.code, 0) << e.out;
  double loss = std::stod(e.out.substr(e.out.find("loss ") + 5));
  EXPECT_NEAR(loss, val, 1e-4);
  // more batches than the split holds: each window once, as with 0 (all), not the first ones twice
  Result all = run("eval --run run1", d()), more = run("eval --run run1 --batches 1000000", d());
  ASSERT_EQ(more.code, 0) << more.out;
  EXPECT_EQ(more.out.substr(0, more.out.find(" (all its")), all.out.substr(0, all.out.find('\n'))) << more.out;
  EXPECT_NE(more.out.find("--batches 1000000 is more than it holds"), std::string::npos) << more.out;
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

// A model tuned on one chat record answers it: sample --chat renders the prompt as the user's turn
// in the data's template (plain here: byte tokens), and the reply stops at end of text, as a plain
// sample does; without the stop both would go on into the next record.
TEST_F(Cli, SampleChatAnswersInTheTemplateAndStopsAtEndOfText) {
  {
    std::ofstream f(*dir_ / "chat.jsonl");
    for (int i = 0; i < 2000; i++)
      f << R"({"messages": [{"role": "user", "content": "Who begat Enos?"}, {"role": "assistant", "content": "Seth."}]})" << "\n";
  }
  ASSERT_EQ(run("prepare --format jsonl chat.jsonl --out chat --val-docs 10", d()).code, 0);
  Result t = run("train --model.preset=llama-tiny --train.steps=150 --train.seq_len=64 --train.micro_batch=4 --train.lr=3e-3 "
                 "--train.warmup_steps=10 --run.checkpoint_every=0 --train.eval_every=0 --data.train='chat/train_*.bin' "
                 "--data.val='chat/val_*.bin' --run.dir=chatrun", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_EQ(run("sample --run chatrun --chat --prompt 'Who begat Enos?' --temperature 0 --tokens 50", d()).out, "Seth.\n\n");
  EXPECT_EQ(run("sample --run chatrun --prompt 'assistant: ' --temperature 0 --tokens 50", d()).out, "assistant: Seth.\n\n");
  expect_error("sample --run chatrun --system 'Be brief.' --prompt 'Who begat Enos?'", "sample --system: the system message is a turn of --chat");
}

// A template given to prepare (a base model's tokenizer has none; here byte tokens): the records
// are rendered with it, the data directory keeps it, and sample --chat stops at its end of turn,
// which takes several tokens ("<|im_end|>" in bytes), printing none of it.
TEST_F(Cli, ChatTemplateGivenToPrepareAndSampleStopsAtItsEndOfTurn) {
  {
    std::ofstream f(*dir_ / "chat.jsonl");
    for (int i = 0; i < 2000; i++)
      f << R"({"messages": [{"role": "user", "content": "Who begat Enos?"}, {"role": "assistant", "content": "Seth."}]})" << "\n";
    std::ofstream(*dir_ / "chatml.jinja") << "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + "
                                             "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>"
                                             "assistant\\n' }}{% endif %}";
  }
  Result p = run("prepare --format jsonl chat.jsonl --chat-template chatml.jinja --out chatml --val-docs 10", d());
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("records rendered with chatml.jinja"), std::string::npos) << p.out;
  EXPECT_EQ(read_whole_file(*dir_ / "chatml/chat_template.jinja"), read_whole_file(*dir_ / "chatml.jinja"));
  // a vocabulary padded past the byte tokenizer's 257 ids (export wrote its last id as eos)
  Result t = run("train --model.preset=llama-tiny --model.vocab_size=320 --train.steps=150 --train.seq_len=64 "
                 "--train.micro_batch=4 --train.lr=3e-3 --train.warmup_steps=10 --run.checkpoint_every=0 --train.eval_every=0 "
                 "--data.train='chatml/train_*.bin' --run.dir=chatmlrun", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_EQ(run("sample --run chatmlrun --chat --prompt 'Who begat Enos?' --temperature 0 --tokens 50", d()).out, "Seth.\n");
  // export: generation stops at the data's end of text (the template's end of turn is several byte
  // tokens, so not an id); there is no bos
  ASSERT_EQ(run("export chatmlrun --out chatml_hf", d()).code, 0);
  nlohmann::json hf = nlohmann::json::parse(read_whole_file(*dir_ / "chatml_hf/config.json"));
  EXPECT_EQ(hf["eos_token_id"], 256);
  EXPECT_TRUE(hf["bos_token_id"].is_null());
  EXPECT_EQ(read_whole_file(*dir_ / "chatml_hf/chat_template.jinja"), read_whole_file(*dir_ / "chatml.jinja"));
  // the data moved away: not read as byte-level shards (sample decoded another tokenizer's ids as bytes)
  std::filesystem::rename(*dir_ / "chatml", *dir_ / "chatml_moved");
  expect_error("sample --run chatmlrun --prompt hi", "chatml: no such directory: the data's tokenizer is described next to its shards");
  std::filesystem::rename(*dir_ / "chatml_moved", *dir_ / "chatml");
  expect_error("prepare chat.jsonl --chat-template chatml.jinja --out x", "--chat-template renders instruction records: give --format jsonl");
  expect_error("prepare --format jsonl chat.jsonl --chat-template nope.jinja --out x", "--chat-template nope.jinja: no such file");
  expect_error("prepare --format jsonl chat.jsonl --tokenizer gpt2 --gpt2-dir " + std::string(FRUGAL_SOURCE_DIR) +
               "/data/gpt2 --chat-template chatml.jinja --out x",
               "--chat-template chatml.jinja: the tokenizer is gpt2, which reads a template's special tokens as text");
  // a later prepare into the directory without the template leaves it there no more
  ASSERT_EQ(run("prepare --format jsonl chat.jsonl --out chatml --val-docs 10", d()).code, 0);
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "chatml/chat_template.jinja"));
}

// Records whose prompts outrun seq_len: a batch of prompt only has no loss (it was logged as
// 0.0000, a perfect model), is no update, leaves its metrics record without "loss", and the
// report and eval of such a run say so instead of failing or reporting 0.
TEST_F(Cli, BatchesOfPromptOnlyTrainNothingAndSaySo) {
  {
    std::ofstream f(*dir_ / "long.jsonl");
    for (int i = 0; i < 300; i++) f << R"({"prompt": ")" << std::string(2000, 'x') << R"(", "completion": "ok"})" << "\n";
  }
  ASSERT_EQ(run("prepare --format jsonl long.jsonl --out long --val-docs 10", d()).code, 0);
  Result t = run("train --model.preset=llama-tiny --train.steps=2 --train.seq_len=64 --train.micro_batch=1 "
                 "--run.checkpoint_every=0 --train.eval_every=1 --train.eval_batches=1 --data.train='long/train_*.bin' "
                 "--data.val='long/val_*.bin' --run.dir=longrun", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("step     1/2 | loss n/a (no target trained on)"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("| val n/a (no target trained on)"), std::string::npos) << t.out;
  std::ifstream m(*dir_ / "longrun/metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(m, line));
  auto rec = nlohmann::json::parse(line);
  EXPECT_EQ(rec["targets"], 0);
  EXPECT_FALSE(rec.contains("loss"));
  EXPECT_FALSE(rec.contains("val_loss"));
  EXPECT_EQ(run("report longrun", d()).code, 0);
  expect_error("eval --run longrun --batches 1", "long/val_*.bin: the 64 tokens evaluated hold no target trained on");
  Result all = run("eval --run longrun", d());  // every window: some hold the completions
  EXPECT_EQ(all.code, 0) << all.out;
}

// data.document_mask: the run says where it cuts (before each end of text in text, after it in
// records), the resolved config keeps the setting, and `eval` evaluates as the run did (the
// numbers against transformers: tests/model/llama_test.cpp).
TEST_F(Cli, DocumentMaskCutsTextAndRecordsAndEvalAgrees) {
  std::filesystem::create_directories(d() + "/docs");
  for (int i = 0; i < 40; i++) std::ofstream(fmt::format("{}/docs/{}.txt", d(), i)) << std::string(10 + i, char('a' + i % 26));
  {
    std::ofstream f(d() + "/docs.jsonl");
    for (int i = 0; i < 60; i++) f << R"({"prompt": "Say )" << i << R"(.", "completion": "Said )" << i << R"(."})" << "\n";
  }
  ASSERT_EQ(run("prepare docs --out docdata --val-docs 8", d()).code, 0);
  ASSERT_EQ(run("prepare --format jsonl docs.jsonl --out recdata --val-docs 16", d()).code, 0);
  // a tokenizer that puts <s> (1) before a text, as Llama 2's tokenizer_config.json says: each
  // document is <s> text </s>, and the cut is after </s> (2)
  Result sp = run("prepare docs --out sp300 --val-docs 8 --train-tokenizer --vocab-size 300", d());
  const bool has_sp = sp.out.find("built without SentencePiece") == std::string::npos;
  if (has_sp) {
    ASSERT_EQ(sp.code, 0) << sp.out;
    std::filesystem::create_directories(d() + "/bostok");
    std::filesystem::copy_file(d() + "/sp300/tokenizer.model", d() + "/bostok/tokenizer.model");
    std::ofstream(d() + "/bostok/tokenizer_config.json") << R"({"add_bos_token": true, "bos_token": "<s>", "eos_token": "</s>"})";
    Result p = run("prepare docs --tokenizer bostok --out bosdata --val-docs 8", d());
    ASSERT_EQ(p.code, 0) << p.out;
    EXPECT_NE(p.out.find("prepare: each document starts with the tokenizer's BOS (id 1), as transformers encodes a text, "
                         "and ends with its end of text"), std::string::npos) << p.out;
  }
  std::string val[2];
  for (int on = 0; on < 4; on++) {  // text off, text on, records on, text with a BOS on
    if (on == 3 && !has_sp) break;
    const std::string dir = fmt::format("docrun{}", on);
    const char* data[] = {"docdata", "docdata", "recdata", "bosdata"};
    Result t = run(fmt::format("train --model.preset=llama-tiny --train.steps=1 --train.seq_len=64 --train.micro_batch=2 "
                               "--run.checkpoint_every=0 --train.eval_batches=1 --data.train={} --run.dir={} "
                               "--data.document_mask={}{}", data[on], dir, on ? "true" : "false",
                               on == 3 ? " --model.vocab_size=300" : ""), d());
    ASSERT_EQ(t.code, 0) << t.out;
    const char* line[] = {"attend only to themselves", "documents attend only to themselves: cut before each end of text (id 256)",
                          "records attend only to themselves: cut after each end of text (id 256)",
                          "documents attend only to themselves: cut after each end of text (id 2)"};
    EXPECT_EQ(t.out.find(line[on]) != std::string::npos, on > 0) << t.out;
    const size_t at = t.out.find("done: val loss ");
    ASSERT_NE(at, std::string::npos) << t.out;
    if (on < 2) val[on] = t.out.substr(at + 15, 6);
    Result e = run(fmt::format("eval --run {} --batches 1", dir), d());
    ASSERT_EQ(e.code, 0) << e.out;
    EXPECT_NE(e.out.find("eval: loss " + t.out.substr(at + 15, 6)), std::string::npos) << e.out << t.out;
    std::ifstream c(d() + "/" + dir + "/config.toml");
    const std::string text((std::istreambuf_iterator<char>(c)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find(on ? "document_mask = true" : "document_mask = false"), std::string::npos) << text;
  }
  EXPECT_NE(val[0], val[1]) << "masking changes what the model sees";
  // shards with nothing naming their tokenizer (llm.c's): no end of text to guess
  std::filesystem::create_directories(d() + "/bare");
  std::filesystem::copy_file(d() + "/docdata/train_000.bin", d() + "/bare/train_000.bin");
  expect_error("train --model.preset=llama-tiny --train.seq_len=64 --train.micro_batch=2 --data.train=bare/train_000.bin "
               "--data.val=bare/train_000.bin --run.dir=barerun --data.document_mask=true",
               "bare: no frugal_tokenizer.json names the shards' tokenizer, whose end of text data.document_mask cuts at");
}

// Under data.document_mask attention costs the sum of n^2 over a window's documents of n, not
// T^2: the run's MFU, its plan, `plan -c` and `plan --calibrate` count S = sum n^2 / T keys a
// token (12 L S C FLOPs). Documents of one length make S exact: text of 15 bytes + end of text
// in windows of 64 cut before each end of text gives pieces 15, 16, 16, 16, 1 (S = 994 / 64);
// records of 14 tokens packed 4 to a window give 14 x 4 and padding 8 (S = 848 / 64).
TEST_F(Cli, DocumentMaskCountsTheAttentionOfTheDocuments) {
  std::filesystem::create_directories(d() + "/eq");
  for (int i = 0; i < 100; i++) std::ofstream(fmt::format("{}/eq/{}.txt", d(), i)) << "abcdefghijklmno";
  {
    std::ofstream f(d() + "/eq.jsonl");
    for (int i = 0; i < 100; i++) f << fmt::format(R"({{"prompt": "Say {:02}.", "completion": " Said."}})", i) << "\n";
  }
  ASSERT_EQ(run("prepare eq --out eqtext --val-docs 12", d()).code, 0);
  ASSERT_EQ(run("prepare --format jsonl eq.jsonl --out eqrec --val-docs 12", d()).code, 0);
  const double L = 2, C = 64, T = 64, peak = 1e11;  // llama-tiny
  double whole = 0;  // model FLOPs a token, unmasked
  for (auto [data, mask, S] : {std::tuple{"eqtext", false, T}, {"eqtext", true, 994.0 / 64}, {"eqrec", true, 848.0 / 64}}) {
    const std::string dir = fmt::format("span_{}_{}", data, mask);
    Result t = run(fmt::format("train --model.preset=llama-tiny --train.steps=3 --train.seq_len=64 --train.micro_batch=2 "
                               "--train.batch_tokens=256 --run.checkpoint_every=0 --train.eval_every=0 --data.train={} "
                               "--data.document_mask={} --device.peak_flops=1e11 --run.dir={}", data, mask, dir), d());
    ASSERT_EQ(t.code, 0) << t.out;
    auto sum = nlohmann::json::parse(std::ifstream(d() + "/" + dir + "/summary.json"));
    const double flops = sum["predicted"]["model_flops_per_token"].get<double>();
    if (!mask) whole = flops;
    EXPECT_EQ(sum["predicted"]["attention_span"].get<double>(), S) << dir;
    EXPECT_NEAR(flops, whole - 12 * L * C * (T - S), 1e-9 * whole) << dir;
    std::ifstream in(d() + "/" + dir + "/metrics.jsonl");
    int steps = 0;
    for (std::string line; std::getline(in, line); steps++) {
      auto r = nlohmann::json::parse(line);
      EXPECT_EQ(r.contains("attention_span"), mask) << line;
      if (mask) { EXPECT_EQ(r["attention_span"].get<double>(), S) << line; }
      EXPECT_NEAR(r["mfu"].get<double>(), flops * r["tokens_per_s"].get<double>() / peak, 1e-9) << line;
    }
    EXPECT_EQ(steps, 3);
    EXPECT_NEAR(sum["measured"]["mfu"].get<double>(), flops * sum["measured"]["tokens_per_s"].get<double>() / peak, 1e-9);
    if (!mask) continue;
    Result p = run(fmt::format("plan -c {}/config.toml --tokens 1e6 --devices 1 --strategy ddp --precision fp32 "
                               "--recompute none --micro-batch 2 --json", dir), d());
    ASSERT_EQ(p.code, 0) << p.out;
    auto pj = nlohmann::json::parse(p.out);
    EXPECT_EQ(pj["attention_span"].get<double>(), S);
    EXPECT_EQ(pj["model_flops_per_token"].get<double>(), flops);
    ASSERT_EQ(run("plan --calibrate " + dir, d()).code, 0);
    auto cal = nlohmann::json::parse(std::ifstream(d() + "/" + dir + "/calibration.json"));
    EXPECT_NEAR(cal["mfu"].get<double>(), flops * 256 / cal["step_s"].get<double>() / peak, 1e-9);
  }
  // a preset's plan: --data samples shards as -c does; --doc-tokens 16 averages the window's start
  // over a document's 16 positions: (3·16² + 16² - 16·15 + 15·31/3) / 64 = 939 / 64
  for (auto [flag, S] : {std::pair{std::string("--data 'eqtext/train_*.bin'"), 994.0 / 64}, {std::string("--doc-tokens 16"), 939.0 / 64}}) {
    Result p = run("plan --preset llama-tiny --seq-len 64 --tokens 1e6 --device h100-sxm --devices 1 --strategy ddp --precision fp32 "
                   "--recompute none --micro-batch 2 --json " + flag, d());
    ASSERT_EQ(p.code, 0) << p.out;
    EXPECT_EQ(nlohmann::json::parse(p.out)["attention_span"].get<double>(), S) << flag;
  }
  expect_error("plan --preset llama-tiny --tokens 1e6 --data nothing_*.bin", "--data: no token shards match 'nothing_*.bin'");
}

// `frugal export` of RUN gives a directory that transformers' AutoModelForCausalLM loads with no
// missing, unexpected or mismatched key and no warning, and whose logits equal frugal's within
// 1e-4 (relative, fp32).
void expect_transformers_logits(const std::string& run_dir, const std::string& cwd, const std::string& type = "gpt2",
                                const std::string& max_shard = "") {
  SCOPED_TRACE(run_dir);
  Result x = run("export " + run_dir + " --out " + run_dir + "_hf" + (max_shard.empty() ? "" : " --max-shard-size " + max_shard), cwd);
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_EQ(std::filesystem::exists(cwd + "/" + run_dir + "_hf/model.safetensors.index.json"), !max_shard.empty()) << x.out;
  std::string out = cwd + "/" + run_dir + "_hf";
  auto cfg = nlohmann::json::parse(std::ifstream(out + "/config.json"));
  EXPECT_EQ(cfg["model_type"], type);
  EXPECT_EQ(cfg["architectures"][0], type == "gpt2" ? "GPT2LMHeadModel" : type == "llama" ? "LlamaForCausalLM" : "MistralForCausalLM");
  const size_t from = x.out.find("export: ") + 8;  // the exported file (a shard has no frugal metadata to read)
  ModelConfig gc = read_model_config(cwd + "/" + x.out.substr(from, x.out.find(" -> ") - from));
  Model model(gc, cpu_backend());
  load_model(out, model);
  const int B = 2, T = std::min(50, gc.context), V = gc.vocab_size;
  std::vector<int32_t> tokens(B * T);
  for (int i = 0; i < B * T; i++) tokens[i] = int32_t((i * 37 + 11) % 257);
  save_safetensors(out + "/tok.st", {{"tokens", "I32", {B, T}, tokens.data()}}, {});
  ASSERT_TRUE(test::run_reference("hf_reference.py", "logits " + out + " " + out + "/tok.st " + out + "/logits.st"));
  std::vector<float> ref(size_t(B) * T * V), ours;
  SafeTensors(out + "/logits.st").read("logits", "F32", {B, T, V}, ref.data());
  model.allocate(B, T);
  model.logits(tokens.data(), B, T, false, ours);
  EXPECT_LT(test::rel_error(ours, ref), 1e-4);
}

// The tiny and mini models trained a few steps, and gpt2's shape with its random init (lr 0).
TEST_F(Cli, ExportLoadsInTransformers) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  Result t = run(std::string("train ") + kTiny + " --train.steps=6 --train.eval_batches=1 --run.dir=hf", d());
  ASSERT_EQ(t.code, 0) << t.out;
  EXPECT_NE(t.out.find("checkpoint: hf/ckpt-6 written"), std::string::npos) << t.out;  // one at the end
  Result x = run("export hf --out hf_export", d());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("hf/ckpt-6/model.safetensors -> hf_export/model.safetensors"), std::string::npos) << x.out;
  expect_transformers_logits("hf", d());
  const std::string data = " --data.train=data/train_*.bin --data.val=data/val_*.bin --train.eval_batches=1 --run.checkpoint_every=0";
  Result m = run("train --model.preset=mini --train.seq_len=64 --train.micro_batch=2 --train.steps=3 --run.dir=hf_mini" + data, d());
  ASSERT_EQ(m.code, 0) << m.out;
  expect_transformers_logits("hf_mini", d());
  Result g = run("train --model.preset=gpt2 --model.vocab_size=50257 --train.seq_len=32 --train.micro_batch=1 --train.steps=1 "
                 "--train.lr=0 --train.min_lr=0 --run.dir=hf_gpt2" + data, d());
  ASSERT_EQ(g.code, 0) << g.out;
  expect_transformers_logits("hf_gpt2", d());

  // lr 0: one step from the export leaves the weights as they came
  Result f = run(std::string("train ") + kTiny + " --train.steps=1 --train.lr=0 --train.min_lr=0 --train.eval_batches=1 "
                 "--run.dir=ft --init-from hf_export/model.safetensors", d());
  ASSERT_EQ(f.code, 0) << f.out;
  SafeTensors ft(*dir_ / "ft/model.safetensors"), hx(*dir_ / "hf_export/model.safetensors");
  for (const std::string& name : hx.names()) {
    int64_t n = 1;
    for (int64_t dim : hx.shape(name)) n *= dim;
    EXPECT_EQ(0, std::memcmp(ft.f32(name, n), hx.f32(name, n), size_t(n) * 4)) << name;
  }
  // a run's own model file (no config.json beside it) gives the shape too, from its metadata:
  // no --model flags, and the weights come through as they were
  Result own = run("train --init-from hf/model.safetensors --train.seq_len=64 --train.micro_batch=4 --train.steps=1 --train.lr=0 "
                   "--train.min_lr=0 --train.eval_batches=1 --data.train=data/train_*.bin --data.val=data/val_*.bin --run.dir=ft_own", d());
  ASSERT_EQ(own.code, 0) << own.out;
  EXPECT_NE(own.out.find("(2 layers, 4 heads, 64 dims, vocab 257)"), std::string::npos) << own.out;
  SafeTensors fo(*dir_ / "ft_own/model.safetensors"), ho(*dir_ / "hf/model.safetensors");
  for (const std::string& name : ho.names()) {
    int64_t n = 1;
    for (int64_t dim : ho.shape(name)) n *= dim;
    EXPECT_EQ(0, std::memcmp(fo.f32(name, n), ho.f32(name, n), size_t(n) * 4)) << name;
  }
  expect_error(std::string("train ") + kTiny + " --model.n_embd=32 --run.dir=ft2 --init-from hf_export/model.safetensors",
               "hf_export/model.safetensors: tensor 'transformer.wte.weight' is F32 [257, 64], expected F32, BF16 or F16 [257, 32]");
  expect_error("train --resume hf --model.n_layer=3",
               "the configuration changes the model shape of checkpoint hf/ckpt-6: model.n_layer 2 -> 3");
}

// The llama family both ways: llama-tiny (untied head) and a tied-head llama with llama3 rope
// scaling export to directories transformers loads, with frugal's logits; LlamaForCausalLM's and
// Qwen2ForCausalLM's save_pretrained (sharded, bf16) start runs, by --init-from and by
// -c config.json, whose first loss is transformers' on the same tokens.
TEST_F(Cli, LlamaBothWaysWithTransformers) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  const std::string data = " --data.train=data/train_*.bin --data.val=data/val_*.bin --train.eval_batches=1 --run.checkpoint_every=0";
  Result t = run("train --model.preset=llama-tiny --train.seq_len=32 --train.micro_batch=2 --train.steps=3 --run.dir=ll" + data, d());
  ASSERT_EQ(t.code, 0) << t.out;
  expect_transformers_logits("ll", d(), "llama", "40KB");  // shards and an index
  Result t2 = run("train --model.family=llama --model.tied_head=true --model.n_kv_head=1 --model.rope_scaling_factor=8 "
                  "--model.rope_original_context=16 --model.context=64 --train.seq_len=48 --train.micro_batch=1 --train.steps=2 "
                  "--run.dir=ll_tied" + data, d());
  ASSERT_EQ(t2.code, 0) << t2.out;
  expect_transformers_logits("ll_tied", d(), "llama");
  // Mistral's sliding window: kept, exported as MistralForCausalLM; a run stays within it
  Result mw = run("train --model.preset=llama-tiny --model.sliding_window=64 --train.seq_len=64 --train.micro_batch=1 "
                  "--train.steps=2 --run.dir=mw" + data, d());
  ASSERT_EQ(mw.code, 0) << mw.out;
  EXPECT_EQ(read_model_config(*dir_ / "mw/model.safetensors").sliding_window, 64);
  expect_transformers_logits("mw", d(), "mistral");
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(*dir_ / "mw_hf/config.json"))["sliding_window"], 64);
  expect_error("train --model.preset=llama-tiny --model.sliding_window=64 --train.seq_len=65 --run.dir=mw2" + data,
               "train.seq_len = 65 is above the model's sliding window of 64 keys (model.sliding_window, Mistral's)");

  const int T = 40;
  std::vector<uint32_t> tokens(2 * T + 1);
  Rng rng(test::test_seed());
  for (auto& x : tokens) x = uint32_t(rng.below(300));
  write_shard(*dir_ / "llx.bin", tokens);
  std::vector<int32_t> windows;
  for (int w = 0; w < 2; w++) windows.insert(windows.end(), tokens.begin() + w * T, tokens.begin() + w * T + T + 1);
  save_safetensors(*dir_ / "llx.st", {{"tokens", "I32", {2, T + 1}, windows.data()}}, {});
  const std::string shape = "--layers 2 --heads 4 --kv-heads 2 --hidden 64 --ffn 128 --vocab 300 --context 64";
  for (auto [kind, flags] : {std::pair{"llama", " --untied --dtype bf16 --max-shard-size 60KB"}, {"qwen2", " --qwen2 --dtype fp16"},
                             {"mistral", " --mistral 48"}}) {
    const std::string dir = std::string("tf_") + kind;
    SCOPED_TRACE(dir);
    ASSERT_TRUE(test::run_reference("llama_reference.py", fmt::format("save {}/{} {}{} --seed {}", d(), dir, shape, flags,
                                                                      test::test_seed() % 1000)));
    ASSERT_TRUE(test::run_reference("hf_reference.py", fmt::format("loss {0}/{1} {0}/llx.st {0}/{1}/loss.st", d(), dir)));
    float ref = 0;
    SafeTensors(*dir_ / (dir + "/loss.st")).read("loss", "F32", {1}, &ref);
    const std::string args = " --train.seq_len=40 --train.micro_batch=2 --train.steps=1 --train.lr=0 --train.min_lr=0 "
                             "--train.eval_batches=1 --data.train=llx.bin --data.val=llx.bin --run.dir=run_";
    for (const std::string& how : {"train --init-from " + dir + args + dir, "train -c " + dir + "/config.json --init-from " + dir + args + dir + "_c"}) {
      Result r = run(how, d());
      ASSERT_EQ(r.code, 0) << r.out;
      const std::string run_dir = how.substr(how.rfind("--run.dir=") + 10);
      std::ifstream in(*dir_ / (run_dir + "/metrics.jsonl"));
      std::string line;
      std::getline(in, line);
      EXPECT_NEAR(nlohmann::json::parse(line)["loss"].get<double>(), ref, 1e-4 * ref) << how;
      ModelConfig c = read_model_config(*dir_ / (run_dir + "/model.safetensors"));
      EXPECT_EQ(c.family, Family::llama);
      EXPECT_EQ(c.kv_heads(), 2);
      EXPECT_EQ(c.attention_bias, std::string(kind) == "qwen2");
      EXPECT_EQ(c.sliding_window, std::string(kind) == "mistral" ? 48 : 0);
    }
    Result p = run("plan -c " + dir + "/config.json --tokens 1e9 --device a100-80gb --devices 1", d());
    ASSERT_EQ(p.code, 0) << p.out;
    EXPECT_NE(p.out.find(std::string("llama family (2 layers, 4 heads (2 key/value), 64 dims, vocab 300") +
                         (std::string(kind) == "mistral" ? ", sliding window 48)" : ")")), std::string::npos) << p.out;
  }
  expect_error("plan -c tf_mistral/config.json --tokens 1e9 --device a100-80gb --devices 1 --seq-len 64",
               "--seq-len: 64 is above the model's sliding window of 48 keys (Mistral's): frugal trains up to it");
  // a config.json frugal does not compute is refused, naming the field
  std::filesystem::create_directories(*dir_ / "bad");
  for (auto [json, want] : {std::pair{R"({"model_type": "mistral", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64,
                                        "vocab_size": 300, "max_position_embeddings": 64, "intermediate_size": 128, "sliding_window": 0})",
                                      "bad/config.json: sliding_window: expected a positive integer or null, got 0"},
                            {R"({"model_type": "mixtral"})", "bad/config.json: model_type: expected gpt2, llama, qwen2 or mistral"},
                            {R"({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "vocab_size": 300,
                                 "max_position_embeddings": 64, "intermediate_size": 128, "head_dim": 32})",
                             "bad/config.json: head_dim: a head size other than hidden_size / num_attention_heads = 16 is not supported (llama), got 32"},
                            {R"({"model_type": "qwen2", "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "vocab_size": 300,
                                 "max_position_embeddings": 64, "intermediate_size": 128, "num_experts": 8})",
                             "bad/config.json: num_experts: a mixture of experts is not supported (qwen2), got 8"},
                            // shapes that do not fit together, named by the file's keys (they read "model.n_head")
                            {R"({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 4,
                                 "hidden_size": 96, "vocab_size": 300, "max_position_embeddings": 64, "intermediate_size": 128})",
                             "bad/config.json: num_attention_heads (6) must be a multiple of num_key_value_heads (4)"},
                            {R"({"model_type": "llama", "num_hidden_layers": 2, "num_attention_heads": 5, "hidden_size": 64,
                                 "vocab_size": 300, "max_position_embeddings": 64, "intermediate_size": 128})",
                             "bad/config.json: hidden_size (64) must be divisible by num_attention_heads (5)"}}) {
    std::ofstream(*dir_ / "bad/config.json") << json;
    expect_error("train -c bad/config.json --run.dir=never", want);
    expect_error("plan -c bad/config.json --tokens 1e9", want);
  }
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "never"));
}

// A model that transformers wrote (save_pretrained, random init) starts a frugal run: one file or
// an index and shards, in fp32, bf16 and fp16 (widened to the fp32 masters), the shape from its
// config.json; frugal's first loss equals transformers' loss on the same tokens within 1e-4.
TEST_F(Cli, InitFromTransformersSavePretrained) {
  const int T = 64;
  std::vector<uint32_t> tokens(2 * T + 1);  // two windows: one micro-batch of 2
  Rng rng(test::test_seed());
  for (auto& t : tokens) t = uint32_t(rng.below(257));
  write_shard(*dir_ / "hfx.bin", tokens);
  std::vector<int32_t> windows;
  for (int w = 0; w < 2; w++) windows.insert(windows.end(), tokens.begin() + w * T, tokens.begin() + w * T + T + 1);
  save_safetensors(*dir_ / "hfx.st", {{"tokens", "I32", {2, T + 1}, windows.data()}}, {});
  const std::string shape = "--n-layer 3 --n-head 4 --n-embd 96 --vocab 257 --context 128";
  for (auto [dtype, shard] : {std::pair{"fp32", "5GB"}, {"fp32", "150KB"}, {"bf16", "100KB"}, {"fp16", "5GB"}}) {
    std::string dir = fmt::format("tf_{}_{}", dtype, shard);
    SCOPED_TRACE(dir);
    ASSERT_TRUE(test::run_reference("hf_reference.py", fmt::format("save {}/{} {} --dtype {} --max-shard-size {} --seed {}",
                                                                   d(), dir, shape, dtype, shard, test::test_seed())));
    EXPECT_EQ(std::filesystem::exists(*dir_ / (dir + "/model.safetensors.index.json")), std::string(shard) != "5GB");
    ASSERT_TRUE(test::run_reference("hf_reference.py", fmt::format("loss {0}/{1} {0}/hfx.st {0}/{1}/loss.st", d(), dir)));
    float ref = 0;
    SafeTensors(*dir_ / (dir + "/loss.st")).read("loss", "F32", {1}, &ref);
    Result r = run("train --init-from " + dir + " --train.seq_len=64 --train.micro_batch=2 --train.steps=1 --train.lr=0 "
                   "--train.min_lr=0 --train.eval_batches=1 --data.train=hfx.bin --data.val=hfx.bin --run.dir=run_" + dir, d());
    ASSERT_EQ(r.code, 0) << r.out;
    std::ifstream in(*dir_ / ("run_" + dir + "/metrics.jsonl"));
    std::string line;
    std::getline(in, line);
    double loss = nlohmann::json::parse(line)["loss"].get<double>();
    EXPECT_NEAR(loss, ref, 1e-4 * ref);
    ModelConfig c = read_model_config(*dir_ / ("run_" + dir + "/model.safetensors"));
    EXPECT_EQ(c.n_layer, 3);  // the shape came from config.json
    EXPECT_EQ(c.n_embd, 96);
  }
}

// What --init-from cannot place is refused, never ignored.
TEST_F(Cli, InitFromRefusesWhatItCannotPlace) {
  write_shard(*dir_ / "hfy.bin", std::vector<uint32_t>(200, 7));
  const std::string run_args = " --train.seq_len=32 --train.micro_batch=2 --train.steps=1 --data.train=hfy.bin --data.val=hfy.bin --run.dir=refused";
  const std::string shape = "--n-layer 3 --n-head 4 --n-embd 64 --vocab 257 --context 128";
  ASSERT_TRUE(test::run_reference("hf_reference.py", "save " + d() + "/tf3 " + shape + " --max-shard-size 100KB"));
  auto index = nlohmann::json::parse(std::ifstream(*dir_ / "tf3/model.safetensors.index.json"));
  const std::string extra = "transformer.h.2.attn.c_attn.bias", shard = index["weight_map"][extra];
  expect_error("train --init-from tf3 --model.n_layer=2" + run_args,
               "tf3/" + shard + ": tensor '" + extra + "' has no place in this model (2 layers, n_embd 64, vocab 257)");
  ASSERT_TRUE(test::run_reference("hf_reference.py", "save " + d() + "/tf_untied " + shape + " --untied"));
  expect_error("train --init-from tf_untied" + run_args,
               "tf_untied/config.json: tie_word_embeddings: expected true (frugal's GPT-2 ties the output head to the embedding), got false");
  std::filesystem::create_directories(*dir_ / "bare");  // the weights alone, no config.json to refuse them
  std::filesystem::copy_file(*dir_ / "tf_untied/model.safetensors", *dir_ / "bare/model.safetensors");
  expect_error("train --init-from bare/model.safetensors --model.preset=custom --model.n_layer=3 --model.n_head=4 "
               "--model.n_embd=64 --model.vocab_size=257 --model.context=128" + run_args,
               "bare/model.safetensors: tensor 'lm_head.weight' differs from the embedding");
  // a base whose tokenizer is not the data's (byte-level shards, a SentencePiece of 300 ids beside the weights)
  Result sp = run("prepare corpus.txt --out sp300 --val-every 5 --train-tokenizer --vocab-size 300", d());
  if (sp.out.find("built without SentencePiece") == std::string::npos) {
    ASSERT_EQ(sp.code, 0) << sp.out;
    std::filesystem::copy(*dir_ / "tf3", *dir_ / "tf3tok", std::filesystem::copy_options::recursive);
    std::filesystem::copy_file(*dir_ / "sp300/tokenizer.model", *dir_ / "tf3tok/tokenizer.model");
    expect_error("train --init-from tf3tok" + run_args, "data.train: hfy.bin holds ids of a byte tokenizer of 257 ids (.), "
                 "but the model of train.init_from = 'tf3tok' reads its tokenizer of 300 ids: prepare the data with --tokenizer tf3tok");
    // as many ids, but another vocabulary (trained on other text): the ids of a probe text differ
    std::string other;
    for (int i = 0; i < 3000; i++) other += "Lorem ipsum dolor sit amet, consectetur adipiscing " + std::to_string(i % 11) + ".\n";
    std::ofstream(*dir_ / "other.txt") << other;
    ASSERT_EQ(run("prepare other.txt --out sp300b --val-every 5 --train-tokenizer --vocab-size 300", d()).code, 0);
    std::filesystem::copy_file(*dir_ / "sp300b/tokenizer.model", *dir_ / "tf3tok/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
    const std::string sp_args = " --train.seq_len=32 --train.micro_batch=2 --train.steps=1 --data.train=sp300/train_*.bin --run.dir=refused";
    expect_error("train --init-from tf3tok" + sp_args, "reads its tokenizer of 300 ids, which encodes text to other ids: "
                 "prepare the data with --tokenizer tf3tok");
    // the data's own tokenizer passes (and the 257-row model then refuses its ids)
    std::filesystem::copy_file(*dir_ / "sp300/tokenizer.model", *dir_ / "tf3tok/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
    expect_error("train --init-from tf3tok" + sp_args, "expected ids below model.vocab_size = 257");
  }
  std::ofstream(*dir_ / "bare/config.json") << R"({"model_type": "mamba", "n_layer": 2})";
  expect_error("train --init-from bare" + run_args, "bare/config.json: model_type: expected gpt2, llama, qwen2 or mistral");
  ASSERT_TRUE(std::filesystem::remove(*dir_ / ("tf3/" + shard)));
  expect_error("train --init-from tf3" + run_args, "tf3/" + shard + ": cannot open");
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "refused"));
}

// More threads than cores is allowed, and said: they would share cores.
TEST_F(Cli, ThreadsAboveTheCoresWarn) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  const int cores = int(std::thread::hardware_concurrency());
  Result r = run(std::string("train ") + kTiny + " --train.steps=1 --train.eval_batches=1 --run.dir=thr --train.threads=" +
                     std::to_string(4 * cores), d());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find(fmt::format("warning: train.threads = {} is above the", 4 * cores)), std::string::npos) << r.out;
  Result ok = run(std::string("train ") + kTiny + " --train.steps=1 --train.eval_batches=1 --run.dir=thr2 --train.threads=1", d());
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_EQ(ok.out.find("warning: train.threads"), std::string::npos) << ok.out;
}

// The refactor guard: a short gpt2-family run's losses and final weights, pinned bit for bit (fp32
// and bf16). Floating-point results depend on the CPU's kernels, so the golden values are kept
// per machine (its CPU model, whether it has AVX-512 BF16 and AMX); on a machine without an entry the
// test prints its values, to be added, and skips.
std::string machine_fingerprint() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(in, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
  }
  return model + (flags.find(" avx512_bf16") != std::string::npos ? " avx512_bf16" : " no-avx512_bf16") +
         (flags.find(" amx_bf16") != std::string::npos ? " amx" : "");
}

uint64_t fnv1a(const std::string& bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

TEST_F(Cli, PinnedLossesAndWeightsOfAShortRun) {
  // fingerprint -> {fp32 losses, fp32 weights hash, bf16 losses, bf16 weights hash}
  const std::map<std::string, std::array<std::string, 4>> golden = {
      // the session of 2026-12-02; bf16 re-pinned when the bf16 attention moved onto AMX tiles
      // (fp32 unchanged through the model-family refactor and since)
      {"Intel(R) Xeon(R) Processor avx512_bf16 amx",
       {"0x1.645054p+2 0x1.64c4a6p+2 0x1.64c246p+2 0x1.6542p+2 0x1.640bdap+2 0x1.655416p+2 ", "d3c282be02fa3b8b",
        "0x1.645002p+2 0x1.64c448p+2 0x1.64c52ep+2 0x1.6541a6p+2 0x1.640e08p+2 0x1.65543p+2 ", "6582faca9839ac0a"}},
      // the session of 2026-12-03 on a Zen 4 EPYC (AVX512-BF16, no AMX), pinned at 4555c4f
      {"AMD EPYC avx512_bf16",
       {"0x1.645054p+2 0x1.64c4a6p+2 0x1.64c246p+2 0x1.6542p+2 0x1.640bdcp+2 0x1.655416p+2 ", "73393a21d0c98426",
        "0x1.645006p+2 0x1.64c3d6p+2 0x1.64c48p+2 0x1.6541aap+2 0x1.640cb4p+2 0x1.655344p+2 ", "263a93cbbfec70fa"}},
  };
  std::vector<uint32_t> tokens(20000);
  uint64_t x = 12345;
  for (auto& t : tokens) t = uint32_t((x = x * 6364136223846793005ull + 1442695040888963407ull) >> 33) % 257;
  write_shard(*dir_ / "pin.bin", tokens);
  std::array<std::string, 4> got;
  for (int k = 0; k < 2; k++) {
    const std::string dt = k == 0 ? "fp32" : "bf16", run_dir = "pin_" + dt;
    Result r = run("train --model.preset=tiny --train.seq_len=64 --train.micro_batch=4 --train.steps=6 --train.warmup_steps=2 "
                   "--train.eval_every=0 --train.eval_batches=1 --run.checkpoint_every=0 --data.train=pin.bin --data.val=pin.bin "
                   "--precision.compute=" + dt + " --run.dir=" + run_dir, d());
    ASSERT_EQ(r.code, 0) << r.out;
    std::ifstream in(*dir_ / (run_dir + "/metrics.jsonl"));
    std::string line;
    while (std::getline(in, line)) got[2 * k] += fmt::format("{:a} ", nlohmann::json::parse(line)["loss"].get<double>());
    std::ifstream w(*dir_ / (run_dir + "/model.safetensors"), std::ios::binary);
    std::string file(std::istreambuf_iterator<char>(w), {});
    uint64_t header = 0;
    std::memcpy(&header, file.data(), 8);
    got[2 * k + 1] = fmt::format("{:016x}", fnv1a(file.substr(8 + header)));  // the tensors' bytes
  }
  const std::string here = machine_fingerprint();
  auto it = golden.find(here);
  if (it == golden.end() || it->second[0].empty())
    GTEST_SKIP() << "no pinned values for this machine; add {\"" << here << "\", {\"" << got[0] << "\", \"" << got[1]
                 << "\", \"" << got[2] << "\", \"" << got[3] << "\"}}";
  for (int i = 0; i < 4; i++) EXPECT_EQ(got[i], it->second[i]) << (i < 2 ? "fp32 " : "bf16 ") << (i % 2 ? "weights" : "losses");
}

// The other tokenizers: GPT-2's BPE and a SentencePiece vocabulary trained by prepare; train
// needs the model's vocabulary to hold the data's ids, sample decodes with the data's tokenizer.
TEST_F(Cli, PrepareTrainSampleWithGpt2AndTrainedTokenizers) {
  std::string gpt2_dir = std::string(FRUGAL_SOURCE_DIR) + "/data/gpt2";
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
  // a vocabulary padded past the tokenizer's (nanoGPT's 50304): the padding is never sampled, not
  // even nearly uniformly (each of 4000 tokens would hit one of its 47 ids at 1 in 1070)
  Result t2 = run("train " + tiny + data + " --model.vocab_size=50304 --run.dir=grun2", d());
  ASSERT_EQ(t2.code, 0) << t2.out;
  Result s2 = run("sample --run grun2 --prompt 'In the' --tokens 4000 --temperature 1000 --top-k 0 --seed 3", d());
  EXPECT_EQ(s2.code, 0) << s2.out.substr(0, 300);
  // a vocabulary smaller than the tokenizer's cannot sample
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  ASSERT_EQ(run("train " + tiny + " --data.train=data/train_*.bin --data.val=data/val_*.bin --train.steps=1 --run.dir=brun", d()).code, 0);
  std::string toml = read_whole_file(*dir_ / "brun/config.toml");
  toml.replace(toml.find("data/train_"), 4, "gdata");
  std::ofstream(*dir_ / "brun/config.toml") << toml;
  expect_error("sample --run brun", "brun/model.safetensors: vocab_size 257, but the gpt2 tokenizer of its data (gdata) has 50257 ids");

  Result sp = run("prepare corpus.txt --out sdata --val-every 5 --train-tokenizer --vocab-size 286 --model-type bpe", d());
  if (sp.out.find("built without SentencePiece") != std::string::npos) GTEST_SKIP() << sp.out;
  ASSERT_EQ(sp.code, 0) << sp.out;
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "sdata/tokenizer.model"));
  Result ts = run("train " + tiny + " --data.train=sdata/train_*.bin --data.val=sdata/val_*.bin --train.steps=2 --train.eval_every=0 --train.eval_batches=1 --model.vocab_size=286 --run.dir=srun", d());
  ASSERT_EQ(ts.code, 0) << ts.out;
  Result ss = run("sample --run srun --prompt 'In the' --tokens 5", d());
  ASSERT_EQ(ss.code, 0) << ss.out;
  EXPECT_EQ(ss.out.rfind("In the", 0), 0u) << ss.out;
  // export takes the data's tokenizer along: transformers' AutoTokenizer reads the exported
  // directory of a llama and gives the ids the run trained on
  Result tl = run("train --model.preset=llama-tiny --data.train=sdata/train_*.bin --data.val=sdata/val_*.bin --train.steps=1 "
                  "--train.seq_len=64 --train.micro_batch=2 --train.eval_batches=1 --model.vocab_size=286 --run.dir=slrun", d());
  ASSERT_EQ(tl.code, 0) << tl.out;
  Result x = run("export slrun --out slrun_hf", d());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("tokenizer.model from the data"), std::string::npos) << x.out;
  EXPECT_EQ(read_whole_file(*dir_ / "slrun_hf/tokenizer.model"), read_whole_file(*dir_ / "sdata/tokenizer.model"));
  const std::string text = "In the beginning was the word, and the word was 3.";
  std::vector<uint32_t> want;
  load_tokenizer(*dir_ / "sdata")->encode(text, want);
  EXPECT_EQ(transformers_ids("slrun_hf", text), want);
  expect_error("prepare corpus.txt --out sdata2 --train-tokenizer --vocab-size 100", "--vocab-size: expected at least 260");
  expect_error("prepare corpus.txt --out sdata2 --train-tokenizer --vocab-size 5000 --model-type unigram",
               "--vocab-size 5000: SentencePiece training failed");  // more pieces than the corpus has
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "sdata2/train_000.bin"));
}

// A Mistral-Instruct directory's tokenizer (its SentencePiece model converted to a byte-fallback
// tokenizer.json; config.json's model_type mistral, for which transformers 5 reads the file's own
// pipeline): prepare renders the records in its chat template, and export writes
// MistralForCausalLM (sliding_window null, as v0.2 has it), so that transformers reads the
// exported tokenizer as the data was prepared: the same ids for a conversation.
TEST_F(Cli, MistralTokenizerExportsAsMistral) {
  std::ofstream(*dir_ / "kjv.txt") << kjv_text();
  ASSERT_TRUE(test::run_reference("pretrained_tokenizers.py", "train " + d() + "/kjv.txt " + d() + "/fx"));
  {
    std::ofstream f(*dir_ / "mchat.jsonl");
    for (int i = 0; i < 300; i++)
      f << nlohmann::json({{"messages", {{{"role", "user"}, {"content", fmt::format("Who begat {}?", i)}},
                                         {{"role", "assistant"}, {"content", "Seth."}},
                                         {{"role", "user"}, {"content", "And then?"}},
                                         {{"role", "assistant"}, {"content", "Enos."}}}}}).dump() << "\n";
  }
  Result p = run("prepare --format jsonl mchat.jsonl --tokenizer fx/sp_hf_file --out mdata --val-docs 20", d());
  ASSERT_EQ(p.code, 0) << p.out;
  EXPECT_NE(p.out.find("chat_template"), std::string::npos) << p.out;
  Result t = run("train --model.preset=llama-tiny --model.vocab_size=2000 --data.train=mdata/train_*.bin "
                 "--data.val=mdata/val_*.bin --train.steps=1 --train.seq_len=64 --train.micro_batch=2 --run.dir=mrun", d());
  ASSERT_EQ(t.code, 0) << t.out;
  Result x = run("export mrun --out mrun_hf", d());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("(MistralForCausalLM)"), std::string::npos) << x.out;
  const auto config = nlohmann::json::parse(read_whole_file(*dir_ / "mrun_hf/config.json"));
  EXPECT_EQ(config["model_type"], "mistral");
  EXPECT_TRUE(config["sliding_window"].is_null());
  const std::string text = "<s>[INST] Who begat Enos? [/INST]Seth.</s>[INST] And then? [/INST]";
  std::vector<uint32_t> want;
  load_tokenizer(*dir_ / "mdata")->encode(text, want);
  EXPECT_EQ(transformers_ids("mrun_hf", text), want);
}

// Hostile use that once lost or corrupted work, or crashed: each is one clear line now, and the
// run directory keeps what it had.
TEST_F(Cli, HostileRunsLoseNothing) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  auto slurp = [&](const std::string& f) {
    std::ifstream in(*dir_ / f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string T = std::string(kTiny) + " --train.eval_batches=1 --train.eval_every=0";
  Result a = run("train " + T + " --train.steps=4 --run.checkpoint_every=2 --run.dir=hr", d());
  ASSERT_EQ(a.code, 0) << a.out;
  const std::string summary = slurp("hr/summary.json"), config = slurp("hr/config.toml"), metrics = slurp("hr/metrics.jsonl");
  // resume to a step count at or below the checkpoint's: refused, nothing rewritten
  for (const char* steps : {"3", "4"})
    expect_error(std::string("train --resume hr --train.steps=") + steps,
                 std::string("train.steps = ") + steps + " is not above the step of hr/ckpt-4 (4): nothing to train");
  EXPECT_EQ(slurp("hr/summary.json"), summary);
  EXPECT_EQ(slurp("hr/config.toml"), config);
  // a resume without checkpoints at the end: export takes the final model (step 6), not ckpt-4
  Result r = run("train --resume hr --train.steps=6 --run.checkpoint_every=0", d());
  ASSERT_EQ(r.code, 0) << r.out;
  Result x = run("export hr --out hr_x", d());
  ASSERT_EQ(x.code, 0) << x.out;
  EXPECT_NE(x.out.find("export: hr/model.safetensors -> "), std::string::npos) << x.out;
  SafeTensors xs(*dir_ / "hr_x/model.safetensors"), fs(*dir_ / "hr/model.safetensors");
  const int64_t n = 257 * 64;
  EXPECT_EQ(0, std::memcmp(xs.f32("transformer.wte.weight", n), fs.f32("transformer.wte.weight", n), n * 4));
  // a fresh start over the run that fails before its first checkpoint keeps the old run resumable
  const std::string config6 = slurp("hr/config.toml");
  expect_error("train " + T + " --train.steps=4 --train.lr=inf --run.dir=hr", "train.lr: expected a finite number >= 0, got inf");
  Result f = run("train " + T + " --train.steps=30 --train.lr=1e30 --train.weight_decay=0 --train.warmup_steps=0 --run.checkpoint_every=10 --run.dir=hr", d());
  EXPECT_EQ(f.code, 2) << f.out;  // diverges before step 10
  EXPECT_NE(f.out.find("gradients are not finite"), std::string::npos) << f.out;
  EXPECT_NE(f.out.find("(lower train.lr or train.grad_clip)"), std::string::npos) << f.out;  // fp32: not "use bf16"
  EXPECT_EQ(f.out.find("precision.compute"), std::string::npos) << f.out;
  EXPECT_EQ(slurp("hr/config.toml"), config6);
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "hr/ckpt-4"));
  ASSERT_EQ(run("train --resume hr --train.steps=7 --run.checkpoint_every=0", d()).code, 0);
  // three event files (a fresh run, two resumes): tensorboard shows each step once, as metrics.jsonl
  EXPECT_TRUE(test::run_reference("tensorboard_check.py", *dir_ / "hr"));
  // metrics.jsonl that cannot be written (disk full) stops the run
  std::filesystem::create_directories(*dir_ / "full");
  std::filesystem::create_symlink("/dev/full", *dir_ / "full/metrics.jsonl");
  Result full = run("train " + T + " --train.steps=2 --run.dir=full", d());  // after the run's banner
  EXPECT_EQ(full.code, 2) << full.out;
  EXPECT_NE(full.out.find("frugal: error: full/metrics.jsonl: cannot write: No space left on device\n"), std::string::npos) << full.out;
  // a resume with another seed would reshuffle mid-epoch; a state.json edited to another step
  expect_error("train --resume hr --train.steps=9 --train.seed=7", "but hr/ckpt-4 was trained with seed 1337");
  std::filesystem::copy(*dir_ / "hr", *dir_ / "hr2", std::filesystem::copy_options::recursive);
  auto state = nlohmann::json::parse(slurp("hr2/ckpt-4/state.json"));
  state["step"] = 5;
  std::ofstream(*dir_ / "hr2/ckpt-4/state.json") << state.dump();
  expect_error("train --resume hr2 --train.steps=9", "hr2/ckpt-4/state.json: step 5, but the checkpoint is ckpt-4");
  // a directory named like a checkpoint whose step no run can have
  std::filesystem::create_directories(*dir_ / "hr/ckpt-99999999999");
  expect_error("train --resume hr --train.steps=9", "hr/ckpt-99999999999: step 99999999999 is out of range");
  expect_error("export hr --out hr_y", "hr/ckpt-99999999999: step 99999999999 is out of range");
  // a model far beyond this host's memory: refused before anything is allocated, within 2 s
  auto t0 = std::chrono::steady_clock::now();
  expect_error("train --model.preset=gpt2-xl --train.micro_batch=64 --train.seq_len=1024 --data.train=data/train_*.bin "
               "--data.val=data/val_*.bin --run.dir=xl",
               "memory preflight: this run needs ");
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
  Result xl = run("train --model.preset=gpt2-xl --train.micro_batch=64 --train.seq_len=1024 --data.train=data/train_*.bin "
                  "--data.val=data/val_*.bin --run.dir=xl", d());
  for (const char* part : {"GiB per rank (params ", "activations ", "but this host has ", "no setting of this model fits this host",
                           "memory.preflight = false runs it anyway"})  // its fp32 states alone are 23 GiB
    EXPECT_NE(xl.out.find(part), std::string::npos) << part << "\n" << xl.out;
  // gpt2 at micro-batch 512: the same global batch fits in smaller micro-batches, and it says which
  expect_error("train --model.preset=gpt2 --train.micro_batch=512 --train.seq_len=1024 --run.dir=xl --data.train=data/train_*.bin "
               "--data.val=data/val_*.bin",
               "the cheapest setting that fits is 1 x " + cpu_device_name() + ", ddp, ");
  EXPECT_FALSE(std::filesystem::exists(*dir_ / "xl"));
  // values that were silently accepted, and messages that were unclear
  expect_error("sample --run hr --tokens -5", "--tokens: expected a positive integer, got -5");
  expect_error("sample --run hr --top-k -3", "--top-k: expected 0 (all) or a positive integer, got -3");
  expect_error("sample --run hr --temperature nan", "--temperature: expected a finite number >= 0 (0: greedy), got nan");
  expect_error("eval --run hr --batches -1", "--batches: expected 0 (all) or a positive integer, got -1");
  expect_error("prepare corpus.txt --out v0 --val-every 0", "--val-every: expected an integer >= 2, got 0");
  expect_error("prepare corpus.txt --out v0 --val-fraction 0", "--val-fraction: expected a number in (0, 1), got 0");
  expect_error("prepare corpus.txt --out v0 --val-docs 0", "--val-docs: expected a positive count, got 0");
  expect_error("prepare --format jsonl c.jsonl --out v0 --field body", "--field: names the text of --format text's .jsonl documents");
  expect_error("plan --preset gpt2 --tokens inf", "--tokens: expected the training budget in tokens (a number > 0 and at most 1e18, e.g. 10e9), got inf");
  expect_error("plan --preset gpt2 --tokens 1e30", "--tokens: expected the training budget in tokens (a number > 0 and at most 1e18, e.g. 10e9), got 1e+30");
  expect_error("plan --preset gpt2 --tokens 1e9 --devices 0", "--devices: expected a positive number, got '0'");
  expect_error("plan --preset gpt2 --tokens 1e9 --max-hours -1", "--max-hours: expected a positive number, got '-1'");
  expect_error("plan --preset gpt2 --tokens 1e9 --top 0", "--top: expected a positive number, got '0'");
  // a directory where a file is expected (--mfu's crashed in the JSON parser)
  expect_error("plan --preset gpt2 --tokens 1e9 --mfu hr", "--mfu: 'hr' is neither a number nor a readable calibration file");
  expect_error("plan --preset gpt2 --tokens 1e9 --catalogue hr", "hr: a directory, expected a file");
  expect_error("export hr --out hx --max-shard-size 1e30", "--max-shard-size: expected bytes or a size like \"16GiB\", got '1e30'");
  expect_error("train --train.steps 3", "--train.steps: expected --train.steps=VALUE (an override takes '=', not a space)");
  expect_error("train --run.dir=", "--run.dir: run.dir: expected a path, got an empty string");
  expect_error("train " + T + " --init-from data --run.dir=nowhere", "data: no model.safetensors or model.safetensors.index.json in this directory");
  EXPECT_EQ(slurp("hr/metrics.jsonl").size() > metrics.size(), true);
}

TEST_F(Cli, PlanSearchesRanksAndExplains) {
  Result r = run("plan --preset gpt2 --tokens 10e9 --device a100-80gb --devices 8 --top 3", d());
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* s : {"searched 224 configurations", "   1 ", "(same cost and time, ", "the best of every other setting:", "[recompute full] 8 x a100-80gb",
                        "costs $", "the cheapest in detail:", "memory per device:", "budget: 1e+10 tokens"})
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << r.out;
  Result j = run("plan --preset gpt2 --tokens 10e9 --json --top 4", d());
  ASSERT_EQ(j.code, 0) << j.out;
  auto js = nlohmann::json::parse(j.out);
  ASSERT_EQ(js["plans"].size(), 4u);
  for (size_t i = 1; i < 4; i++) {
    EXPECT_GE(js["plans"][i]["cost"].get<double>(), js["plans"][i - 1]["cost"].get<double>());
    EXPECT_TRUE(js["plans"][i].contains("lost_because"));
  }
  // one configuration, every setting given, as JSON: the memory categories add up
  Result one = run("plan --preset gpt2 --tokens 1e9 --device h100-sxm --devices 4 --strategy zero2 --precision bf16 "
                   "--recompute selective --micro-batch 8 --json", d());
  ASSERT_EQ(one.code, 0) << one.out;
  auto p = nlohmann::json::parse(one.out);
  size_t sum = 0;
  for (const char* c : {"params", "grads", "optimizer", "activations", "comm", "workspace", "runtime"})
    sum += p["memory"][c].get<size_t>();
  EXPECT_EQ(sum, p["memory"]["total"].get<size_t>());
  EXPECT_GT(p["memory"]["comm"].get<size_t>(), 0u);
  EXPECT_GT(p["memory"]["runtime"].get<size_t>(), size_t(32) << 20);  // a GPU: cuBLASLt's workspace and more
  EXPECT_EQ(p["batch_tokens"].get<int64_t>(), 8 * 1024 * 4);
  // a config that does not fit says by how much and the cheapest setting that does
  Result no = run("plan --preset gpt2-xl --tokens 1e9 --device l4 --devices 1 --strategy ddp --precision fp32 "
                  "--recompute none --micro-batch 8", d());
  EXPECT_EQ(no.code, 1) << no.out;
  EXPECT_NE(no.out.find("DOES NOT FIT (40.0 GiB over)"), std::string::npos) << no.out;
  EXPECT_NE(no.out.find("to fit: the cheapest setting that fits is "), std::string::npos) << no.out;
  // a frugal config and a Hugging Face config.json give the model
  std::ofstream(*dir_ / "config.json") << R"({"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 257, "n_positions": 128})";
  Result hf = run("plan -c config.json --tokens 1e6 --device cpu-avx512 --devices 1", d());
  EXPECT_EQ(hf.code, 0) << hf.out;
  EXPECT_NE(hf.out.find("0.13 M parameters"), std::string::npos) << hf.out;
  Result cf = run("plan -c " + std::string(FRUGAL_SOURCE_DIR) + "/configs/mini.toml --tokens 1e6", d());
  EXPECT_EQ(cf.code, 0) << cf.out;
  EXPECT_NE(cf.out.find("x " + cpu_device_name() + ","), std::string::npos) << cf.out;  // the config's: this CPU's
}

TEST_F(Cli, CalibrateAndReportAFinishedRun) {
  ASSERT_EQ(run("prepare corpus.txt --out data --val-every 5", d()).code, 0);
  ASSERT_EQ(run(std::string("train ") + kTiny + " --train.steps=4 --train.eval_every=2 --train.eval_batches=1 --run.dir=run2", d()).code, 0);
  Result c = run("plan --calibrate run2", d());
  ASSERT_EQ(c.code, 0) << c.out;
  EXPECT_NE(c.out.find("MFU "), std::string::npos) << c.out;
  auto cal = nlohmann::json::parse(std::ifstream(*dir_ / "run2/calibration.json"));
  EXPECT_GT(cal["mfu"].get<double>(), 0.0);
  EXPECT_EQ(cal["steps"].get<int>(), 3);  // the first step warms up
  // plan uses it: the predicted tokens/s is MFU x peak / FLOPs per token
  Result p = run("plan --preset tiny --seq-len 64 --micro-batch 4 --devices 1 --device cpu-avx512 --strategy ddp "
                 "--precision fp32 --recompute none --tokens 1e6 --json --mfu run2/calibration.json", d());
  ASSERT_EQ(p.code, 0) << p.out;
  auto pj = nlohmann::json::parse(p.out);
  EXPECT_NEAR(pj["tokens_per_s"].get<double>(), cal["mfu"].get<double>() * 231e9 / pj["flops_per_token"].get<double>(),
              1e-6 * pj["tokens_per_s"].get<double>());
  Result r = run("report run2", d());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(std::filesystem::exists(*dir_ / "run2/report.html"));
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
  Result cuda = run(std::string("train ") + kTiny + " --train.steps=1 --device.backend=cuda --device.name=h100-sxm --run.dir=cuda_run", d());
  if (cuda.code != 0) {
    EXPECT_EQ(cuda.code, 2) << cuda.out;
    EXPECT_EQ(cuda.out.rfind("frugal: error: device.backend = cuda: ", 0), 0u) << cuda.out;
    EXPECT_EQ(std::count(cuda.out.begin(), cuda.out.end(), '\n'), 1) << cuda.out;
  }
  expect_error("eval --run nowhere", "nowhere/config.toml");
  expect_error("sample --run nowhere", "nowhere/config.toml");
  // plan: unknown device, a model that fits nowhere, a malformed config.json or catalogue
  expect_error("plan --preset gpt2 --tokens 1e9 --device tpu", "unknown device 'tpu' (known: a100-40gb, a100-80gb, cpu-amx, cpu-avx2, cpu-avx512, h100-sxm");
  expect_error("plan --preset gpt2-xl --tokens 1e9 --device l4 --devices 1 --strategy ddp",
               "plan: gpt2-xl fits nowhere in 56 configurations: the closest, 1 x l4, ddp, fp32, recompute full, micro-batch 1, "
               "needs 23.8 GiB per device, 2.3 GiB more than the 21.5 GiB usable; to fit: --device a100-40gb or a100-80gb");
  std::ofstream(*dir_ / "bad.json") << R"({"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": -1, "n_positions": 128})";
  expect_error("plan -c bad.json --tokens 1e9", "bad.json: vocab_size: expected a positive integer, got -1");
  std::ofstream(*dir_ / "devs.toml") << "[devices.x]\ndescription = 1\n";
  expect_error("plan --preset gpt2 --tokens 1e9 --catalogue devs.toml", "devs.toml: devices.x.description: expected a string");
  expect_error("plan --preset gpt2", "--tokens: expected the training budget in tokens");
  expect_error("plan --tokens 1e9", "plan: give the model as --preset NAME or -c FILE");
  expect_error("plan --preset gpt2 --tokens 1e9 --precision half", "--precision: expected fp32, bf16 or fp16, got 'half'");
  expect_error("plan --preset gpt2 --tokens 1e9 --strategy zero4", "--strategy: dist.strategy: expected ddp, zero1, zero2, zero3 (or fsdp) or yafsdp, got 'zero4'");
  expect_error("plan --calibrate nowhere", "nowhere/config.toml");
  expect_error("report nowhere", "nowhere/config.toml");
}

}  // namespace
}  // namespace frugal
