// frugal: the command line. Thin: parse, call the library, print.
//   frugal train [config.toml] [--resume RUN_DIR] [--init-from FILE] [--section.key=value ...]
//   frugal export RUN_DIR|CHECKPOINT_DIR|FILE --out DIR
//   frugal prepare [FILES|DIRS|GLOBS...] [--out DIR] [--val-fraction F | --val-docs N | --val-every N]
//                  [--seed S] [--shard-tokens N] [--threads N] [--field NAME] [--skip-bad-lines]
//                  [--tokenizer byte|gpt2|PATH [--tiktoken-pattern gpt2|cl100k|llama3|qwen2]]
//                  [--train-tokenizer --vocab-size N [--model-type bpe|unigram]] [--format text|jsonl]
//   frugal eval --run DIR [--data SHARDS] [--batches N]
//   frugal sample --run DIR [--prompt TEXT] [--tokens N] [--temperature X] [--top-k K] [--seed S] [--chat [--system TEXT]]
//   frugal plan (--preset NAME | -c FILE) --tokens N [--device NAME] [--devices N] [settings] [--json]
//   frugal plan --calibrate RUN_DIR [--json]
//   frugal report RUN_DIR
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>
#include <set>

#include "data/data.h"
#include "dist/comm.h"
#include "plan/plan.h"
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
  // A Hugging Face model directory's config.json gives the model's shape, before the flags (an
  // explicit --model.* flag still wins, and the weights must then fit it); so does the metadata
  // of a model file frugal wrote (a run's model.safetensors), where no config.json is beside it.
  if (resume.empty() && !init_from.empty()) {
    const std::string hf_config = hf_config_path(init_from);
    const std::optional<ModelConfig> shape = hf_config.empty() ? frugal_model_config(init_from) : read_hf_config(hf_config);
    if (shape) {
      std::vector<std::string> keys = model_overrides(*shape);
      overrides.insert(overrides.begin(), keys.begin(), keys.end());
    }
  }
  const std::string config_path = config.empty() && !resume.empty() ? resume + "/config.toml" : config;
  RunConfig cfg = load_config(config_path, overrides);
  // PEFT adapters to go on from give the LoRA's rank, alpha and targets, as config.json the shape
  if (resume.empty() && !cfg.train.lora_init_from.empty()) {
    const LoraConfig l = read_adapter_config(cfg.train.lora_init_from);
    overrides.insert(overrides.begin(), {fmt::format("lora.rank={}", l.rank), fmt::format("lora.alpha={}", l.alpha),
                                         fmt::format("lora.dropout={}", l.dropout),
                                         fmt::format("lora.targets=\"{}\"", fmt::join(l.targets, ","))});
    cfg = load_config(config_path, overrides);
  }
  if (!resume.empty()) cfg.run.dir = resume;
  if (!init_from.empty()) cfg.train.init_from = init_from;
  auto comm = make_comm(cfg.device.backend == "cuda", cfg.dist.timeout);
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

// The directory of a run's training shards, where prepare put their tokenizer.
static std::string data_dir(const RunConfig& cfg) {
  std::filesystem::path p(cfg.data.train);
  std::string dir = std::filesystem::is_directory(p) ? p.string() : p.parent_path().string();
  return dir.empty() ? "." : dir;
}

// The tokenizer of the run's training data (described next to the shards; none: byte-level),
// whose ids the model's vocabulary must hold.
static std::unique_ptr<Tokenizer> run_tokenizer(const std::string& run, const RunWeights& w) {
  const ModelConfig& c = w.cfg.model;
  const std::string dir = data_dir(w.cfg);
  auto tok = load_tokenizer(dir);
  // a larger model vocabulary is padding (nanoGPT's 50304, Qwen2's 151936): never sampled
  if (tok->vocab_size() > c.vocab_size)
    user_error("{}/model.safetensors: vocab_size {}, but the {} tokenizer of its data ({}) has {} ids",
               run, c.vocab_size, to_string(tok->kind()), dir, tok->vocab_size());
  return tok;
}

static int cmd_eval(const std::string& run, const std::string& data, int batches) {
  if (batches < 0) user_error("--batches: expected 0 (all) or a positive integer, got {}", batches);
  const RunWeights w = find_run_weights(run);
  const RunConfig& cfg = w.cfg;
  std::string pattern = data.empty() ? cfg.data.val : data;
  const std::vector<std::string> shards = resolve_shards(pattern, data.empty() ? "data.val" : "--data");
  DataLoader loader(shards, cfg.model.vocab_size, cfg.train.micro_batch, cfg.train.seq_len, 0, false);
  Model model(cfg.model, cpu_backend(), cfg.precision.compute);
  load_run_weights(w, model);
  if (cfg.data.document_mask) {  // as the run evaluated
    const DocumentCut cut = document_cut(shards.front(), loader.records());
    model.set_documents(cut.sep, cut.after);
    loader.set_documents(cut);
  }
  model.allocate(cfg.train.micro_batch, cfg.train.seq_len);
  const int B = cfg.train.micro_batch, T = cfg.train.seq_len;
  double loss = evaluate([&](const int32_t* in, const int32_t* tg) { return model.forward_loss(in, tg, B, T); },
                         loader, batches);
  const int64_t n = eval_batch_count(loader, batches);
  if (std::isnan(loss))
    user_error("{}: the {} tokens evaluated hold no target trained on (their loss masks are 0: prompts only){}", pattern,
               n * loader.batch() * loader.seq_len(), batches > 0 && batches == n ? ": give more --batches" : "");
  fmt::print("eval: loss {:.4f} (perplexity {:.3f}) over {} tokens of {}{}\n", loss, std::exp(loss),
             n * loader.batch() * loader.seq_len(), pattern,
             batches > n ? fmt::format(" (all its {} batches: --batches {} is more than it holds)", n, batches) : "");
  return 0;
}

