// Checkpoints: ckpt-STEP directories written atomically, kept K at a time, and resumed on any
// number of ranks or strategy (each rank reads the range it holds now from whichever rank files
// cover it). The layout is described in train.h.
#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "data/data.h"
#include "train/train.h"

namespace frugal {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string rank_file(const std::string& dir, int r) { return fmt::format("{}/rank-{}.safetensors", dir, r); }
std::string tensor(size_t unit, const char* what, int64_t lo) { return fmt::format("u{}.{}.{}", unit, what, lo); }

// Tokens in one optimizer step: what must not change across a resume.
int64_t tokens_per_step(const RunConfig& cfg, int world) {
  return int64_t(cfg.train.micro_batch) * cfg.train.seq_len * cfg.accum_steps(world) * world;
}

// ckpt-STEP directories of run_dir by step (complete ones; partial ones end in .tmp / .old).
std::vector<std::pair<int, fs::path>> checkpoints(const std::string& run_dir, bool partial = false) {
  static const std::regex complete(R"(ckpt-(\d+))"), other(R"(ckpt-\d+\.(tmp|old))");
  std::vector<std::pair<int, fs::path>> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(run_dir, ec)) {
    std::string name = e.path().filename().string();
    std::smatch m;
    if (!partial && std::regex_match(name, m, complete)) {
      int step = 0;
      const std::string digits = m[1];
      auto [end, ec2] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
      if (ec2 != std::errc() || end != digits.data() + digits.size())
        user_error("{}: step {} is out of range: not a checkpoint frugal wrote (move it out of the run directory)",
                   e.path().string(), digits);
      out.push_back({step, e.path()});
    }
    if (partial && std::regex_match(name, other)) out.push_back({0, e.path()});
  }
  std::sort(out.begin(), out.end());
  return out;
}

void remove_dir(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) user_error("{}: cannot remove: {}", p.string(), ec.message());
}

json read_state(const std::string& dir) {
  const std::string path = dir + "/state.json";
  if (!std::ifstream(path)) user_error("{}: cannot open (not a frugal checkpoint?)", path);
  try {
    json j = json::parse(read_whole_file(path));
    j.at("format_version").get<int>();
    return j;
  } catch (const json::exception& e) {
    user_error("{}: not a valid checkpoint state: {}", path, e.what());
  }
}

// One rank file: its tensors and, per unit, the ranges [lo, hi) it holds.
struct RankFile {
  SafeTensors st;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges;
  RankFile(const std::string& path, const std::vector<Unit>& units) : st(path) {
    auto get = [&](const std::string& key) -> std::string {
      auto it = st.metadata().find(key);
      if (it == st.metadata().end()) user_error("{}: metadata '{}' is missing", path, key);
      return it->second;
    };
    for (size_t i = 0; i < units.size(); i++) {
      const std::string key = fmt::format("u{}.numel", i);
      const int64_t n = metadata_integer<int64_t>(get(key), key, path);
      if (n != units[i].numel)
        user_error("{}: unit {} ({}) has {} elements, the model {}", path, i, units[i].name, n, units[i].numel);
      ranges.emplace_back();
      std::string list = get(fmt::format("u{}.ranges", i));
      for (size_t at = 0; at < list.size();) {
        long long lo = 0, hi = 0;
        int used = 0;
        if (std::sscanf(list.c_str() + at, "%lld-%lld%n", &lo, &hi, &used) != 2 || lo < 0 || lo > hi || hi > units[i].numel)
          user_error("{}: metadata u{}.ranges = '{}': expected lo-hi,... within the unit", path, i, list);
        ranges.back().push_back({lo, hi});
        at += size_t(used) + 1;
      }
    }
  }
};

// Copies the parts of elements [lo, hi) of unit `unit`'s `what` that file f holds into
// out(hi - lo), in be's memory; returns how many elements that was.
int64_t copy_range(Backend& be, const RankFile& f, size_t unit, const char* what, int64_t lo, int64_t hi, float* out) {
  int64_t copied = 0;
  for (auto [flo, fhi] : f.ranges[unit]) {
    int64_t a = std::max(lo, flo), b = std::min(hi, fhi);
    if (a >= b) continue;
    const float* src = f.st.f32(tensor(unit, what, flo), fhi - flo);
    be.copy(out + (a - lo), src + (a - flo), size_t(b - a) * sizeof(float));
    copied += b - a;
  }
  return copied;
}

}  // namespace

std::string latest_checkpoint(const std::string& run_dir) {
  auto all = checkpoints(run_dir);
  return all.empty() ? "" : all.back().second.string();
}

int remove_checkpoints(const std::string& run_dir) {
  auto complete = checkpoints(run_dir), partial = checkpoints(run_dir, true);
  for (auto& c : complete) remove_dir(c.second);
  for (auto& c : partial) remove_dir(c.second);
  return int(complete.size());
}

