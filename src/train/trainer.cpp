// The Trainer loop: data, steps, evaluation, metrics.jsonl, progress, the final model.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "plan/plan.h"
#include "train/train.h"

namespace frugal {

int64_t eval_batch_count(const DataLoader& loader, int batches) {
  const int64_t all = loader.num_windows() / (int64_t(loader.batch()) * loader.world());
  return batches > 0 ? std::min<int64_t>(batches, all) : all;
}

double evaluate(const LossFn& loss, DataLoader& loader, int batches, Comm* comm) {
  const int B = loader.batch(), T = loader.seq_len();
  const int64_t n = eval_batch_count(loader, batches);
  std::vector<int32_t> in(size_t(B) * T), tg(in.size());
  loader.reset();
  double sum = 0.0, counted = 0.0;  // a micro-batch's mean weighs as its counted targets (masked data)
  for (int64_t i = 0; i < n; i++) {
    loader.next(in.data(), tg.data());
    const double c = double(std::count_if(tg.begin(), tg.end(), [](int32_t t) { return t >= 0; }));
    sum += c > 0 ? loss(in.data(), tg.data()) * c : 0.0;
    counted += c;
  }
  if (comm && comm->size() > 1) {
    float buf[2] = {float(sum), float(counted)};
    comm->all_reduce(buf, 2, ReduceOp::sum)->wait();
    sum = buf[0];
    counted = buf[1];
  }
  return counted > 0 ? sum / counted : NAN;
}

// Shards in another tokenizer's ids than the base model's train silently on the wrong tokens: a
// Hugging Face directory's tokenizer must have as many ids as the shards' and give the same ids
// for a probe text (GPT-2's BPE from tiktoken and from a tokenizer.json are the same ids, so the
// ids are compared, not the kinds).
static void check_base_tokenizer(const std::string& init_from, const std::string& shard) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(fs::path(init_from) / "tokenizer.json", ec) && !fs::exists(fs::path(init_from) / "tokenizer.model", ec))
    return;
  std::string dir = fs::path(shard).parent_path().string();
  if (dir.empty()) dir = ".";
  auto base = load_pretrained_tokenizer(init_from), data = load_tokenizer(dir);
  const std::string probe = "In the beginning God created the heaven and the earth, 1611. Naïve café: 日本語 ok?";
  std::vector<uint32_t> a, b;
  base->encode(probe, a);
  data->encode(probe, b);
  if (data->vocab_size() != base->vocab_size() || a != b)
    user_error("data.train: {} holds ids of a {} tokenizer of {} ids ({}), but the model of train.init_from = '{}' reads "
               "its tokenizer of {} ids{}: prepare the data with --tokenizer {}", shard, to_string(data->kind()),
               data->vocab_size(), dir, init_from, base->vocab_size(),
               data->vocab_size() == base->vocab_size() ? ", which encodes text to other ids" : "", init_from);
}

// A loss for the log; NaN: there was none (every target masked out).
static std::string loss_text(double loss) {
  return std::isnan(loss) ? "n/a (no target trained on)" : fmt::format("{:.4f}", loss);
}

// "params 475.0 MiB, grads 475.0 MiB, ..." for the categories that hold any bytes
static std::string mem_list(const std::array<size_t, num_mem>& bytes) {
  std::vector<std::string> parts;
  for (int c = 0; c < num_mem; c++)
    if (bytes[c]) parts.push_back(fmt::format("{} {}", mem_name(Mem(c)), human_bytes(double(bytes[c]))));
  return fmt::format("{}", fmt::join(parts, ", "));
}

static nlohmann::json mem_json(const MemStats& m) {
  nlohmann::json j;
  for (int c = 0; c < num_mem; c++) j[mem_name(Mem(c))] = m.peak[c];
  j["total"] = m.total_peak;
  return j;
}