// The ids transformers starts and stops generating at, from the run's data: end of text (the
// tokenizer's eos), and a chat template's end of turn where it is another single token; and its bos.
static SpecialIds special_ids(const std::string& run, const RunWeights& w) {
  SpecialIds ids;
  auto tok = run_tokenizer(run, w);
  ids.eos.push_back(tok->eot());
  const std::string dir = data_dir(w.cfg);
  std::vector<uint32_t> one;
  const std::string turn = ChatTemplate::of(dir, *tok).end_of_turn();
  if (!turn.empty()) tok->encode(turn, one);
  if (one.size() == 1 && one[0] != tok->eot()) ids.eos.push_back(one[0]);
  const int64_t bos = tok->bos() >= 0 ? tok->bos() : tok->bos_prefix();  // a SentencePiece model's: the one it puts first
  if (bos >= 0) ids.bos.push_back(bos);
  return ids;
}

// The newest weights of a run (its final model, or a newer checkpoint's while it trains), of a
// checkpoint directory or a file -> DIR/model.safetensors + DIR/config.json for transformers; a
// LoRA run's adapters -> DIR in PEFT's format, or with merge the base with W + (alpha/r) B A in
// every targeted layer, as peft's merge_and_unload.
static int cmd_export(const std::string& from, const std::string& out, int64_t max_shard_bytes, bool merge) {
  if (max_shard_bytes < 1) user_error("--max-shard-size: expected a size above 0 (e.g. 2GB)");
  namespace fs = std::filesystem;
  const bool file = !fs::is_directory(from);
  const RunWeights w = file ? RunWeights{} : find_run_weights(from);
  if (merge && !w.lora()) user_error("--merge: {} has no LoRA adapters to merge (its weights are whole)", from);
  ModelConfig c = file ? read_model_config(from) : w.cfg.model;
  auto model = std::make_unique<Model>(c, cpu_backend());  // a QLoRA base quantized as it trained
  if (file) load_model(from, *model);
  else load_run_weights(w, *model);
  if (merge && c.lora.base != BaseFormat::compute) {  // merged into what the quantized base computed with: deq(q)
    c.lora.base = BaseFormat::compute;
    auto whole = std::make_unique<Model>(c, cpu_backend());
    std::vector<float> host;
    const auto src = model->named_params(), dst = whole->named_params();
    for (size_t k = 0; k < src.size(); k++) {
      host.resize(size_t(src[k].spec->numel));
      model->read_param(src[k], host.data());
      whole->write_param(dst[k], host.data());
    }
    model = std::move(whole);
  }
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec) user_error("{}: cannot create the directory: {}", out, ec.message());
  const std::string source = file ? from : w.dir + (w.lora() ? "/adapter" : "/model.safetensors");
  // the tokenizer the run's data was prepared with, as transformers' AutoTokenizer reads it
  std::vector<std::string> tokenizer_files;
  if (!file) {
    const fs::path data = data_dir(w.cfg);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", kChatTemplateFile, "tokenizer.model"})
      if (fs::is_regular_file(data / f, ec)) {
        std::string bytes = read_whole_file((data / f).string());
        write_file_atomic(out + "/" + f, bytes.data(), bytes.size());
        tokenizer_files.push_back(f);
      }
  }
  std::string tok_note = tokenizer_files.empty() ? "" : fmt::format(", {} from the data", fmt::join(tokenizer_files, ", "));
  // a Mistral model's tokenizer is read by transformers 5 as the model type says (see load_hf_tokenizer)
  const bool mistral = !file && c.family == Family::llama && !c.attention_bias && [&] {
    try {
      return tokenizer_info(data_dir(w.cfg)).model_type == "mistral";
    } catch (const UserError&) {
      return false;  // the data is gone: the weights still export
    }
  }();
  SpecialIds ids;  // GPT-2's end of text for a GPT-2 model alone; a run's from its data
  std::string ids_note;
  if (file && c.family == Family::gpt2 && c.vocab_size == kGpt2Vocab) ids = {{kGpt2Eot}, {kGpt2Eot}};
  try {
    if (!file) ids = special_ids(from, w);
  } catch (const UserError& e) {  // the data is gone: the weights still export
    ids_note = fmt::format(" (no bos/eos ids in config.json: {})", e.what());
  }
  if (w.lora() && !merge) {
    save_adapters(out, *model, w.cfg.train.init_from);
    fmt::print("export: {} -> {}/adapter_model.safetensors, {}/adapter_config.json{} (PEFT; --merge writes the merged model)\n",
               source, out, out, tok_note);
    return 0;
  }
  if (merge) model->merge_lora();
  const int files = save_model_dir(out, *model, max_shard_bytes);
  tok_note += ids_note;
  save_hf_config(out + "/config.json", c, ids, mistral);
  fmt::print("export: {}{} -> {}/{}, {}/config.json ({}){}\n", source, merge ? " merged into its base" : "", out,
             files == 1 ? "model.safetensors" : fmt::format("model.safetensors.index.json and {} shards", files), out,
             c.family == Family::gpt2                  ? "GPT2LMHeadModel"
             : c.sliding_window > 0 || mistral ? "MistralForCausalLM" : "LlamaForCausalLM",
             tok_note);
  return 0;
}

