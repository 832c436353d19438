// frugal: the command line. Thin: parse, call the library, print.
//   frugal train [config.toml] [--section.key=value ...]
//   frugal prepare [FILES...] [--out DIR] [--val-every N]
//   frugal eval --run DIR [--data SHARDS] [--batches N]
//   frugal sample --run DIR [--prompt TEXT] [--tokens N] [--temperature X] [--top-k K] [--seed S]
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "data/data.h"
#include "dist/comm.h"
#include "train/train.h"

using namespace frugal;

static const char* kDefaultCorpusDir = "data/kjv";

static void prepare_default_corpus_if_missing(const RunConfig& cfg) {
  if (cfg.data.train != DataSettings{}.train || cfg.data.val != DataSettings{}.val) return;
  if (std::filesystem::exists(std::string(kDefaultCorpusDir) + "/train_000.bin")) return;
  fmt::print("preparing the default corpus (King James Bible, byte-level) in {}/\n", kDefaultCorpusDir);
  prepare_corpus({}, kDefaultCorpusDir, 20);
}

static int cmd_train(const std::string& config, const std::vector<std::string>& extras) {
  std::vector<std::string> overrides;
  for (auto& a : extras) {
    if (a.rfind("--", 0) != 0 || a.find('=') == std::string::npos)
      user_error("{}: unexpected argument (expected --section.key=value)", a);
    overrides.push_back(a.substr(2));
  }
  RunConfig cfg = load_config(config, overrides);
  auto comm = make_comm(cfg.device.backend == "cuda");
  if (comm->rank() == 0) prepare_default_corpus_if_missing(cfg);
  comm->barrier();
  try {
    train(cfg, *comm);
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    // one rank's failure ends every rank, with a message naming it, instead of a hang
    std::fprintf(stderr, "frugal: rank %d of %d: error: %s\n", comm->rank(), comm->size(), e.what());
    abort_world(2);
  }
  return 0;
}

static void require_byte_vocab(const GptConfig& c, const std::string& where) {
  if (c.vocab_size != kByteVocab)
    user_error("{}: vocab_size {} needs a tokenizer frugal does not have yet (byte-level is {})",
               where, c.vocab_size, kByteVocab);
}

static int cmd_eval(const std::string& run, const std::string& data, int batches) {
  RunConfig cfg = load_config(run + "/config.toml", {});
  std::string weights = run + "/model.safetensors";
  cfg.model = read_model_config(weights);
  std::string pattern = data.empty() ? cfg.data.val : data;
  DataLoader loader(resolve_shards(pattern, data.empty() ? "data.val" : "--data"),
                    cfg.model.vocab_size, cfg.train.micro_batch, cfg.train.seq_len, 0, false);
  Gpt model(cfg.model, cpu_backend(), cfg.precision.compute);
  load_model(weights, model);
  model.allocate(cfg.train.micro_batch, cfg.train.seq_len);
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  double loss = evaluate([&](const int32_t* in, const int32_t* tg) { return model.forward_loss(in, tg, B, T); },
                         loader, batches);
  int64_t n = batches > 0 ? batches : loader.num_windows() / loader.batch();
  fmt::print("eval: loss {:.4f} (perplexity {:.3f}) over {} tokens of {}\n", loss, std::exp(loss),
             n * loader.batch() * loader.seq_len(), pattern);
  return 0;
}