RecomputePolicy choose_recompute(const RunConfig& cfg, int world) {
  if (cfg.memory.budget <= 0) return cfg.memory.recompute;
  using Kind = RecomputePolicy::Kind;
  const int L = cfg.model.n_layer;
  std::vector<RecomputePolicy> order = {{Kind::none, 0}, {Kind::selective, 0}};  // least first
  for (int k = std::min(L, 4); k >= 2; k--) order.push_back({Kind::every, k});
  order.push_back({Kind::full, 0});
  size_t smallest = 0;
  for (const RecomputePolicy& p : order) {
    size_t need = estimate_memory(cfg.model, cfg.train.micro_batch, cfg.train.seq_len, cfg.precision.compute,
                                  p.per_block(L), cfg.device.backend == "cuda",
                                  {parse_strategy(cfg.dist.strategy, cfg.source), world, cfg.precision.reduce})
                      .total();
    if (need <= size_t(cfg.memory.budget)) return p;
    smallest = need;
  }
  user_error("{}: memory.budget = {} is below what any recompute policy needs: the smallest, full "
             "recompute, needs {} at micro_batch {} and seq_len {} (lower train.micro_batch or train.seq_len)",
             cfg.source, human_bytes(double(cfg.memory.budget)), human_bytes(double(smallest)),
             cfg.train.micro_batch, cfg.train.seq_len);
}

// Bytes this host can still give a process: MemAvailable, and under a cgroup (v2, or v1) its
// limit less its usage; `source` says which bound it is. 0 when neither can be read.
static int64_t host_memory_available(std::string& source) {
  auto read = [](const char* path) -> int64_t {
    std::ifstream in(path);
    std::string v;
    if (!(in >> v) || v == "max") return -1;
    try {
      return std::stoll(v);
    } catch (const std::exception&) {
      return -1;
    }
  };
  int64_t best = 0;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    int64_t kib = 0;
    meminfo >> kib;
    if (key == "MemAvailable:") { best = kib * 1024; source = "MemAvailable"; break; }
    meminfo.ignore(256, '\n');
  }
  for (auto [limit, usage, name] : {std::tuple{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "cgroup memory.max"},
                                    {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                                     "cgroup memory.limit_in_bytes"}}) {
    const int64_t l = read(limit), u = read(usage);
    if (l > 0 && u >= 0 && (best == 0 || l - u < best)) { best = std::max<int64_t>(0, l - u); source = name; }
  }
  return best;
}

// The progress bar only where a person watches a terminal. OpenMPI gives each rank a
// pseudo-terminal of its own, so isatty holds under mpirun even when mpirun's output goes to a
// file: there the terminal that counts is the launcher's, the parent's stdout (mpirun for the ranks
// on its host; a remote rank's orted has none, so plain lines).
static bool progress_bar_wanted() {
  if (!::isatty(STDOUT_FILENO)) return false;
  if (!std::getenv("OMPI_COMM_WORLD_SIZE")) return true;
  std::error_code ec;
  const std::string out = std::filesystem::read_symlink(fmt::format("/proc/{}/fd/1", ::getppid()), ec).string();
  return !ec && (out.starts_with("/dev/pts/") || out.starts_with("/dev/tty"));
}

// Memory preflight: the plan's predicted peak per rank against what the device can still give
// (a GPU's free memory), or on the CPU, times the ranks on this host, what the host can; refused
// before anything is allocated, with the prediction and the cheapest setting that fits (what
// `frugal plan` would say), unless memory.preflight = false.
static void preflight(const RunConfig& cfg, const Plan& forecast, int world, const Backend& be) {
  if (!cfg.memory.preflight) return;
  std::string source = "free device memory";
  const int64_t on_host = be.gpu() ? 1 : ranks_on_this_host();  // mpirun's or srun's count
  const int64_t available = be.gpu() ? be.memory_available() : host_memory_available(source);
  const int64_t need = int64_t(forecast.memory.total()) * on_host;
  if (available <= 0 || need <= available) return;
  PlanSettings b = forecast.s;
  b.device.memory = available / on_host;
  b.device.reserved = 0;
  PlanQuery q = open_query(b, {b.device});
  q.base.batch_tokens = forecast.step_tokens;
  q.device_counts = {world};
  if (world == 1) q.strategies = {Strategy::ddp};
  const std::vector<Plan> alt = search(q);
  const std::string fix = !alt.empty() && alt[0].fits
      ? fmt::format("the cheapest setting that fits is {} ({} per rank)", alt[0].s.describe(), human_bytes(double(alt[0].memory.total())))
      : fmt::format("no setting of this model fits this {}", be.gpu() ? "device" : "host");
  user_error("memory preflight: this run needs {} per rank ({}){}, but this {} has {} available ({}): {} "
             "(memory.preflight = false runs it anyway)", human_bytes(double(forecast.memory.total())),
             mem_list(forecast.memory.bytes), on_host > 1 ? fmt::format(" x {} ranks on this host", on_host) : "",
             be.gpu() ? "device" : "host", human_bytes(double(available)), source, fix);
}