static int cmd_sample(const std::string& run, const std::string& prompt, int num_tokens,
                      double temperature, int top_k, uint64_t seed, bool chat, const std::string& system) {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    user_error("--temperature: expected a finite number >= 0 (0: greedy), got {}", temperature);
  if (num_tokens < 1) user_error("--tokens: expected a positive integer, got {}", num_tokens);
  if (top_k < 0) user_error("--top-k: expected 0 (all) or a positive integer, got {}", top_k);
  const RunWeights w = find_run_weights(run);
  const ModelConfig& c = w.cfg.model;
  auto tok = run_tokenizer(run, w);
  Model model(c, cpu_backend());
  load_run_weights(w, model);
  // generation ends at end of text, or with --chat at the end of the assistant's turn, as
  // instruction data was trained (prepare --format jsonl)
  std::string end_text;  // --chat: the end of the assistant's turn, which may take several tokens
  const ChatTemplate tmpl = chat ? ChatTemplate::of(data_dir(w.cfg), *tok) : ChatTemplate();
  std::vector<uint32_t> enc = tmpl.prompt_ids(*tok, prompt, system, chat), stop = {tok->eot()};
  if (chat) {
    std::vector<uint32_t> end;
    end_text = tmpl.end_of_turn();
    if (!end_text.empty()) tok->encode(end_text, end);
    if (end.size() == 1) stop.push_back(end[0]);
  }
  std::vector<int32_t> tokens(enc.begin(), enc.end()), generated;
  // the continuation is decoded after the prompt's last token (see decode_continuation), or as the
  // start of a text after a prompt of nothing but the BOS
  const bool bos_only = tokens.size() == 1 && tokens[0] == tok->bos_prefix();
  const std::vector<int32_t> context(tokens.end() - (bos_only ? 0 : std::min<ptrdiff_t>(ptrdiff_t(tokens.size()), 1)),
                                     tokens.end());
  if (tokens.empty()) tokens.push_back(int32_t(tok->eot()));
  // keys and values cached for the longest window this sampling reads, not the whole context
  // (llama-3.2-1b has 131072 positions): each new token costs one position's work
  // (Mistral's sliding window: no more than it, the keys its tokens attend to)
  model.start_cache(int(std::min<int64_t>(c.longest_sequence(), int64_t(tokens.size()) + num_tokens)));
  size_t printed = 0;  // bytes of the decoded continuation printed so far
  Rng rng(seed);
  std::vector<float> logits;
  std::vector<std::pair<float, int>> cand;
  std::vector<int> ids;  // what the tokenizer decodes: not the padding of the vocabulary, nor its holes
  for (int v = 0; v < c.vocab_size; v++)
    if (tok->has_id(v)) ids.push_back(v);
  if (!chat) fmt::print("{}", prompt);
  const int window = model.cache_capacity();
  if (int(tokens.size()) > window) tokens.erase(tokens.begin(), tokens.end() - window);
  model.prefill(tokens.data(), int(tokens.size()), logits);
  for (int i = 0; i < num_tokens; i++) {
    int next = ids[0];
    if (temperature == 0.0) {
      for (int v : ids)
        if (logits[size_t(v)] > logits[size_t(next)]) next = v;
    } else {
      cand.clear();
      for (int v : ids) cand.push_back({logits[size_t(v)], v});
      size_t k = top_k > 0 ? std::min<size_t>(size_t(top_k), cand.size()) : cand.size();
      if (k < cand.size()) std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), std::greater<>());
      const float top = std::max_element(cand.begin(), cand.begin() + k)->first;  // all of them: no sort
      double sum = 0.0;
      std::vector<double> p(k);
      for (size_t j = 0; j < k; j++) sum += p[j] = std::exp((cand[j].first - top) / temperature);
      double u = rng.uniform() * sum;
      size_t j = 0;
      while (j + 1 < k && (u -= p[j]) > 0) j++;
      next = cand[j].second;
    }
    if (std::find(stop.begin(), stop.end(), uint32_t(next)) != stop.end()) break;
    tokens.push_back(next);
    generated.push_back(next);
    if (i + 1 < num_tokens) {
      if (model.cached() < window) {
        model.next(next, logits);
      } else {  // the context is full: the last half of it again, then on
        const int keep = std::max(1, window / 2);
        model.prefill(tokens.data() + tokens.size() - keep, keep, logits);
      }
    }
    std::string text = decode_continuation(*tok, context, generated);  // whole: a piece's text can depend on its neighbours
    size_t show = text.size(), end_at = end_text.empty() ? std::string::npos : text.find(end_text);
    if (end_at != std::string::npos) {
      show = end_at;
    } else {  // what may be the start of the end marker waits for the next token
      for (size_t k = std::min(end_text.size() - (end_text.empty() ? 0 : 1), text.size()); k > 0; k--)
        if (text.ends_with(std::string_view(end_text).substr(0, k))) {
          show = text.size() - k;
          break;
        }
    }
    if (show > printed) fmt::print("{}", text.substr(printed, show - printed));
    printed = std::max(printed, show);
    std::fflush(stdout);
    if (end_at != std::string::npos) break;
  }
  fmt::print("\n");
  return 0;
}