static int cmd_sample(const std::string& run, const std::string& prompt, int num_tokens,
                      double temperature, int top_k, uint64_t seed) {
  std::string weights = run + "/model.safetensors";
  GptConfig c = read_model_config(weights);
  require_byte_vocab(c, weights);
  if (temperature < 0) user_error("--temperature: expected a number >= 0, got {}", temperature);
  Gpt model(c, cpu_backend());
  load_model(weights, model);
  model.allocate(1, c.context);
  std::vector<uint32_t> enc;
  byte_encode(prompt, enc);
  std::vector<int32_t> tokens(enc.begin(), enc.end());
  if (tokens.empty()) tokens.push_back(kByteEot);
  Rng rng(seed);
  std::vector<float> logits;
  std::vector<std::pair<float, int>> cand;
  fmt::print("{}", prompt);
  for (int i = 0; i < num_tokens; i++) {
    int T = std::min<int>(int(tokens.size()), c.context);
    model.logits(tokens.data() + tokens.size() - T, 1, T, true, logits);
    int next = 0;
    if (temperature == 0.0) {
      next = int(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      cand.clear();
      for (int v = 0; v < int(logits.size()); v++) cand.push_back({logits[v], v});
      size_t k = top_k > 0 ? std::min<size_t>(size_t(top_k), cand.size()) : cand.size();
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), std::greater<>());
      double sum = 0.0;
      std::vector<double> p(k);
      for (size_t j = 0; j < k; j++) sum += p[j] = std::exp((cand[j].first - cand[0].first) / temperature);
      double u = rng.uniform() * sum;
      size_t j = 0;
      while (j + 1 < k && (u -= p[j]) > 0) j++;
      next = cand[j].second;
    }
    tokens.push_back(next);
    fmt::print("{}", byte_decode({next}));
    std::fflush(stdout);
  }
  fmt::print("\n");
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"frugal: train GPT-style language models on hardware a small team can afford"};
  app.require_subcommand(1);

  auto* train_cmd = app.add_subcommand("train", "train a model (no arguments: the default model on the default corpus)");
  std::string config;
  train_cmd->add_option("config", config, "TOML config file")->check(CLI::ExistingFile);
  train_cmd->allow_extras();
  train_cmd->footer("Any setting can be overridden: --section.key=value, e.g. --train.steps=100");

  auto* prep_cmd = app.add_subcommand("prepare", "turn text files into token shards (no files: the King James Bible)");
  std::vector<std::string> inputs;
  std::string out_dir = kDefaultCorpusDir;
  int val_every = 20;
  prep_cmd->add_option("files", inputs, "text files, one document each")->check(CLI::ExistingFile);
  prep_cmd->add_option("--out", out_dir, "output directory");
  prep_cmd->add_option("--val-every", val_every, "every N-th 8192-token chunk goes to validation");

  auto* eval_cmd = app.add_subcommand("eval", "mean loss of a trained model over a token split");
  std::string run_dir, data;
  int batches = 0;
  eval_cmd->add_option("--run", run_dir, "run directory")->required();
  eval_cmd->add_option("--data", data, "token shards (default: the run's validation split)");
  eval_cmd->add_option("--batches", batches, "micro-batches to evaluate (0: all)");

  auto* sample_cmd = app.add_subcommand("sample", "generate text from a trained model");
  std::string prompt;
  int num_tokens = 200, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 1;
  sample_cmd->add_option("--run", run_dir, "run directory")->required();
  sample_cmd->add_option("--prompt", prompt, "text to continue");
  sample_cmd->add_option("--tokens", num_tokens, "tokens to generate");
  sample_cmd->add_option("--temperature", temperature, "0: greedy");
  sample_cmd->add_option("--top-k", top_k, "sample among the k most likely (0: all)");
  sample_cmd->add_option("--seed", seed, "random seed");

  try {
    app.parse(argc, argv);
    if (*train_cmd) return cmd_train(config, train_cmd->remaining());
    if (*prep_cmd) {
      PrepareStats st = prepare_corpus(inputs, out_dir, val_every);
      fmt::print("prepare: {} train + {} val tokens -> {}\n", st.train_tokens, st.val_tokens,
                 fmt::join(st.files, ", "));
      return 0;
    }
    if (*eval_cmd) return cmd_eval(run_dir, data, batches);
    if (*sample_cmd) return cmd_sample(run_dir, prompt, num_tokens, temperature, top_k, seed);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const UserError& e) {
    std::fprintf(stderr, "frugal: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