double save_checkpoint(const RunConfig& cfg, int step, Model& model, Stepper& st, const DataLoader& data,
                       Comm& comm) {
  auto t0 = std::chrono::steady_clock::now();
  const std::string run_dir = cfg.run.dir, final_dir = fmt::format("{}/ckpt-{}", run_dir, step),
                    tmp = final_dir + ".tmp";
  const bool rank0 = comm.rank() == 0;
  if (rank0) {
    remove_dir(tmp);  // left by a run killed while writing it
    std::error_code ec;
    fs::create_directories(tmp, ec);
    if (ec) user_error("{}: cannot create: {}", tmp, ec.message());
  }
  comm.barrier();
  model.backend().synchronize();  // every op done, on every stream, before the host copies the state
  AdamW& opt = st.optimizer();
  Shards& shards = st.shards();
  auto& units = model.units();
  // ddp: rank 0 writes whole units; sharded: every rank its slices, rank 0 the replicated tails
  const bool sharded = shards.policy().shard_optimizer;
  const int num_files = sharded ? comm.size() : 1;
  if (sharded || rank0) {
    std::vector<StTensor> ts;
    std::vector<std::vector<float>> host;  // on a GPU: this rank's weights and moments, copied out
    std::map<std::string, std::string> meta = {{"format_version", std::to_string(kCheckpointVersion)},
                                               {"rank", std::to_string(comm.rank())},
                                               {"world", std::to_string(num_files)}};
    std::vector<std::vector<std::string>> ranges(units.size());
    const auto& segs = shards.segments();
    for (size_t k = 0; k < segs.size(); k++) {
      const Shards::Segment& sg = segs[k];
      const bool tail = sg.begin == units[sg.unit].nbig;  // a slice of [0, nbig) never starts there
      if (sharded && tail && !rank0) continue;
      for (auto [what, p] : {std::pair{"params", sg.w}, {"m", opt.m(k).data()}, {"v", opt.v(k).data()}})
        ts.push_back({tensor(sg.unit, what, sg.begin), "F32", {sg.end - sg.begin},
                      host_view(model.backend(), p, sg.end - sg.begin, host)});
      ranges[sg.unit].push_back(fmt::format("{}-{}", sg.begin, sg.end));
    }
    for (size_t i = 0; i < units.size(); i++) {
      meta[fmt::format("u{}.ranges", i)] = fmt::format("{}", fmt::join(ranges[i], ","));
      meta[fmt::format("u{}.numel", i)] = std::to_string(units[i].numel);
    }
    for (const StTensor& t : ts)  // verified before a resume (verify_checkpoint)
      meta["sum." + t.name] = fmt::format("{:016x}", checksum(t.data, size_t(t.shape[0]) * 4));
    save_safetensors(rank_file(tmp, comm.rank()), ts, meta);
  }
  shards.materialize();  // zero3/yafsdp: the whole weights, for model.safetensors
  if (rank0) {
    save_run_weights(tmp, cfg, model, step);
    std::string toml = cfg.to_toml();
    write_file_atomic(tmp + "/config.toml", toml.data(), toml.size());
    const LossScaler& sc = st.scaler();
    DataLoader::Position pos = data.position();
    json state = {{"format_version", kCheckpointVersion},
                  {"step", step},
                  {"updates", st.updates()},
                  {"seed", cfg.train.seed},
                  {"world", comm.size()},
                  {"strategy", cfg.dist.strategy},
                  {"rank_files", num_files},
                  {"tokens_per_step", tokens_per_step(cfg, comm.size())},
                  {"data", {{"epoch", pos.epoch}, {"shard", pos.shard}, {"window", pos.window},
                            {"num_windows", data.num_windows()}}},
                  {"loss_scaler", {{"scale", sc.scale}, {"clean_steps", sc.clean_steps},
                                   {"skipped_total", sc.skipped_total},
                                   {"consecutive_skips", sc.consecutive_skips}}}};
    std::string text = state.dump(2) + "\n";
    write_file_atomic(tmp + "/state.json", text.data(), text.size());
  }
  shards.dematerialize();
  comm.barrier();  // every rank's file is written and fsynced
  if (rank0) {
    fsync_dir(tmp);
    remove_dir(final_dir);  // only there if a run was restarted below its step
    std::error_code ec;
    fs::rename(tmp, final_dir, ec);
    if (ec) user_error("{}: cannot rename into {}: {}", tmp, final_dir, ec.message());
    fsync_dir(run_dir);
    // Keep the newest K: an old one is renamed away first, so that a kill while removing it
    // never leaves a partial directory under a complete name.
    auto all = checkpoints(run_dir);
    for (size_t i = 0; i + size_t(cfg.run.keep_checkpoints) < all.size(); i++) {
      fs::path old = all[i].second.string() + ".old";
      fs::rename(all[i].second, old, ec);
      if (ec) user_error("{}: cannot remove: {}", all[i].second.string(), ec.message());
    }
    for (auto& p : checkpoints(run_dir, true)) remove_dir(p.second);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int check_checkpoint(const std::string& dir, const RunConfig& cfg, int world) {
  json state = read_state(dir);
  const std::string state_path = dir + "/state.json";
  const int version = state["format_version"].get<int>();
  if (version > kCheckpointVersion)
    user_error("{}: format_version {} is newer than this frugal reads ({}); resume it with a newer frugal",
               state_path, version, kCheckpointVersion);
  RunConfig saved = load_config(dir + "/config.toml", {});
  std::vector<std::string> diffs;  // every model key but the preset's name ("model.KEY=VALUE")
  const std::vector<std::string> was = model_overrides(saved.model), now = model_overrides(cfg.model);
  for (size_t i = 1; i < was.size(); i++)
    if (was[i] != now[i]) {
      const size_t eq = was[i].find('=');
      diffs.push_back(fmt::format("{} {} -> {}", was[i].substr(0, eq), was[i].substr(eq + 1), now[i].substr(eq + 1)));
    }
  const LoraConfig &lw = saved.model.lora, &ln = cfg.model.lora;
  if (lw.rank != ln.rank || lw.alpha != ln.alpha || lw.targets != ln.targets || lw.base != ln.base)
    diffs.push_back(fmt::format("lora (rank {}, alpha {}, targets [{}], base {}) -> (rank {}, alpha {}, targets [{}], base {})",
                                lw.rank, lw.alpha, fmt::join(lw.targets, " "), base_format_name(lw.base), ln.rank, ln.alpha,
                                fmt::join(ln.targets, " "), base_format_name(ln.base)));
  if (ln.on() && saved.train.init_from != cfg.train.init_from)
    diffs.push_back(fmt::format("train.init_from (LoRA's frozen base) '{}' -> '{}'", saved.train.init_from, cfg.train.init_from));
  if (!diffs.empty())
    user_error("{}: the configuration changes the model shape of checkpoint {}: {} (resume with the checkpoint's shape)",
               cfg.source, dir, fmt::join(diffs, ", "));
  try {
    const int files = state.at("rank_files").get<int>();
    for (int r = 0; r < files; r++)
      if (!fs::exists(rank_file(dir, r)))
        user_error("{}: missing (the checkpoint was written by {} rank file(s); it cannot be resumed)",
                   rank_file(dir, r), files);
    const std::string weights = dir + (cfg.model.lora.on() ? "/adapter/adapter_model.safetensors" : "/model.safetensors");
    if (!fs::exists(weights)) user_error("{}: missing", weights);
    const int step = state.at("step").get<int>();
    if (fs::path(dir).filename().string() != fmt::format("ckpt-{}", step))
      user_error("{}: step {}, but the checkpoint is {} (the state was edited or moved)", state_path, step,
                 fs::path(dir).filename().string());
    const uint64_t seed = state.at("seed").get<uint64_t>();
    if (seed != cfg.train.seed)
      user_error("{}: train.seed = {}, but {} was trained with seed {}: the data order would change mid-epoch "
                 "(resume with train.seed = {})", cfg.source, cfg.train.seed, dir, seed, seed);
    const int64_t was = state.at("tokens_per_step").get<int64_t>(), now = tokens_per_step(cfg, world);
    if (was != now)
      user_error("{}: the checkpoint was trained with {} tokens per step, this run would take {} on {} rank(s) "
                 "(set train.batch_tokens = {})", state_path, was, now, world, was);
    return step;
  } catch (const json::exception& e) {
    user_error("{}: not a valid checkpoint state: {}", state_path, e.what());
  }
}

void verify_checkpoint(const std::string& dir) {
  const json state = read_state(dir);
  int files = 0;
  try {
    files = state.at("rank_files").get<int>();
  } catch (const json::exception& e) {
    user_error("{}/state.json: not a valid checkpoint state: {}", dir, e.what());
  }
  for (int r = 0; r < files; r++) {
    const std::string path = rank_file(dir, r);
    if (!fs::exists(path)) continue;  // not corrupt but incomplete: check_checkpoint names it
    SafeTensors st(path);
    for (const std::string& name : st.names()) {
      auto sum = st.metadata().find("sum." + name);
      if (sum == st.metadata().end()) continue;  // written before checksums
      int64_t n = 1;
      for (int64_t d : st.shape(name)) n *= d;
      if (fmt::format("{:016x}", checksum(st.f32(name, n), size_t(n) * 4)) != sum->second)
        user_error("{}: tensor '{}' fails its checksum (the file is corrupt)", path, name);
    }
  }
}

void load_checkpoint(const std::string& dir, Model& model, Stepper& st, DataLoader& data) {
  json state = read_state(dir);
  const std::string state_path = dir + "/state.json";
  model.backend().synchronize();  // nothing still reads or writes the state the files replace
  auto& units = model.units();
  AdamW& opt = st.optimizer();
  Shards& shards = st.shards();
  // One rank file at a time (memory: the largest file): this rank's master weights (whole
  // units, or its slices and tails) and the moments of its segments, from whichever files
  // cover them.
  struct Dest { size_t unit; const char* what; int64_t lo, hi; float* out; int64_t covered = 0; };
  std::vector<Dest> dests;
  for (size_t i = 0; i < units.size(); i++)
    for (const Shards::Range& r : shards.master_ranges(i)) dests.push_back({i, "params", r.lo, r.hi, r.data});
  const auto& segs = shards.segments();
  for (size_t k = 0; k < segs.size(); k++) {
    dests.push_back({segs[k].unit, "m", segs[k].begin, segs[k].end, opt.m(k).data()});
    dests.push_back({segs[k].unit, "v", segs[k].begin, segs[k].end, opt.v(k).data()});
  }
  for (int r = 0; r < state.at("rank_files").get<int>(); r++) {
    RankFile f(rank_file(dir, r), units);
    for (Dest& d : dests) d.covered += copy_range(model.backend(), f, d.unit, d.what, d.lo, d.hi, d.out);
  }
  for (const Dest& d : dests)
    if (d.covered != d.hi - d.lo)
      user_error("{}: the rank files hold {} of the {} elements of u{}.{} [{}, {}) this rank needs (a missing or "
                 "overlapping shard)", dir, d.covered, d.hi - d.lo, d.unit, d.what, d.lo, d.hi);
  shards.refresh();
  try {
    st.set_updates(state.at("updates").get<int>());
    const json& sc = state.at("loss_scaler");
    LossScaler& s = st.scaler();
    s.scale = sc.at("scale").get<double>();
    s.clean_steps = sc.at("clean_steps").get<int>();
    s.skipped_total = sc.at("skipped_total").get<int64_t>();
    s.consecutive_skips = sc.at("consecutive_skips").get<int>();
    const json& d = state.at("data");
    if (d.at("num_windows").get<int64_t>() != data.num_windows())
      user_error("{}: the training data had {} windows, data.train now has {} (resume on the same data)",
                 state_path, d.at("num_windows").get<int64_t>(), data.num_windows());
    data.seek({d.at("epoch").get<int64_t>(), d.at("shard").get<int64_t>(), d.at("window").get<int64_t>()},
              state_path);
  } catch (const json::exception& e) {
    user_error("{}: not a valid checkpoint state: {}", state_path, e.what());
  }
}

// ---- a run's weights -------------------------------------------------------------------------

std::string save_run_weights(const std::string& dir, const RunConfig& cfg, Model& model, int step) {
  if (!cfg.model.lora.on()) {
    save_model(dir + "/model.safetensors", model, step);
    return dir + "/model.safetensors";
  }
  save_adapters(dir + "/adapter", model, cfg.train.init_from, step);
  return dir + "/adapter";
}

// The step in a weights file's metadata (-1: none, or no file).
static int weights_step(const std::string& path) {
  if (!fs::exists(path)) return -1;
  SafeTensors st(path);
  auto it = st.metadata().find("step");
  return it == st.metadata().end() ? -1 : metadata_integer<int>(it->second, "step", path);
}

RunWeights find_run_weights(const std::string& path) {
  RunWeights w;
  w.cfg = load_config(path + "/config.toml", {});
  const std::string file = w.lora() ? "/adapter/adapter_model.safetensors" : "/model.safetensors";
  w.dir = path;
  if (!fs::exists(path + "/state.json")) {  // a run: its final weights, or a newer checkpoint's
    const std::string ckpt = latest_checkpoint(path);
    if (!ckpt.empty() && weights_step(ckpt + file) >= weights_step(path + file)) w.dir = ckpt;
  }
  if (!fs::exists(w.dir + file)) user_error("{}{}: missing (the run has not saved weights yet)", w.dir, file);
  if (!w.lora()) w.cfg.model = read_model_config(w.dir + file);
  return w;
}

void load_run_weights(const RunWeights& w, Model& model) {
  if (!w.lora()) return load_model(w.dir + "/model.safetensors", model);
  model.init(w.cfg.train.seed);  // the base: as the run made it, then loaded over
  if (!w.cfg.train.init_from.empty()) load_model(w.cfg.train.init_from, model);
  load_adapters(w.dir + "/adapter", model);
}

}  // namespace frugal