// What `frugal plan` was given; empty strings and zeros are left to the search.
struct PlanArgs {
  std::string preset, config, device, strategy, precision, recompute, mfu, calibrate, data;
  int lora_rank = -1;  // -1: the config's
  std::string lora_targets, base;
  std::string catalogue = default_devices_path();
  double tokens = 0, max_hours = 0;
  int devices = 0, micro_batch = 0, seq_len = 0, top = 10;
  int64_t batch_tokens = 0, doc_tokens = 0;
  bool json = false;
};

static int cmd_calibrate(const PlanArgs& a) {
  Calibration c = calibrate(a.calibrate, a.catalogue);
  nlohmann::json j = c.to_json();
  std::string text = j.dump(2) + "\n";
  write_file_atomic(a.calibrate + "/calibration.json", text.data(), text.size());
  if (a.json) {
    fmt::print("{}", text);
  } else {
    fmt::print("calibrate: {} on {} rank(s) of {}, {}: median {:.4g} tokens/s, {:.1f} ms/step over {} steps\n"
               "           MFU {:.1f}% of {:.4g} TFLOP/s (the plan's FLOPs, recompute included)\n"
               "wrote {}/calibration.json (use: frugal plan --mfu {}/calibration.json ...)\n",
               c.run_dir, c.ranks, c.device, c.precision, c.tokens_per_s, c.step_s * 1e3, c.steps,
               100 * c.mfu, c.peak / 1e12, c.run_dir, c.run_dir);
  }
  return 0;
}

