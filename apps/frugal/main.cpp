// frugal: the command line. Thin: parse, call the library, print.
//   frugal train [config.toml] [--resume RUN_DIR] [--init-from FILE] [--section.key=value ...]
//   frugal export RUN_DIR|CHECKPOINT_DIR|FILE --out DIR
//   frugal prepare [FILES...] [--out DIR] [--val-every N] [--tokenizer byte|gpt2]
//                  [--train-tokenizer --vocab-size N [--model-type bpe|unigram]]
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

// resume: a run directory (its config.toml is the base, unless a config file is given);
// init_from: weights to start from.
static int cmd_train(const std::string& config, const std::vector<std::string>& extras,
                     const std::string& resume, const std::string& init_from) {
  std::vector<std::string> overrides;
  for (auto& a : extras) {
    if (a.rfind("--", 0) != 0 || a.find('=') == std::string::npos)
      user_error("{}: unexpected argument (expected --section.key=value)", a);
    overrides.push_back(a.substr(2));
  }
  RunConfig cfg = load_config(config.empty() && !resume.empty() ? resume + "/config.toml" : config, overrides);
  if (!resume.empty()) cfg.run.dir = resume;
  if (!init_from.empty()) cfg.train.init_from = init_from;
  auto comm = make_comm();
  if (comm->rank() == 0) prepare_default_corpus_if_missing(cfg);
  comm->barrier();
  try {
    train(cfg, *comm, !resume.empty());
  } catch (const std::exception& e) {
    if (comm->size() == 1) throw;
    // one rank's failure ends every rank, with a message naming it, instead of a hang
    std::fprintf(stderr, "frugal: rank %d of %d: error: %s\n", comm->rank(), comm->size(), e.what());
    abort_world(2);
  }
  return 0;
}

// The tokenizer of the run's training data (tokenizer.json next to the shards; none: byte-level),
// which must match the model's vocabulary.
static std::unique_ptr<Tokenizer> run_tokenizer(const std::string& run, const GptConfig& c) {
  RunConfig cfg = load_config(run + "/config.toml", {});
  std::filesystem::path p(cfg.data.train);
  std::string dir = std::filesystem::is_directory(p) ? p.string() : p.parent_path().string();
  if (dir.empty()) dir = ".";
  auto tok = load_tokenizer(dir);
  if (tok->vocab_size() != c.vocab_size)
    user_error("{}/model.safetensors: vocab_size {}, but the {} tokenizer of its data ({}) has {}",
               run, c.vocab_size, to_string(tok->kind()), dir, tok->vocab_size());
  return tok;
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

// The weights of a run (its newest checkpoint, else its final model), of a checkpoint directory
// or a file -> DIR/model.safetensors + DIR/config.json for transformers.
static int cmd_export(const std::string& from, const std::string& out) {
  namespace fs = std::filesystem;
  std::string weights = from;
  if (fs::is_directory(from)) {
    std::string ckpt = latest_checkpoint(from);
    weights = (ckpt.empty() ? from : ckpt) + "/model.safetensors";
  }
  GptConfig c = read_model_config(weights);
  Gpt model(c, cpu_backend());
  load_model(weights, model);
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) user_error("{}: cannot create the directory: {}", out, ec.message());
  save_model(out + "/model.safetensors", model);
  save_hf_config(out + "/config.json", c);
  fmt::print("export: {} -> {}/model.safetensors, {}/config.json (GPT2LMHeadModel)\n", weights, out, out);
  return 0;
}