// Every rank must run the same configuration: rank 0's hash is compared on all ranks. But for
// the device's name and peaks: unset, each rank takes its own CPU's catalogue entry, and hosts of
// different kinds may train together (rank 0's are the run's, for its MFU).
static void check_same_config(const RunConfig& cfg, Comm& comm) {
  if (comm.size() == 1) return;
  RunConfig same = cfg;
  same.device.name.clear();
  same.device.peak_flops = same.device.peak_flops_bf16 = 0;
  uint64_t h = std::hash<std::string>{}(same.to_toml());
  float mine[4], root[4];
  for (int i = 0; i < 4; i++) mine[i] = root[i] = float((h >> (16 * i)) & 0xFFFF);  // exact in fp32
  comm.broadcast(root, 4, 0)->wait();
  float differs[1] = {std::equal(mine, mine + 4, root) ? 0.0f : 1.0f};
  comm.all_reduce(differs, 1, ReduceOp::max)->wait();
  if (differs[0] != 0.0f)
    user_error("{}: the ranks were started with different configurations (the resolved config.toml "
               "of every rank must equal rank 0's)", cfg.source);
}

// metrics.jsonl of a resumed run: the records up to `step` (a record cut short by a kill, or
// of steps after the checkpoint, is dropped), rewritten atomically.
static void truncate_metrics(const std::string& path, int step) {
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).at("step").get<int>() <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
    }
  }
  write_file_atomic(path, kept.data(), kept.size());
}

// run.profile: each op family's seconds per step, its share of the step and, for GEMMs and
// attention, its FLOP/s against the device's peak, as profile.json (the report draws it) and a
// table; the first step (warm-up) is not counted.
static void write_profile(const std::string& dir, const OpTimes& ops, int steps, double seconds, double peak) {
  if (steps < 1) {
    fmt::print("profile: no step after the first (warm-up) to time: run more than one step\n");
    return;
  }
  const double step_s = seconds / steps;
  nlohmann::json rows = nlohmann::json::array();
  std::string table = fmt::format("profile: {:.4f} s per step over {} steps (peak {:.4g} GFLOP/s)\n", step_s, steps, peak / 1e9);
  double accounted = 0;
  auto row = [&](const std::string& op, double s, double flops) {
    nlohmann::json r = {{"op", op}, {"seconds_per_step", s}, {"share", s / step_s}};
    std::string rate;
    if (flops > 0 && s > 0) {
      r["gflops"] = flops / steps / s / 1e9;
      r["of_peak"] = flops / steps / s / peak;
      rate = fmt::format("  {:8.1f} GFLOP/s ({:.0f}% of peak)", flops / steps / s / 1e9, 100 * flops / steps / s / peak);
    }
    rows.push_back(r);
    table += fmt::format("  {:<18} {:9.4f} s {:6.1f}%{}\n", op, s, 100 * s / step_s, rate);
  };
  for (const auto& [op, o] : ops) {
    row(op, o.seconds / steps, o.flops);
    accounted += o.seconds / steps;
  }
  row("other: host, waits", std::max(0.0, step_s - accounted), 0);  // host work, communication waits
  const std::string text = nlohmann::json{{"steps", steps}, {"step_s", step_s}, {"peak_flops", peak}, {"ops", rows}}.dump(2);
  write_file_atomic(dir + "/profile.json", text.data(), text.size());
  fmt::print("{}wrote {}/profile.json\n", table, dir);
}