static int cmd_plan(const PlanArgs& a) {
  if (!a.calibrate.empty()) return cmd_calibrate(a);
  if (a.preset.empty() == a.config.empty()) user_error("plan: give the model as --preset NAME or -c FILE (a frugal TOML config or a Hugging Face config.json)");
  if (!(a.tokens > 0 && a.tokens <= 1e18))  // beyond, the step count would not fit in 64 bits
    user_error("--tokens: expected the training budget in tokens (a number > 0 and at most 1e18, e.g. 10e9), got {}", a.tokens);
  PlanSettings b;
  std::string device = a.device;
  if (a.doc_tokens && !a.data.empty()) user_error("plan: give the documents as --doc-tokens or --data, not both");
  std::string docs = a.data;  // shards whose documents are masked apart: --data, else -c's data.train under data.document_mask
  uint64_t seed = TrainSettings{}.seed;
  b.seq_len = a.seq_len;
  b.batch_tokens = a.batch_tokens;
  if (!a.preset.empty()) b.model = model_preset(a.preset, "--preset");
  if (!a.config.empty() && a.config.size() > 5 && a.config.substr(a.config.size() - 5) == ".json") {
    b.model = read_hf_config(a.config);
  } else if (!a.config.empty()) {
    RunConfig cfg = load_config(a.config, {});
    b.model = cfg.model;
    b.reduce = cfg.precision.reduce;
    if (!b.seq_len) b.seq_len = cfg.train.seq_len;
    if (!b.batch_tokens) b.batch_tokens = cfg.train.batch_tokens;
    if (device.empty()) device = cfg.device.name;
    if (cfg.data.document_mask && docs.empty()) {
      docs = cfg.data.train;
      seed = cfg.train.seed;
    }
  }
  // LoRA / QLoRA fine-tuning: the flags over the config's [lora]
  if (a.lora_rank >= 0) b.model.lora.rank = a.lora_rank;
  if (!a.lora_targets.empty()) {
    b.model.lora.targets.clear();
    std::stringstream ts(a.lora_targets);
    for (std::string t; std::getline(ts, t, ',');)
      if (!t.empty()) b.model.lora.targets.push_back(t);
  }
  if (!a.base.empty()) {
    const auto names = {BaseFormat::compute, BaseFormat::nf4, BaseFormat::int8};
    auto it = std::find_if(names.begin(), names.end(), [&](BaseFormat f) { return a.base == base_format_name(f); });
    if (it == names.end()) user_error("--base: expected compute, nf4 or int8, got '{}'", a.base);
    b.model.lora.base = *it;
  }
  if (b.model.lora.base != BaseFormat::compute && !b.model.lora.on())
    user_error("--base {}: a quantized frozen base is LoRA's (QLoRA): give --lora-rank too", base_format_name(b.model.lora.base));
  b.model.validate("plan");
  if (!b.seq_len) b.seq_len = b.model.longest_sequence();
  if (b.seq_len > b.model.context)
    user_error("--seq-len: {} is above the model's context of {} positions", b.seq_len, b.model.context);
  if (a.doc_tokens) {
    b.attention_span = document_span(a.doc_tokens, b.seq_len);
  } else if (!docs.empty()) {  // the attention the documents need: up to 256 windows of the first shard
    try {                      // (opening a shard checks it whole: not all of a large dataset's)
      const std::string shard = resolve_shards(docs, a.data.empty() ? "data.train" : "--data").front();
      DataLoader data({shard}, b.model.vocab_size, 1, b.seq_len, seed, true);
      const DocumentCut cut = document_cut(shard, data.records());
      data.set_documents(cut);
      b.attention_span = attention_span(data, cut, std::min<int64_t>(256, data.num_windows()));
    } catch (const UserError& e) {
      if (!a.data.empty()) throw;
      fmt::print(stderr, "note: {}: data.document_mask: {}; attention counted over whole windows\n", a.config, e.what());
    }
  }
  if (b.model.sliding_window > 0 && b.seq_len > b.model.sliding_window)  // as train refuses it
    user_error("--seq-len: {} is above the model's sliding window of {} keys (Mistral's): frugal trains up to it",
               b.seq_len, b.model.sliding_window);
  b.tokens = a.tokens;
  b.max_hours = a.max_hours;
  b.mfu = a.mfu.empty() ? 0.0 : parse_mfu(a.mfu);
  // the global batch: given, else one micro-batch per device when both are fixed, else ~0.5M tokens
  if (!b.batch_tokens && !(a.micro_batch && a.devices)) b.batch_tokens = int64_t(b.seq_len) * std::max(1, (1 << 19) / b.seq_len);
  std::vector<Device> catalogue = load_devices(a.catalogue);
  PlanQuery q = open_query(b, catalogue);
  if (!device.empty()) q.devices = {find_device(catalogue, device, a.catalogue)};
  if (!a.strategy.empty()) q.strategies = {parse_strategy(a.strategy, "--strategy")};
  if (a.precision == "fp32" || a.precision == "bf16" || a.precision == "fp16")
    q.precisions = {a.precision == "fp32" ? DType::f32 : a.precision == "bf16" ? DType::bf16 : DType::f16};
  else if (!a.precision.empty()) user_error("--precision: expected fp32, bf16 or fp16, got '{}'", a.precision);
  if (!a.recompute.empty()) q.recomputes = {RecomputePolicy::parse(a.recompute, "--recompute")};
  if (a.micro_batch) q.micro_batches = {a.micro_batch};
  if (a.devices) q.device_counts = {a.devices};
  const bool single = q.devices.size() == 1 && q.strategies.size() == 1 && q.precisions.size() == 1 &&
                      q.recomputes.size() == 1 && q.micro_batches.size() == 1 && q.device_counts.size() == 1;

  std::vector<Plan> plans = search(q);
  if (plans.empty())
    user_error("plan: no configuration divides the global batch of {} tokens into micro-batches of {} tokens on every device "
               "(set --batch-tokens to a multiple of micro-batch x seq-len x devices)", b.batch_tokens,
               int64_t(q.micro_batches.front()) * b.seq_len);
  const ModelConfig& m = b.model;
  const std::string heads = m.kv_heads() == m.n_head ? fmt::format("{} heads", m.n_head)
                                                      : fmt::format("{} heads ({} key/value)", m.n_head, m.kv_heads());
  const std::string lora = !m.lora.on() ? std::string()
      : fmt::format("; LoRA rank {} ({:.2f} M trained), {} base", m.lora.rank, m.num_trainable_params() / 1e6,
                    m.lora.base == BaseFormat::compute ? "compute-dtype" : base_format_name(m.lora.base));
  const std::string model_line = fmt::format("model: {}, {} family ({} layers, {}, {} dims, vocab {}{}), {:.2f} M parameters{}\n",
                                             m.preset, family_name(m.family), m.n_layer, heads, m.n_embd, m.vocab_size,
                                             m.sliding_window > 0 ? fmt::format(", sliding window {}", m.sliding_window) : "",
                                             (m.num_params() - m.num_trainable_params() * m.lora.on()) / 1e6, lora);
  if (single) {
    const Plan& p = plans[0];
    if (a.json) { fmt::print("{}\n", p.to_json().dump(2)); return p.fits ? 0 : 1; }
    fmt::print("{}{}", model_line, p.explain());
    if (p.fits) return 0;
    // what would make it fit: the same device with every other setting open
    PlanQuery wide = open_query(b, {p.s.device});
    wide.base.batch_tokens = p.step_tokens;
    std::vector<Plan> alt = search(wide);
    if (!alt.empty() && alt[0].fits)
      fmt::print("to fit: the cheapest setting that fits is {} ({} per device, {}, {})\n", alt[0].s.describe(),
                 human_bytes(double(alt[0].memory.total())), human_time(alt[0].total_s), dollars(alt[0].cost));
    else if (!alt.empty())
      fmt::print("to fit: no setting fits on {}; the smallest needs {} per device ({}): a device with that much memory\n",
                 p.s.device.name, human_bytes(double(alt[0].memory.total())), alt[0].s.describe());
    return 1;
  }

  size_t num_fit = 0;
  for (const Plan& p : plans) num_fit += p.fits;
  if (a.json) {
    nlohmann::json j = {{"searched", plans.size()}, {"fit", num_fit}, {"plans", nlohmann::json::array()}};
    for (size_t i = 0; i < plans.size() && i < size_t(a.top); i++) {
      j["plans"].push_back(plans[i].to_json());
      if (i > 0) j["plans"].back()["lost_because"] = lost_because(plans[i], plans[0]);
    }
    fmt::print("{}\n", j.dump(2));
    return num_fit ? 0 : 1;
  }
  if (num_fit == 0) {  // bad input: say by how much, and what would make it fit
    const Plan& c = plans[0];
    std::vector<std::string> big;
    for (const Device& d : catalogue)
      if (d.usable() >= int64_t(c.memory.total())) big.push_back(d.name);
    user_error("plan: {} fits nowhere in {} configurations: the closest, {}, needs {} per device, {} more than the {} usable; "
               "to fit: {}{}, or a shorter --seq-len (activations take {} of it and are not sharded)",
               m.preset, plans.size(), c.s.describe(), human_bytes(double(c.memory.total())), human_bytes(double(c.over())),
               human_bytes(double(c.s.device.usable())),
               big.empty() ? fmt::format("a device with at least {} (none in the catalogue has that)", human_bytes(double(c.memory.total())))
                           : fmt::format("--device {} (enough memory for it)", fmt::join(big, " or ")),
               a.devices || !a.strategy.empty() ? ", more --devices under --strategy zero3" : "",
               human_bytes(double(c.memory.bytes[int(Mem::activations)])));
  }
  if (plans[0].late())
    user_error("plan: every configuration that fits takes longer than --max-hours {}: the fastest, {}, takes {}",
               a.max_hours, plans[0].s.describe(), human_time(plans[0].total_s));
  fmt::print("{}searched {} configurations (device x strategy x precision x recompute x micro-batch x devices) for {:.4g} tokens, "
             "global batch {} tokens: {} fit\n", model_line, plans.size(), b.tokens, plans[0].step_tokens, num_fit);
  fmt::print("{:>4} {:>10} {:>9} {:>11} {:>10}  {}\n", "rank", "cost", "time", "tokens/s", "memory", "configuration (why it lost to #1)");
  auto row = [&](size_t i, const std::string& note) {
    const Plan& p = plans[i];
    fmt::print("{:>4} {:>10} {:>9} {:>11.4g} {:>10}  {}{}{}\n", i + 1, dollars(p.cost), human_time(p.total_s), p.tokens_per_s,
               human_bytes(double(p.memory.total())), note, p.s.describe(), i == 0 ? "" : " (" + lost_because(p, plans[0]) + ")");
  };
  size_t shown = 0;
  for (; shown < plans.size() && shown < size_t(a.top) && plans[shown].fits && !plans[shown].late(); shown++) row(shown, "");

  // the best of every strategy, precision, recompute policy, device and device count not shown
  auto keys = [](const Plan& p) {
    return std::vector<std::string>{strategy_name(p.s.strategy), dtype_name(p.s.compute), "recompute " + p.s.recompute.name(),
                                    p.s.device.name, fmt::format("{} devices", p.s.devices)};
  };
  std::set<std::string> seen;
  for (size_t i = 0; i < shown; i++)
    for (auto& k : keys(plans[i])) seen.insert(k);
  bool header = false;
  for (size_t i = shown; i < plans.size(); i++)
    for (auto& k : keys(plans[i]))
      if (seen.insert(k).second) {
        if (!header) fmt::print("the best of every other setting:\n");
        header = true;
        row(i, "[" + k + "] ");
      }
  const Plan& w = plans[0];
  fmt::print("\nthe cheapest in detail:\n{}", w.explain());
  return 0;
}