static int cmd_sample(const std::string& run, const std::string& prompt, int num_tokens,
                      double temperature, int top_k, uint64_t seed) {
  std::string weights = run + "/model.safetensors";
  GptConfig c = read_model_config(weights);
  auto tok = run_tokenizer(run, c);
  if (temperature < 0) user_error("--temperature: expected a number >= 0, got {}", temperature);
  Gpt model(c, cpu_backend());
  load_model(weights, model);
  model.allocate(1, c.context);
  std::vector<uint32_t> enc;
  tok->encode(prompt, enc);
  std::vector<int32_t> tokens(enc.begin(), enc.end()), generated;
  if (tokens.empty()) tokens.push_back(int32_t(tok->eot()));
  size_t printed = 0;  // bytes of the decoded continuation printed so far
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
    generated.push_back(next);
    std::string text = tok->decode(generated);  // whole: a piece's text can depend on its neighbours
    fmt::print("{}", text.substr(std::min(printed, text.size())));
    printed = text.size();
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
  std::string resume, init_from;
  train_cmd->add_option("--resume", resume, "continue the run in this directory from its newest checkpoint")
      ->check(CLI::ExistingDirectory);
  train_cmd->add_option("--init-from", init_from, "start from these weights (safetensors, Hugging Face GPT-2 layout)");
  train_cmd->allow_extras();
  train_cmd->footer("Any setting can be overridden: --section.key=value, e.g. --train.steps=100");

  auto* prep_cmd = app.add_subcommand("prepare", "turn text files into token shards (no files: the King James Bible)");
  std::vector<std::string> inputs;
  std::string out_dir = kDefaultCorpusDir;
  int val_every = 20;
  std::string tokenizer = "byte";
  bool train_tokenizer = false;
  TokenizerOptions tok_opt;
  prep_cmd->add_option("files", inputs, "text files, one document each")->check(CLI::ExistingFile);
  prep_cmd->add_option("--out", out_dir, "output directory");
  prep_cmd->add_option("--val-every", val_every, "every N-th 8192-token chunk goes to validation");
  prep_cmd->add_option("--tokenizer", tokenizer, "byte (257 ids) or gpt2 (GPT-2's BPE, 50257 ids)")
      ->check(CLI::IsMember({"byte", "gpt2"}));
  prep_cmd->add_option("--gpt2-dir", tok_opt.gpt2_dir, "where GPT-2's encoder.json and vocab.bpe are");
  auto* train_tok = prep_cmd->add_flag("--train-tokenizer", train_tokenizer, "train a SentencePiece vocabulary on the corpus");
  prep_cmd->add_option("--vocab-size", tok_opt.vocab_size, "size of the trained vocabulary")->needs(train_tok);
  prep_cmd->add_option("--model-type", tok_opt.model_type, "bpe or unigram")
      ->check(CLI::IsMember({"bpe", "unigram"}))->needs(train_tok);
  train_tok->needs(prep_cmd->get_option("--vocab-size"))->excludes(prep_cmd->get_option("--tokenizer"));

  auto* eval_cmd = app.add_subcommand("eval", "mean loss of a trained model over a token split");
  std::string run_dir, data;
  int batches = 0;
  eval_cmd->add_option("--run", run_dir, "run directory")->required();
  eval_cmd->add_option("--data", data, "token shards (default: the run's validation split)");
  eval_cmd->add_option("--batches", batches, "micro-batches to evaluate (0: all)");

  auto* export_cmd = app.add_subcommand("export", "write a model for Hugging Face transformers (model.safetensors + config.json)");
  std::string export_from;
  export_cmd->add_option("from", export_from, "a run directory (its newest checkpoint, else its model), a checkpoint directory or a model file")
      ->required()->check(CLI::ExistingPath);
  export_cmd->add_option("--out", out_dir, "output directory")->required();

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
    if (*train_cmd) return cmd_train(config, train_cmd->remaining(), resume, init_from);
    if (*export_cmd) return cmd_export(export_from, out_dir);
    if (*prep_cmd) {
      tok_opt.kind = train_tokenizer ? TokenizerKind::sentencepiece
                     : tokenizer == "gpt2" ? TokenizerKind::gpt2 : TokenizerKind::byte;
      PrepareStats st = prepare_corpus(inputs, out_dir, val_every, tok_opt);
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