double attended_pairs(const int32_t* tokens, int B, int T, const DocumentCut& cut) {
  double pairs = 0;
  for (auto [first, n] : document_pieces(tokens, B, T, cut.sep, cut.after)) pairs += double(n) * double(n);
  return pairs;
}

double attention_span(DataLoader& loader, const DocumentCut& cut, int64_t batches) {
  const int B = loader.batch(), T = loader.seq_len();
  std::vector<int32_t> in(size_t(B) * T), tg(in.size());
  double pairs = 0;
  for (int64_t i = 0; i < batches; i++) {
    loader.next(in.data(), tg.data());
    pairs += attended_pairs(in.data(), B, T, cut);
  }
  loader.reset();
  return pairs / (double(batches) * B * T);
}

static void run_training(const RunConfig& cfg, Comm& comm, bool resume) {
  const TrainSettings& t = cfg.train;
  check_world(cfg, comm.size());
  check_same_config(cfg, comm);
  if (t.threads > 0) omp_set_num_threads(t.threads);
  const bool rank0 = comm.rank() == 0;
  if (rank0 && t.threads > omp_get_num_procs())
    fmt::print(stderr, "warning: train.threads = {} is above the {} cores this process may use: threads will "
               "share cores, which is slower than {} threads\n", t.threads, omp_get_num_procs(), omp_get_num_procs());
  const std::string dir = cfg.run.dir;
  std::string ckpt;
  int start = 0;
  if (resume) {
    // the newest checkpoint that verifies; a corrupt one is renamed ckpt-STEP.corrupt (kept, and
    // out of rotation's reach, so that rotation never deletes the newest good one)
    for (;;) {
      ckpt = latest_checkpoint(dir);
      if (ckpt.empty()) user_error("{}: no checkpoint to resume from (no complete ckpt-STEP directory)", dir);
      try {
        verify_checkpoint(ckpt);
        break;
      } catch (const UserError& e) {
        comm.barrier();  // every rank has read it
        if (rank0) {
          std::error_code ec;
          std::filesystem::remove_all(ckpt + ".corrupt", ec);  // an earlier corrupt copy of the same step
          std::filesystem::rename(ckpt, ckpt + ".corrupt", ec);
          if (ec) user_error("{}: corrupt ({}), and it cannot be renamed: {}", ckpt, e.what(), ec.message());
          fmt::print("resume: skipped {}: {} (renamed {}.corrupt)\n", ckpt, e.what(), ckpt);
        }
        comm.barrier();
      }
    }
    start = check_checkpoint(ckpt, cfg, comm.size());
    if (t.steps <= start)
      user_error("{}: train.steps = {} is not above the step of {} ({}): nothing to train (raise train.steps to go "
                 "on; `frugal export {}` writes the run's weights)", cfg.source, t.steps, ckpt, start, dir);
  }

  const RecomputePolicy recompute = choose_recompute(cfg, comm.size());
  const std::vector<Recompute> plan = recompute.per_block(cfg.model.n_layer);
  const Strategy strategy = parse_strategy(cfg.dist.strategy, cfg.source);
  Plan forecast = plan_for_run(cfg, comm.size(), recompute);  // memory, time and cost
  const MemoryEstimate& predicted = forecast.memory;
  Backend& be = cfg.device.backend == "cuda" ? cuda_backend() : cpu_backend();
  preflight(cfg, forecast, comm.size(), be);

  const int B = t.micro_batch, T = t.seq_len;
  const std::vector<std::string> train_shards = resolve_shards(cfg.data.train, "data.train");
  if (!t.init_from.empty()) check_base_tokenizer(t.init_from, train_shards.front());
  DataLoader train_data(train_shards, cfg.model.vocab_size, B, T, t.seed, true, comm.rank(), comm.size());
  DataLoader val_data(resolve_shards(cfg.data.val, "data.val"), cfg.model.vocab_size, B, T, t.seed,
                      false, comm.rank(), comm.size());

  const DType dt = cfg.precision.compute;
  if (!be.native_gemm(dt) && rank0)
    fmt::print("note: the {} backend has no native {} GEMM; it runs through fp32 conversions "
               "(correct, not faster)\n", be.name(), dtype_name(dt));
  // run.profile: every op of the model and the step through a timing decorator
  OpTimes step_ops, profile;
  std::unique_ptr<Backend> timed = cfg.run.profile ? timing_backend(be, &step_ops) : nullptr;
  Backend& run_be = timed ? *timed : be;
  Model model(cfg.model, run_be, dt, model_owns(strategy));
  Stepper stepper(model, run_be, comm, t, cfg.accum_steps(comm.size()), cfg.precision, plan, strategy);
  DocumentCut cut{-1, false};
  if (cfg.data.document_mask) {  // cut at each end of text of the shards' tokenizer
    cut = document_cut(train_shards.front(), train_data.records());
    model.set_documents(cut.sep, cut.after);
    train_data.set_documents(cut);
    val_data.set_documents(cut);
    // the attention the plan counts: that of the run's first micro-batches
    const int64_t probe = std::clamp<int64_t>(train_data.num_windows() / (int64_t(B) * comm.size()), 1, 64);
    forecast = plan_for_run(cfg, comm.size(), recompute, default_devices_path(),
                            attention_span(train_data, cut, probe));
    const std::string span = fmt::format("{:.0f} keys a token on average of a window's {} (the first {} micro-batches)",
                                         forecast.s.attention_span, T, probe);
    if (rank0 && train_data.records())
      fmt::print("records attend only to themselves: cut after each end of text (id {}), whole in their windows "
                 "({} windows{}); {}\n", cut.sep, train_data.num_windows(),
                 train_data.truncated() ? fmt::format("; {} records longer than train.seq_len + 1 = {} tokens cut to it",
                                                      train_data.truncated(), T + 1) : "", span);
    else if (rank0)
      fmt::print("documents attend only to themselves: cut {} each end of text (id {}); {}\n", cut.after ? "after" : "before",
                 cut.sep, span);
  }
  stepper.init_weights(t.seed);
  if ((!resume || cfg.model.lora.on()) && !t.init_from.empty()) {  // LoRA's frozen base, on a resume too
    Shards& shards = stepper.shards();  // zero3/yafsdp: one unit whole at a time
    load_model(t.init_from, model, [&](size_t unit, bool done) { done ? shards.dematerialize(unit) : shards.materialize(unit); });
    shards.refresh();
  }
  if (!resume && !t.lora_init_from.empty()) {  // adapters to go on from: for this base?
    std::string base;
    read_adapter_config(t.lora_init_from, &base);
    auto name = [](std::string p) {  // the last part of a path or hub name: "HuggingFaceTB/SmolLM-135M" is "SmolLM-135M"
      while (p.size() > 1 && p.back() == '/') p.pop_back();
      return p.substr(p.rfind('/') + 1);
    };
    if (!base.empty() && !t.init_from.empty() && name(base) != name(t.init_from))
      user_error("{}/adapter_config.json: base_model_name_or_path '{}': these adapters are for another base model than "
                 "train.init_from = '{}'", t.lora_init_from, base, t.init_from);
    load_adapters(t.lora_init_from, model);
  }
  auto loss_fn = [&](const int32_t* in, const int32_t* tg) { return stepper.loss(in, tg); };
  double load_s = 0.0;
  if (resume) {
    auto t0 = std::chrono::steady_clock::now();
    load_checkpoint(ckpt, model, stepper, train_data);
    load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // Everything is read and checked. The run directory's files (a fresh start removes its
  // checkpoints, config.toml is rewritten, metrics.jsonl started or cut at the checkpoint) are
  // touched only once the first step has succeeded, and a fresh start over a previous run's
  // checkpoints waits for its own first checkpoint (metrics records wait in memory): a run that
  // fails early loses nothing, and the previous run can still be resumed.
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) user_error("{}: cannot create the run directory: {}", dir, ec.message());
  if (rank0 && resume) fmt::print("resuming from {} at step {} (loaded in {:.2f} s)\n", ckpt, start, load_s);
  std::FILE* metrics = nullptr;
  const bool keep_previous = !resume && cfg.run.checkpoint_every > 0 &&
                             (!latest_checkpoint(dir).empty() || std::filesystem::exists(dir + "/config.toml"));
  std::vector<nlohmann::json> records;  // metrics records not yet written
  std::unique_ptr<TensorBoardWriter> tb;  // the same scalars for tensorboard
  auto open_run = [&] {
    if (!resume) {  // the previous run's final model and summary are not this run's
      for (const char* f : {"/model.safetensors", "/summary.json", "/profile.json"}) std::filesystem::remove(dir + f, ec);
      std::filesystem::remove_all(dir + "/adapter", ec);
      int removed = remove_checkpoints(dir);
      if (removed > 0)
        fmt::print("note: a fresh start in {}: removed its {} checkpoint(s) (--resume continues from them)\n", dir, removed);
    }
    std::string text = cfg.to_toml();
    write_file_atomic(dir + "/config.toml", text.data(), text.size());
    if (resume) truncate_metrics(dir + "/metrics.jsonl", start);
    metrics = std::fopen((dir + "/metrics.jsonl").c_str(), resume ? "a" : "w");
    if (!metrics) user_error("{}/metrics.jsonl: cannot write: {}", dir, std::strerror(errno));
    if (!resume)  // the previous run's event files
      for (auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().filename().string().starts_with("events.out.tfevents.")) std::filesystem::remove(e.path(), ec);
    tb = std::make_unique<TensorBoardWriter>(dir);
    if (resume) tb->restart(start + 1);
  };
  const bool tty = rank0 && progress_bar_wanted();
  // data.document_mask: the attention span of `steps` steps' rank-0 micro-batches, whose documents'
  // sum of n^2 is `pairs`; model FLOPs per token at that span, else over whole windows
  auto span_of = [&](double pairs, int steps) { return pairs / (double(steps) * B * T * cfg.accum_steps(comm.size())); };
  auto flops_tok = [&](double pairs, int steps) { return cfg.model.flops_per_token(cut.sep >= 0 ? span_of(pairs, steps) : T); };
  const int64_t tokens_per_step = int64_t(B) * T * cfg.accum_steps(comm.size()) * comm.size();
  if (rank0)
    fmt::print("frugal: {} ({} layers, {} heads, {} dims, vocab {}{}), {:.2f} M parameters{}\n"
               "        {} compute, batch {} tokens = {} x {} x {} micro-batches, {} steps, {} threads, {} ranks ({})\n",
               cfg.model.preset, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.vocab_size,
               cfg.model.sliding_window > 0 ? fmt::format(", sliding window {}", cfg.model.sliding_window) : "",
               cfg.model.num_params() / 1e6,
               cfg.model.lora.on() ? fmt::format(" (LoRA rank {}: {:.3f} M trained, the {} base frozen)", cfg.model.lora.rank,
                                                 cfg.model.num_trainable_params() / 1e6, base_format_name(cfg.model.lora.base))
                                   : "",
               dtype_name(dt), tokens_per_step, B, T,
               cfg.accum_steps(comm.size()), t.steps, omp_get_max_threads(), comm.size(),
               strategy_name(strategy));

  if (rank0)
    fmt::print("memory: recompute {}{}; predicted peak {} ({})\n", recompute.name(),
               cfg.memory.budget > 0 ? fmt::format(" (the least that fits memory.budget = {})", human_bytes(double(cfg.memory.budget))) : "",
               human_bytes(double(predicted.total())), mem_list(predicted.bytes));
  if (rank0)
    fmt::print("plan: {:.0f} tok/s predicted ({:.0f} ms/step at MFU {:.0f}% of {} peak), {} for {} steps{}\n",
               forecast.tokens_per_s, forecast.step_s * 1e3, 100 * forecast.s.mfu, forecast.s.device.name,
               human_time(forecast.total_s), t.steps,
               forecast.s.device.price > 0 ? fmt::format(", {} at {}/h x {}", dollars(forecast.cost),
                                                         dollars(forecast.s.device.price), comm.size()) : "");
  if (rank0 && t.eval_batches > eval_batch_count(val_data, t.eval_batches))
    fmt::print("note: train.eval_batches = {}, but data.val holds {} micro-batches of {} x {}{}: each evaluation takes "
               "those, once each\n", t.eval_batches, eval_batch_count(val_data, 0), B, T,
               comm.size() > 1 ? fmt::format(" on each of {} ranks", comm.size()) : "");
  using clock = std::chrono::steady_clock;
  auto t_start = clock::now();
  double train_seconds = 0.0, val_loss = NAN;
  int64_t timed_tokens = 0;
  double timed_seconds = 0.0, timed_pairs = 0.0;
  MemStats overall;
  auto write_records = [&] {
    if (!metrics) open_run();
    for (const nlohmann::json& r : records) {
      if (std::fprintf(metrics, "%s\n", r.dump().c_str()) < 0)
        user_error("{}/metrics.jsonl: cannot write: {}", dir, std::strerror(errno));
      std::vector<std::pair<std::string, double>> scalars;
      for (const char* k : {"loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "loss_scale"})
        if (r.contains(k)) scalars.push_back({k, r[k].get<double>()});
      for (auto& [category, bytes] : r["mem_peak"].items()) scalars.push_back({"memory_mib/" + category, bytes.get<double>() / (1 << 20)});
      tb->scalars(r["step"].get<int64_t>(), scalars);
    }
    if (std::fflush(metrics) != 0) user_error("{}/metrics.jsonl: cannot write: {}", dir, std::strerror(errno));
    records.clear();
  };
  // A checkpoint after every checkpoint_every steps (taken at the top of the next step, once the
  // step's metrics record is written) and at the end.
  auto checkpoint = [&](int done) {
    if (rank0) write_records();
    double took = save_checkpoint(cfg, done, model, stepper, train_data, comm);
    if (!rank0) return;
    if (tty) std::fputs("\r\033[K", stdout);
    fmt::print("checkpoint: {}/ckpt-{} written in {:.2f} s\n", dir, done, took);
  };
  const int every = cfg.run.checkpoint_every;
  for (int step = start; step < t.steps; step++) {
    if (every > 0 && step > start && step % every == 0) checkpoint(step);
    comm.set_step(step + 1);
    MemoryPool::get().reset_peak();
    const size_t allocs_before = MemoryPool::get().stats().allocations;
    step_ops.clear();
    auto t0 = clock::now();
    double pairs = 0;  // data.document_mask: sum n^2 over this rank's documents
    StepStats st = stepper.step(step, [&](int32_t* in, int32_t* tg) {
      train_data.next(in, tg);
      if (cut.sep >= 0) pairs += attended_pairs(in, B, T, cut);
    });
    double dt_s = std::chrono::duration<double>(clock::now() - t0).count();
    train_seconds += dt_s;
    if (step > start) {  // the first step warms up
      timed_tokens += st.tokens;
      timed_seconds += dt_s;
      timed_pairs += pairs;
      for (auto& [op, o] : step_ops) {
        profile[op].seconds += o.seconds;
        profile[op].flops += o.flops;
      }
    }
    const MemStats& mem = MemoryPool::get().stats();
    for (int c = 0; c < num_mem; c++) overall.peak[c] = std::max(overall.peak[c], mem.peak[c]);
    overall.total_peak = std::max(overall.total_peak, mem.total_peak);

    bool last = step == t.steps - 1;
    bool do_eval = last || (t.eval_every > 0 && (step + 1) % t.eval_every == 0);
    if (do_eval) val_loss = evaluate(loss_fn, val_data, t.eval_batches, &comm);
    if (!rank0) continue;

    double tok_s = double(st.tokens) / dt_s;
    double mfu = flops_tok(pairs, 1) * tok_s / (comm.size() * cfg.device.peak_for(dt));  // per device
    nlohmann::json rec = {{"step", step + 1},         {"targets", st.targets},
                          {"lr", st.lr},              {"grad_norm", st.grad_norm},
                          {"tokens_per_s", tok_s},    {"mfu", mfu},
                          {"step_ms", dt_s * 1e3},
                          {"comm_wait_ms", st.comm_wait_s * 1e3},
                          {"ranks", comm.size()},      {"strategy", strategy_name(strategy)},
                          {"tokens", tokens_per_step * (step + 1)},
                          {"precision", dtype_name(dt)},
                          {"recompute", recompute.name()},
                          {"loss_scale", st.loss_scale},
                          {"skipped", st.skipped},
                          {"skipped_total", stepper.scaler().skipped_total},
                          {"mem_peak", mem_json(mem)},
                          {"allocations", mem.allocations - allocs_before}};
    if (cut.sep >= 0) rec["attention_span"] = span_of(pairs, 1);
    if (st.targets > 0) rec["loss"] = st.loss;  // none: the batch was all prompt (no update)
    if (do_eval && !std::isnan(val_loss)) rec["val_loss"] = val_loss;
    records.push_back(std::move(rec));
    if (metrics || !keep_previous) write_records();

    if (tty) std::fputs("\r\033[K", stdout);
    if (do_eval || last || (step + 1) % cfg.run.log_every == 0 || step == 0) {
      fmt::print("step {:>5}/{} | loss {} | lr {:.2e} | norm {:.3f} | {:.0f} tok/s | MFU {:.1f}% | {:.0f} ms{}{}\n",
                 step + 1, t.steps, loss_text(st.targets > 0 ? st.loss : NAN), st.lr, st.grad_norm, tok_s, 100.0 * mfu, dt_s * 1e3,
                 stepper.scaler().enabled ? fmt::format(" | scale {:g}{}", st.loss_scale, st.skipped ? " (skipped)" : "") : "",
                 do_eval ? fmt::format(" | val {}", loss_text(val_loss)) : "");
    }
    if (tty && !last) {
      const int width = 30;
      int done = int(double(step + 1) / t.steps * width);
      double eta = train_seconds / (step + 1 - start) * (t.steps - step - 1);
      fmt::print("[{}{}] {}/{} {:.0f}% ETA {}", std::string(done, '#'), std::string(width - done, '.'),
                 step + 1, t.steps, 100.0 * (step + 1) / t.steps, human_time(eta));
    }
    std::fflush(stdout);
  }
  if (every > 0) checkpoint(t.steps);
  stepper.shards().materialize();  // zero3/yafsdp: the full weights, for the file
  if (!rank0) return;
  write_records();
  std::fclose(metrics);
  const std::string weights = save_run_weights(dir, cfg, model, t.steps);
  double total = std::chrono::duration<double>(clock::now() - t_start).count();
  double tok_s = timed_seconds > 0 ? double(timed_tokens) / timed_seconds : 0.0;
  const double run_mfu = flops_tok(timed_pairs, std::max(1, t.steps - start - 1)) * tok_s / (comm.size() * cfg.device.peak_for(dt));
  fmt::print("done: val loss {} | {:.0f} tok/s (MFU {:.1f}% of {:.0f} GFLOP/s per device) | {} total\n", loss_text(val_loss),
             tok_s, 100.0 * run_mfu, cfg.device.peak_for(dt) / 1e9, human_time(total));
  fmt::print("peak memory: {}; total {}, predicted {}\n", mem_list(overall.peak),
             human_bytes(double(overall.total_peak)), human_bytes(double(predicted.total())));
  Measured measured{overall.peak, tok_s, run_mfu, total};
  fmt::print("predicted vs measured (per rank):\n{}", compare_table(forecast, &measured));
  const std::string summary = nlohmann::json{{"predicted", forecast.to_json()},
      {"measured", {{"mem_peak", mem_json(overall)}, {"tokens_per_s", tok_s}, {"mfu", measured.mfu}, {"seconds", total},
                    {"cost", total / 3600 * comm.size() * forecast.s.device.price}}}}.dump(2);
  write_file_atomic(dir + "/summary.json", summary.data(), summary.size());
  fmt::print("wrote {}, {}/metrics.jsonl, {}/summary.json\n", weights, dir, dir);
  if (cfg.run.profile) write_profile(dir, profile, t.steps - start - 1, timed_seconds, cfg.device.peak_for(dt));
}

void train(const RunConfig& cfg, Comm& comm, bool resume) {
  run_training(cfg, comm, resume);
  MemoryPool::get().trim();  // the run's buffers, released, are not kept for a process that goes on
}

}  // namespace frugal