// A number > 0 (CLI11's own PositiveNumber says "Value 0 not in range 4.94066e-324 to ...").
static const CLI::Validator kPositive(
    [](std::string& s) {
      char* end = nullptr;
      double v = std::strtod(s.c_str(), &end);
      return end != s.c_str() && *end == '\0' && v > 0 && std::isfinite(v) ? std::string()
                                                                           : "expected a positive number, got '" + s + "'";
    },
    "POSITIVE");

int main(int argc, char** argv) {
  CLI::App app{"frugal: train GPT-style language models on hardware a small team can afford"};
  app.require_subcommand(1);

  auto* train_cmd = app.add_subcommand("train", "train a model (no arguments: the default model on the default corpus)");
  std::string config;
  train_cmd->add_option("config,-c,--config", config, "a TOML config file, or a Hugging Face config.json (the model's shape)")
      ->check(CLI::ExistingFile);
  std::string resume, init_from;
  train_cmd->add_option("--resume", resume, "continue the run in this directory from its newest checkpoint")
      ->check(CLI::ExistingDirectory);
  train_cmd->add_option("--init-from", init_from, "start from these weights: a safetensors file or a Hugging Face model directory (GPT-2 or Llama layout; its config.json, or the metadata of a file frugal wrote, sets the model shape)");
  train_cmd->allow_extras();
  train_cmd->footer("Any setting can be overridden: --section.key=value, e.g. --train.steps=100");

  auto* prep_cmd = app.add_subcommand("prepare", "turn text files into token shards (no files: the King James Bible)");
  std::vector<std::string> inputs;
  std::string out_dir = kDefaultCorpusDir;
  std::string tokenizer = "byte";
  bool train_tokenizer = false;
  TokenizerOptions tok_opt;
  CorpusOptions corpus;
  double shard_tokens = double(corpus.shard_tokens);
  prep_cmd->add_option("files", inputs, "files, directories (their .txt and .jsonl files) and globs; .gz and .zst "
                       "read as such. A .txt file is one document, a .jsonl line one document");
  prep_cmd->add_option("--out", out_dir, "output directory: train_NNN.bin, val_NNN.bin, manifest.json, the tokenizer");
  prep_cmd->add_option("--val-fraction", corpus.val_fraction, "this fraction of the documents goes to validation, "
                       "drawn by --seed (default 0.01; a single text document: --val-every 20)");
  prep_cmd->add_option("--val-docs", corpus.val_docs, "exactly N documents go to validation, drawn by --seed (counts the documents first)");
  prep_cmd->add_option("--val-every", corpus.val_every, "split by 8192-token chunks instead: every N-th goes to validation "
                       "(a document may straddle both splits; for a corpus of one document)");
  prep_cmd->add_option("--seed", corpus.seed, "seed of the document split")->capture_default_str();
  prep_cmd->add_option("--shard-tokens", shard_tokens, "tokens per shard (llm.c's 1e8; at least 1024)")->capture_default_str();
  prep_cmd->add_option("--threads", corpus.threads, "tokenizing threads (default: every core); the shards are the "
                       "same for any count. Memory: about 8 MB of text, its tokens and a tokenizer a thread (GPT-2: ~60 MB)")->check(CLI::Range(0, 4096));
  prep_cmd->add_option("--field", corpus.field, "the field of a .jsonl record that holds its text")->capture_default_str();
  prep_cmd->add_flag("--skip-bad-lines", corpus.skip_bad_lines, "count and skip .jsonl lines that are not JSON objects "
                     "with a --field string, or not instruction records (default: stop at the first, naming its file and line)");
  prep_cmd->add_option("--tokenizer", tokenizer, "byte (257 ids), gpt2 (GPT-2's BPE, 50257 ids), or a pretrained "
                       "tokenizer: a tokenizer.json, a tokenizer.model, a *.tiktoken file or a directory holding one");
  prep_cmd->add_option("--tiktoken-pattern", tok_opt.tiktoken_pattern, "the pattern of a *.tiktoken --tokenizer (default: by its size)")
      ->check(CLI::IsMember({"gpt2", "cl100k", "llama3", "qwen2"}));
  std::string format = "text";
  prep_cmd->add_option("--format", format, "text (documents) or jsonl (instruction records: prompt/completion or messages, "
                       "a record a document, with a loss mask)")
      ->check(CLI::IsMember({"text", "jsonl"}));
  prep_cmd->add_option("--chat-template", corpus.chat_template, "with --format jsonl: a Jinja chat template (a "
                       "chat_template.jinja) to render the records with instead of the tokenizer's");
  prep_cmd->add_option("--gpt2-dir", tok_opt.gpt2_dir, "where GPT-2's rank file gpt2.tiktoken is");
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
  std::string max_shard = "5GB";
  export_cmd->add_option("--max-shard-size", max_shard, "largest weight file, as save_pretrained's max_shard_size (e.g. 2GB); above it, shards and an index")
      ->capture_default_str();
  bool merge = false;
  export_cmd->add_flag("--merge", merge, "a LoRA run: the base with the adapters merged into it (else the adapters, in PEFT's format)");

  auto* sample_cmd = app.add_subcommand("sample", "generate text from a trained model");
  std::string prompt;
  int num_tokens = 200, top_k = 40;
  double temperature = 0.8;
  uint64_t seed = 1;
  sample_cmd->add_option("--run", run_dir, "run directory")->required();
  sample_cmd->add_option("--prompt", prompt, "text to continue");
  sample_cmd->add_option("--tokens", num_tokens, "the most tokens to generate");
  sample_cmd->add_option("--temperature", temperature, "0: greedy");
  sample_cmd->add_option("--top-k", top_k, "sample among the k most likely (0: all)");
  sample_cmd->add_option("--seed", seed, "random seed");
  bool chat = false;
  sample_cmd->add_flag("--chat", chat, "the prompt as a user's message in the chat template of the run's tokenizer "
                       "(as prepare --format jsonl renders it); prints the assistant's reply");
  std::string system;
  sample_cmd->add_option("--system", system, "with --chat: a system message before the user's, as the records had it");
  sample_cmd->footer("Generation stops at end of text (with --chat, at the end of the assistant's turn) or after --tokens.");

  auto* plan_cmd = app.add_subcommand("plan", "memory, time and cost of a training before you rent the hardware");
  PlanArgs pa;
  plan_cmd->add_option("--preset", pa.preset, fmt::format("model preset ({})", fmt::join(preset_names(), ", ")));
  plan_cmd->add_option("-c,--config", pa.config, "a frugal TOML config or a Hugging Face config.json")->check(CLI::ExistingFile);
  plan_cmd->add_option("--tokens", pa.tokens, "training budget in tokens, e.g. 10e9");
  plan_cmd->add_option("--device", pa.device, "device type from the catalogue (default: search them all)");
  plan_cmd->add_option("--devices", pa.devices, "number of devices (default: search 1..1024)")->check(kPositive);
  plan_cmd->add_option("--strategy", pa.strategy, "ddp, zero1, zero2, zero3 (fsdp), yafsdp (default: search)");
  plan_cmd->add_option("--precision", pa.precision, "fp32, bf16, fp16 (default: search fp32, bf16)");
  plan_cmd->add_option("--recompute", pa.recompute, "none, selective, full, every:K (default: search)");
  plan_cmd->add_option("--micro-batch", pa.micro_batch, "sequences per micro-batch (default: search 1..64)")->check(kPositive);
  plan_cmd->add_option("--seq-len", pa.seq_len, "sequence length (default: the config's, else the model's context)")->check(kPositive);
  plan_cmd->add_option("--batch-tokens", pa.batch_tokens, "global batch in tokens (default: the config's, else ~0.5M)")->check(kPositive);
  plan_cmd->add_option("--data", pa.data, "prepared shards (e.g. 'dir/train_*.bin') whose documents are masked apart "
                       "(data.document_mask): count the attention they need, from up to 256 windows of the first "
                       "(default: -c CONFIG's data.train where it masks)");
  plan_cmd->add_option("--doc-tokens", pa.doc_tokens, "as --data, for documents of N tokens each where there is no data "
                       "yet (lengths that vary attend more than their mean: see README)")->check(kPositive);
  plan_cmd->add_option("--max-hours", pa.max_hours, "search: rank configurations that take longer last")->check(kPositive);
  plan_cmd->add_option("--mfu", pa.mfu, "assumed MFU: a fraction, or a calibration.json (default: the device's)");
  plan_cmd->add_option("--catalogue", pa.catalogue, "device catalogue (default: $FRUGAL_DEVICES or configs/devices.toml)");
  plan_cmd->add_option("--top", pa.top, "configurations to list")->check(kPositive);
  plan_cmd->add_option("--calibrate", pa.calibrate, "fit the MFU of a finished run directory and write its calibration.json");
  plan_cmd->add_flag("--json", pa.json, "print JSON");
  plan_cmd->add_option("--lora-rank", pa.lora_rank, "LoRA fine-tuning: adapters of this rank on a frozen base (0: full training)")->check(CLI::NonNegativeNumber);
  plan_cmd->add_option("--lora-targets", pa.lora_targets, "LoRA's target modules, e.g. q_proj,k_proj,v_proj,o_proj (default: PEFT's)");
  plan_cmd->add_option("--base", pa.base, "LoRA's frozen base: compute (the compute dtype), nf4 (QLoRA) or int8");

  auto* report_cmd = app.add_subcommand("report", "write RUN_DIR/report.html: charts of a run (loss, tokens/s, memory, cost)");
  report_cmd->add_option("run", run_dir, "run directory")->required();

  try {
    for (int i = 2; i < argc && std::string(argv[1]) == "train"; i++) {
      std::string a = argv[i];
      if (a.rfind("--", 0) == 0 && a.find('.') != std::string::npos && a.find('=') == std::string::npos)
        user_error("{}: expected {}=VALUE (an override takes '=', not a space)", a, a);
    }
    app.parse(argc, argv);
    if (*plan_cmd) return cmd_plan(pa);
    if (*report_cmd) {
      fmt::print("wrote {}\n", write_report(run_dir));
      return 0;
    }
    if (*train_cmd) return cmd_train(config, train_cmd->remaining(), resume, init_from);
    if (*export_cmd) return cmd_export(export_from, out_dir, parse_bytes(max_shard, "--max-shard-size"), merge);
    if (*prep_cmd) {
      // 0 would read as not given
      if (prep_cmd->get_option("--val-every")->count() && corpus.val_every < 2)
        user_error("--val-every: expected an integer >= 2, got {}", corpus.val_every);
      if (prep_cmd->get_option("--val-fraction")->count() && !(corpus.val_fraction > 0 && corpus.val_fraction < 1))
        user_error("--val-fraction: expected a number in (0, 1), got {}", corpus.val_fraction);
      if (prep_cmd->get_option("--val-docs")->count() && corpus.val_docs < 1)
        user_error("--val-docs: expected a positive count, got {}", corpus.val_docs);
      corpus.instruct = format == "jsonl";
      if (corpus.instruct && prep_cmd->get_option("--field")->count())
        user_error("--field: names the text of --format text's .jsonl documents; instruction records (--format jsonl) "
                   "hold \"prompt\" and \"completion\", or \"messages\"");
      tok_opt.kind = train_tokenizer ? TokenizerKind::sentencepiece
                     : tokenizer == "gpt2" ? TokenizerKind::gpt2 : TokenizerKind::byte;
      if (!train_tokenizer && tokenizer != "gpt2" && tokenizer != "byte") tok_opt.pretrained = tokenizer;
      corpus.shard_tokens = int64_t(std::clamp(shard_tokens, -1.0, 1e15));
      corpus.progress = true;
      PrepareStats st = prepare_corpus(inputs, out_dir, corpus, tok_opt);
      fmt::print("prepare: {} train + {} val tokens ({} + {} {}) in {} shards -> {}/ ({} already there, verified)\n",
                 st.train_tokens, st.val_tokens, st.train_docs, st.val_docs, corpus.instruct ? "records" : "documents",
                 st.files.size(), out_dir, st.reused_shards);
      if (corpus.instruct)
        fmt::print("prepare: records rendered with {}\n", st.chat_template);
      if (st.bos >= 0)
        fmt::print("prepare: each {} starts with the tokenizer's BOS (id {}), as transformers encodes a text{}\n",
                   corpus.instruct ? "record" : "document", st.bos, corpus.instruct ? "" : ", and ends with its end of text");
      if (st.skipped_lines) fmt::print("prepare: skipped {} bad .jsonl lines (--skip-bad-lines)\n", st.skipped_lines);
      if (st.invalid_utf8_docs)
        fmt::print("prepare: {} documents hold invalid UTF-8 (tokenized as their bytes; see README)\n", st.invalid_utf8_docs);
      return 0;
    }
    if (*eval_cmd) return cmd_eval(run_dir, data, batches);
    if (*sample_cmd) {
      if (!system.empty() && !chat) user_error("sample --system: the system message is a turn of --chat");
      return cmd_sample(run_dir, prompt, num_tokens, temperature, top_k, seed, chat, system);
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "frugal: error: %s\n", e.what());  // one line, as every other error
    return 2;
  } catch (const UserError& e) {
    std::fprintf(stderr, "frugal: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
