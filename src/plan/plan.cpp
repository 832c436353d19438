// The plan: device catalogue, per-strategy model states, step time and cost, search, calibration.
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "plan/plan.h"

#ifndef FRUGAL_DEVICES_FILE
#define FRUGAL_DEVICES_FILE "configs/devices.toml"
#endif

namespace frugal {

// ---- catalogue ------------------------------------------------------------------------------

std::string default_devices_path() {
  const char* e = std::getenv("FRUGAL_DEVICES");
  return e && *e ? e : FRUGAL_DEVICES_FILE;
}

std::vector<Device> load_devices(const std::string& path) {
  if (!std::ifstream(path)) user_error("{}: cannot open the device catalogue", path);
  toml::table tbl;
  try {
    tbl = toml::parse(read_whole_file(path), path);
  } catch (const toml::parse_error& e) {
    user_error("{}:{}:{}: {}", path, e.source().begin.line, e.source().begin.column, e.description());
  }
  const toml::table* devs = tbl["devices"].as_table();
  if (!devs || devs->empty()) user_error("{}: expected [devices.NAME] tables, found none", path);
  for (auto& [k, v] : tbl)
    if (k.str() != "devices") user_error("{}: unknown top-level key '{}' (expected only [devices.NAME] tables)", path, k.str());
  std::vector<Device> out;
  for (auto& [name, node] : *devs) {
    const std::string where = fmt::format("{}: devices.{}", path, name.str());
    const toml::table* t = node.as_table();
    if (!t) user_error("{}: expected a table", where);
    Device d;
    d.name = std::string(name.str());
    static const std::set<std::string> keys = {"description", "peak_flops", "peak_flops_bf16", "memory", "reserved",
        "link_bandwidth", "node_size", "network_bandwidth", "price", "mfu", "mfu_bf16", "backend"};
    for (auto& [k, v] : *t)
      if (!keys.count(std::string(k.str())))
        user_error("{}.{}: unknown key (expected one of: {})", where, k.str(), fmt::join(keys, ", "));
    auto need = [&](const char* key) -> const toml::node& {
      const toml::node* n = t->get(key);
      if (!n) user_error("{}.{}: missing", where, key);
      return *n;
    };
    // a number above 0 (or at least 0), integers included
    auto number = [&](const char* key, bool zero_ok = false) {
      const toml::node& n = need(key);
      auto v = n.value<double>();
      if (!v || n.is_boolean() || n.is_string()) user_error("{}.{}: expected a number", where, key);
      if (!(*v > 0 || (zero_ok && *v == 0)))
        user_error("{}.{}: expected a number {} 0, got {}", where, key, zero_ok ? ">=" : ">", *v);
      return *v;
    };
    auto bytes = [&](const char* key) {
      const toml::node& n = need(key);
      if (auto i = n.value_exact<int64_t>(); i && *i >= 0) return *i;
      if (auto s = n.value_exact<std::string>()) return parse_bytes(*s, where + "." + key);
      user_error("{}.{}: expected bytes or a size like \"80GiB\"", where, key);
    };
    auto desc = need("description").value_exact<std::string>();
    if (!desc) user_error("{}.description: expected a string", where);
    d.description = *desc;
    d.peak_flops = number("peak_flops");
    d.peak_flops_bf16 = number("peak_flops_bf16");
    d.memory = bytes("memory");
    d.reserved = bytes("reserved");
    if (d.reserved >= d.memory) user_error("{}.reserved: must be below memory ({} bytes), got {}", where, d.memory, d.reserved);
    d.link_bandwidth = number("link_bandwidth");
    auto ns = need("node_size").value_exact<int64_t>();
    if (!ns || *ns < 1) user_error("{}.node_size: expected an integer >= 1", where);
    d.node_size = int(*ns);
    d.network_bandwidth = number("network_bandwidth");
    d.price = number("price", true);
    d.mfu = number("mfu");
    if (d.mfu > 1) user_error("{}.mfu: expected a fraction in (0, 1], got {}", where, d.mfu);
    if (t->get("mfu_bf16")) {
      d.mfu_bf16 = number("mfu_bf16");
      if (d.mfu_bf16 > 1) user_error("{}.mfu_bf16: expected a fraction in (0, 1], got {}", where, d.mfu_bf16);
    }
    auto backend = need("backend").value_exact<std::string>();
    if (!backend || (*backend != "cuda" && *backend != "cpu"))
      user_error("{}.backend: expected \"cuda\" or \"cpu\"", where);
    d.gpu = *backend == "cuda";
    out.push_back(d);
  }
  return out;
}

const Device& find_device(const std::vector<Device>& devices, const std::string& name,
                          const std::string& path) {
  std::vector<std::string> names;
  for (const Device& d : devices) {
    if (d.name == name) return d;
    names.push_back(d.name);
  }
  user_error("{}: unknown device '{}' (known: {})", path, name, fmt::join(names, ", "));
}

std::string cpu_device_name() {
  const std::string isa = cpu_bf16_isa();
  return isa == "amx" ? "cpu-amx" : isa == "avx512_bf16" ? "cpu-avx512" : "cpu-avx2";
}

void resolve_device(DeviceSettings& d, const std::string& source, const std::string& devices_path) {
  if (d.name.empty() && d.backend == "cuda")
    user_error("{}: device.name: the CUDA backend needs the GPU's entry in {} (e.g. h100-sxm), or "
               "device.name, device.peak_flops and device.peak_flops_bf16 of your own", source, devices_path);
  if (d.name.empty()) d.name = cpu_device_name();
  if (d.peak_flops > 0 && d.peak_flops_bf16 > 0) return;
  for (const Device& e : load_devices(devices_path))
    if (e.name == d.name) {
      if (d.peak_flops <= 0) d.peak_flops = e.peak_flops;
      if (d.peak_flops_bf16 <= 0) d.peak_flops_bf16 = e.peak_flops_bf16;
      return;
    }
  user_error("{}: device.name: '{}' is not in {}: give device.peak_flops and device.peak_flops_bf16 too", source,
             d.name, devices_path);
}

// ---- model states ---------------------------------------------------------------------------

std::vector<int64_t> unit_numels(const ModelConfig& cfg) {
  std::vector<int64_t> u;
  for (const UnitSpec& t : param_table(cfg)) u.push_back(t.numel);
  return u;
}

ModelStates model_states(const std::vector<int64_t>& units, const StateLayout& b, Strategy s, int ranks) {
  double full = 0, shard = 0;
  for (int64_t n : units) {
    full += double(n);
    shard += double((n + ranks - 1) / ranks);  // a padded slice
  }
  ModelStates m;
  const StrategyPolicy p = StrategyPolicy::of(s);
  m.params = p.shard_params ? b.master * shard : (b.master + b.copy) * full;
  m.grads = b.grad * (p.shard_grads ? shard : full);
  m.optimizer = b.optimizer * (p.shard_optimizer ? shard : full);
  return m;
}

MemoryEstimate plan_memory(const ModelConfig& cfg, int B, int T, DType compute,
                           const RecomputePolicy& recompute, Strategy s, int ranks, DType reduce, bool gpu) {
  return estimate_memory(cfg, B, T, compute, recompute.per_block(cfg.n_layer),
                         gpu, {s, ranks, reduce});
}

// ---- time and cost --------------------------------------------------------------------------

double document_span(int64_t doc_tokens, int seq_len) {
  // a window whose first document has a of its D tokens left holds a, then whole documents, then
  // what is left of T; a >= T: the window is one piece
  const int64_t D = doc_tokens, T = seq_len;
  double pairs = double(std::max<int64_t>(0, D - T + 1)) * double(T) * double(T);
  for (int64_t a = 1; a <= std::min(D, T - 1); a++) {
    const int64_t rest = T - a;
    pairs += double(a) * double(a) + double(rest / D) * double(D) * double(D) + double(rest % D) * double(rest % D);
  }
  return pairs / double(D) / double(T);
}

std::string PlanSettings::describe() const {
  return fmt::format("{} x {}, {}, {}, recompute {}, micro-batch {}", devices, device.name,
                     strategy_name(strategy), dtype_name(compute), recompute.name(), micro_batch);
}

// Across hosts CPU ranks' MPI runs over TCP, whose payload is 1448 bytes of each 1538 an Ethernet
// link carries at MTU 1500 (headers, timestamps, preamble and gap): the 941 Mb/s iperf shows on
// gigabit, and what the catalogue's network_bandwidth, a line rate, leaves to the ranks.
constexpr double kTcpPayloadShare = 1448.0 / 1538.0;

ModelTable::ModelTable(const ModelConfig& c)
    : units(param_table(c)), trainable(trainable_params(units)), no_wpe(params_no_wpe(units, c.vocab_size)) {}

Plan make_plan(const PlanSettings& s) { return make_plan(s, ModelTable(s.model)); }

Plan make_plan(const PlanSettings& s, const ModelTable& t) {
  Plan p;
  p.s = s;
  const ModelConfig& c = s.model;
  const int64_t micro = int64_t(s.micro_batch) * s.seq_len * s.devices;
  p.step_tokens = s.batch_tokens > 0 ? s.batch_tokens : micro;
  p.valid = p.step_tokens % micro == 0;
  p.accum = int(std::max<int64_t>(1, p.step_tokens / micro));
  p.memory = estimate_memory(c, t.units, s.micro_batch, s.seq_len, s.compute, s.recompute.per_block(c.n_layer),
                             s.device.gpu, {s.strategy, s.devices, s.reduce});
  p.fits = p.over() <= 0;
  p.model_flops_per_token = c.flops_per_token(s.span(), t.no_wpe);
  // Recompute FLOPs per token: a full block re-runs its qkv, proj and MLP-in GEMMs (2·C·(W +
  // C + Fin): 16·C² for GPT-2) and its attention (4·S·C), but for the last one, whose stash is
  // intact; selective re-runs the attention. Norms and activations are not counted.
  int num_full = 0, num_sel = 0;
  for (Recompute r : s.recompute.per_block(c.n_layer)) {
    num_full += r == Recompute::full;
    num_sel += r == Recompute::selective;
  }
  const ActWidths w = act_widths(c);
  const double C = c.n_embd, attention = 4.0 * s.span() * C, gemms = 2 * C * double(w.W + w.C + w.fin);
  p.flops_per_token = p.model_flops_per_token + std::max(0, num_full - 1) * (gemms + attention) + num_sel * attention;
  p.compute_s = p.flops_per_token * double(p.step_tokens) / s.devices / (s.mfu * s.device.peak_for(s.compute));
  // Communication per device and step: a ring all-reduce of the gradients moves 2Ψ·(N-1)/N
  // elements in the reduce dtype (ddp, zero1, zero2: reduce-scatter + all-gather), once per step.
  // ZeRO-3 gathers the parameters twice (forward, backward) in the compute dtype and
  // reduce-scatters the gradients in the reduce dtype, for every micro-batch:
  // accum·(2·e_compute + e_reduce)·Ψ·(N-1)/N bytes. Under LoRA Ψ counts the adapters, and
  // ZeRO-3 gathers the frozen base too, as it is stored (compute dtype, or nf4/int8).
  // CPU ranks talk through MpiComm, whose reduce-scatter is an all-reduce (twice a ring
  // reduce-scatter's bytes), and zero1/zero2 then gather the updated fp32 parameters after the
  // optimizer, where no backward hides it. Across hosts its collectives move data at TCP's
  // payload rate of the link: traced per collective between 2 hosts with a CPU each (tc tbf at 1
  // and 5 Gb/s), a unit's 7 MB all-reduce takes 60 ms at 1 Gb/s (0.94 of the link) and 14.3 ms
  // at 5 Gb/s (0.79) with MpiComm's transport settings (bench/RESULTS.md, issue 24).
  const bool zero3 = StrategyPolicy::of(s.strategy).shard_params, mpi = !s.device.gpu;
  const bool gather_after = mpi && !zero3 && StrategyPolicy::of(s.strategy).shard_optimizer;
  const double N = s.devices, psi = double(t.trainable), rs = mpi ? 2.0 : 1.0;
  double base = 0;
  for (const UnitSpec& u : t.units)
    if (u.frozen) base += double(frozen_store_bytes(u, s.compute));
  const double per_micro =
      zero3 ? 2.0 * (double(dtype_size(s.compute)) * psi + base) + rs * double(dtype_size(s.reduce)) * psi : 0;
  const double gather_bytes = N > 1 && gather_after ? 4 * psi * (N - 1) / N : 0;
  p.comm_bytes = (N > 1 ? (zero3 ? p.accum * per_micro : 2 * psi * double(dtype_size(s.reduce))) * (N - 1) / N : 0) + gather_bytes;
  const bool network = s.devices > s.device.node_size;
  p.bandwidth = network ? s.device.network_bandwidth * (mpi ? kTcpPayloadShare : 1.0) : s.device.link_bandwidth;
  p.comm_s = p.comm_bytes > 0 ? p.comm_bytes / p.bandwidth : 0.0;  // a device not in the catalogue: bandwidth 0
  // Overlap: reductions run behind the last micro-batch's backward (2/3 of its compute), ZeRO-3's
  // gathers behind each micro-batch's forward and backward; the last unit's transfer is never
  // hidden, nor zero1/zero2's gather after the optimizer on MPI. CPU ranks hide nothing: the
  // compute thread's OpenMP threads hold every core, and MpiComm's communication thread, which
  // yields while it waits, gets one only when compute waits too. Traced at 1 and 5 Gb/s, the one
  // all-reduce that runs while backward computes is stretched by nearly the backward's length
  // (by 18 of 24 ms and 20 of 25 ms: its transfer all but stops), then the rest follow at the
  // link's rate once backward ends (bench/RESULTS.md, issue 24).
  const double units = c.n_layer + 2, after_s = p.comm_bytes > 0 ? gather_bytes / p.bandwidth : 0.0;
  const int rounds = zero3 ? p.accum : 1;  // transfers per step, each behind one micro-batch
  const double hideable = mpi ? 0.0 : (zero3 ? 1.0 : 2.0 / 3.0);
  const double window = hideable * p.compute_s / p.accum, each = (p.comm_s - after_s) / rounds;
  p.exposed_comm_s = rounds * (std::max(0.0, each * (1 - 1 / units) - window) + each / units) + after_s;
  p.step_s = p.compute_s + p.exposed_comm_s;
  p.tokens_per_s = double(p.step_tokens) / p.step_s;
  p.total_s = std::ceil(s.tokens / double(p.step_tokens)) * p.step_s;  // whole steps, as the run takes them
  p.cost = p.total_s / 3600.0 * s.devices * s.device.price;
  return p;
}

nlohmann::json Plan::to_json() const {
  nlohmann::json mem;
  for (int c = 0; c < num_mem; c++) mem[mem_name(Mem(c))] = memory.bytes[c];
  mem["total"] = memory.total();
  mem["usable"] = s.device.usable();
  return {{"device", s.device.name}, {"devices", s.devices}, {"strategy", strategy_name(s.strategy)},
          {"precision", dtype_name(s.compute)}, {"reduce", dtype_name(s.reduce)},
          {"recompute", s.recompute.name()}, {"micro_batch", s.micro_batch}, {"seq_len", s.seq_len},
          {"attention_span", s.span()},
          {"accum_steps", accum}, {"batch_tokens", step_tokens}, {"mfu", s.mfu},
          {"memory", mem}, {"fits", fits}, {"over_bytes", std::max<int64_t>(0, over())},
          {"flops_per_token", flops_per_token}, {"model_flops_per_token", model_flops_per_token},
          {"total_flops", model_flops_per_token * s.tokens},
          {"compute_s", compute_s}, {"comm_bytes", comm_bytes}, {"comm_s", comm_s},
          {"exposed_comm_s", exposed_comm_s}, {"step_s", step_s}, {"tokens_per_s", tokens_per_s},
          {"tokens", s.tokens}, {"total_s", total_s}, {"price_per_hour", s.device.price}, {"cost", cost}};
}

Plan plan_for_run(const RunConfig& cfg, int ranks, const RecomputePolicy& recompute,
                  const std::string& devices_path, double attention_span) {
  PlanSettings s;
  s.model = cfg.model;
  s.device.name = cfg.device.name;
  if (std::ifstream(devices_path)) {
    for (const Device& d : load_devices(devices_path))
      if (d.name == cfg.device.name) s.device = d;
  }
  s.device.peak_flops = cfg.device.peak_flops;  // MFU is measured against the config's peaks
  s.device.peak_flops_bf16 = cfg.device.peak_flops_bf16;
  s.device.gpu = cfg.device.backend == "cuda";  // the run's backend sizes its lm-head chunks
  if (s.device.memory == 0) s.device.memory = int64_t(1) << 62;  // not in the catalogue: unknown
  s.mfu = s.device.mfu_for(cfg.precision.compute);
  s.strategy = parse_strategy(cfg.dist.strategy, cfg.source);
  s.compute = cfg.precision.compute;
  s.reduce = cfg.precision.reduce;
  s.recompute = recompute;
  s.micro_batch = cfg.train.micro_batch;
  s.seq_len = cfg.train.seq_len;
  s.attention_span = attention_span;
  s.devices = ranks;
  s.batch_tokens = int64_t(cfg.train.micro_batch) * cfg.train.seq_len * cfg.accum_steps(ranks) * ranks;
  s.tokens = double(s.batch_tokens) * cfg.train.steps;
  return make_plan(s);
}

std::string Plan::explain() const {
  std::string o = fmt::format("{}; seq_len {}, batch {} tokens = {} x {} x {} micro-batches x {} devices\n",
                              s.describe(), s.seq_len, step_tokens, s.micro_batch, s.seq_len, accum, s.devices);
  o += "memory per device:\n";
  for (int c = 0; c < num_mem; c++)
    if (memory.bytes[c]) o += fmt::format("  {:<12} {:>12}\n", mem_name(Mem(c)), human_bytes(double(memory.bytes[c])));
  o += fmt::format("  {:<12} {:>12} of {} usable: {}\n", "total", human_bytes(double(memory.total())),
                   human_bytes(double(s.device.usable())),
                   fits ? fmt::format("fits ({} free)", human_bytes(double(-over())))
                        : fmt::format("DOES NOT FIT ({} over)", human_bytes(double(over()))));
  if (s.attention_span > 0)
    o += fmt::format("attention: documents masked apart, {:.4g} keys a token on average (of a window of {})\n",
                     s.attention_span, s.seq_len);
  o += fmt::format("step: compute {:.1f} ms ({:.3g} FLOP/token at MFU {:.0f}% of {:.4g} TFLOP/s {})", compute_s * 1e3,
                   flops_per_token, 100 * s.mfu, s.device.peak_for(s.compute) / 1e12, dtype_name(s.compute));
  if (s.devices > 1)
    o += fmt::format(" + communication {:.1f} ms exposed of {:.1f} ms ({} per device over {:.3g} GB/s; {})",
                     exposed_comm_s * 1e3, comm_s * 1e3, human_bytes(comm_bytes), bandwidth / 1e9,
                     s.device.gpu ? "assumed hidden behind backward, ZeRO-3 gathers behind forward too, except the last unit"
                                  : "CPU ranks: none hidden, compute holds the cores");
  o += fmt::format(" = {:.1f} ms, {:.4g} tokens/s\n", step_s * 1e3, tokens_per_s);
  o += fmt::format("budget: {:.4g} tokens ({:.3g} model FLOPs{}): {} steps, {}", s.tokens, model_flops_per_token * s.tokens,
                   flops_per_token > model_flops_per_token
                       ? fmt::format(", {:.3g} executed with the recompute", flops_per_token * s.tokens) : "",
                   int64_t(std::ceil(s.tokens / double(step_tokens))), human_time(total_s));
  o += fmt::format(", {:.4g} device-hours", total_s / 3600.0 * s.devices);
  if (s.device.price > 0) o += fmt::format(", {} ({} x {}/h)", dollars(cost), s.devices, dollars(s.device.price));
  return o + "\n";
}

// ---- search ---------------------------------------------------------------------------------

// Ties in cost and time (every micro-batch gets the same MFU) go to the simpler setting: less
// recompute, a less sharded strategy, a larger micro-batch (GPUs are more efficient with one),
// then less memory.
static int recompute_rank(const RecomputePolicy& r) {
  using K = RecomputePolicy::Kind;
  return r.kind == K::none ? 0 : r.kind == K::selective ? 1 : r.kind == K::every ? 2 : 3;
}

static std::string tie_reason(const Plan& a, const Plan& b) {  // why a ranks below b, "" if not
  if (recompute_rank(a.s.recompute) != recompute_rank(b.s.recompute))
    return recompute_rank(a.s.recompute) > recompute_rank(b.s.recompute) ? "more recompute" : "";
  if (a.s.strategy != b.s.strategy) return a.s.strategy > b.s.strategy ? "a more sharded strategy" : "";
  if (a.s.micro_batch != b.s.micro_batch) return a.s.micro_batch < b.s.micro_batch ? "a smaller micro-batch" : "";
  if (a.memory.total() != b.memory.total())
    return a.memory.total() > b.memory.total()
               ? human_bytes(double(a.memory.total()) - double(b.memory.total())) + " more memory per device" : "";
  return "";
}

static bool better(const Plan& a, const Plan& b) {
  if (a.fits != b.fits) return a.fits;
  if (!a.fits) return a.over() < b.over();
  if (a.late() != b.late()) return b.late();
  if (a.late()) return a.total_s < b.total_s;
  if (a.cost != b.cost) return a.cost < b.cost;
  if (a.step_s != b.step_s) return a.step_s < b.step_s;
  return tie_reason(a, b).empty() && !tie_reason(b, a).empty();
}

PlanQuery open_query(const PlanSettings& base, const std::vector<Device>& devices) {
  PlanQuery q;
  q.base = base;
  q.devices = devices;
  q.strategies = {Strategy::ddp, Strategy::zero1, Strategy::zero2, Strategy::zero3};
  q.precisions = {DType::f32, DType::bf16};
  for (const char* r : {"none", "selective", "every:2", "full"}) q.recomputes.push_back(RecomputePolicy::parse(r, "search"));
  for (int m = 1; m <= 64; m *= 2) q.micro_batches.push_back(m);
  for (int n = 1; n <= 1024; n *= 2) q.device_counts.push_back(n);
  return q;
}

std::vector<Plan> search(const PlanQuery& q) {
  const ModelTable table(q.base.model);
  std::vector<Plan> out;
  for (const Device& dev : q.devices)
    for (Strategy st : q.strategies)
      for (DType dt : q.precisions)
        for (const RecomputePolicy& rc : q.recomputes)
          for (int b : q.micro_batches)
            for (int n : q.device_counts) {
              if (st != Strategy::ddp && n == 1 && q.strategies.size() > 1) continue;  // = ddp
              PlanSettings s = q.base;
              s.device = dev;
              if (s.mfu <= 0) s.mfu = dev.mfu_for(dt);
              s.strategy = st;
              s.compute = dt;
              s.recompute = rc;
              s.micro_batch = b;
              s.devices = n;
              Plan p = make_plan(s, table);
              if (p.valid) out.push_back(p);
            }
  std::stable_sort(out.begin(), out.end(), better);
  return out;
}

std::string lost_because(const Plan& l, const Plan& best) {
  if (!l.fits)
    return fmt::format("does not fit: needs {}, {} over the {} usable", human_bytes(double(l.memory.total())),
                       human_bytes(double(l.over())), human_bytes(double(l.s.device.usable())));
  if (l.late())
    return fmt::format("takes {}, over the {} limit", human_time(l.total_s), human_time(l.s.max_hours * 3600));
  const double eps = 1e-9;
  if (l.cost > best.cost * (1 + eps) && best.cost > 0)
    return fmt::format("costs {} more (+{:.0f}%){}", dollars(l.cost - best.cost), 100 * (l.cost / best.cost - 1),
                       l.total_s > best.total_s ? fmt::format(", {} slower", human_time(l.total_s - best.total_s))
                       : l.total_s < best.total_s ? fmt::format(", though {} sooner", human_time(best.total_s - l.total_s)) : "");
  if (l.step_s > best.step_s * (1 + eps))
    return fmt::format("same cost, {:.1f}% slower", 100 * (l.step_s / best.step_s - 1));
  const std::string why = tie_reason(l, best);
  return "same cost and time" + (why.empty() ? std::string() : ", " + why);
}

// ---- calibration ----------------------------------------------------------------------------

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

nlohmann::json Calibration::to_json() const {
  return {{"run_dir", run_dir}, {"device", device}, {"precision", precision}, {"ranks", ranks},
          {"steps", steps}, {"tokens_per_s", tokens_per_s}, {"step_s", step_s}, {"peak_flops", peak},
          {"mfu", mfu}};
}

std::vector<std::pair<int, nlohmann::json>> read_metrics(const std::string& run_dir) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::ifstream in(path);
  if (!in) user_error("{}: cannot open the run's metrics", path);
  std::vector<std::pair<int, nlohmann::json>> records;
  std::string line;
  for (int n = 1; std::getline(in, line); n++) {
    nlohmann::json r = nlohmann::json::parse(line, nullptr, false);
    if (r.is_discarded() && in.eof()) {
      fmt::print(stderr, "warning: {}:{}: the last line is cut short (the run stopped while writing it): skipped\n", path, n);
      break;
    }
    // what the plan is made of: a run's ranks (it divides by them) and its attention span
    if (r.is_object() && r.contains("ranks") && !(r["ranks"].is_number_integer() && r["ranks"].get<int64_t>() >= 1 &&
                                                  r["ranks"].get<int64_t>() <= (1 << 20)))
      user_error("{}:{}: ranks: expected an integer from 1 to {}, got {}", path, n, 1 << 20, r["ranks"].dump());
    if (r.is_object() && r.contains("attention_span") && !(r["attention_span"].is_number() && r["attention_span"].get<double>() > 0))
      user_error("{}:{}: attention_span: expected a number > 0, got {}", path, n, r["attention_span"].dump());
    records.emplace_back(n, std::move(r));
  }
  return records;
}

Calibration calibrate(const std::string& run_dir, const std::string& devices_path) {
  RunConfig cfg = load_config(run_dir + "/config.toml", {});
  const std::string path = run_dir + "/metrics.jsonl";
  std::vector<double> tok_s, step_s, span;  // span: data.document_mask's attention_span
  std::string recompute = cfg.memory.recompute.name();
  int ranks = 1, n = 0;
  for (const auto& [at, r] : read_metrics(run_dir)) {
    n = at;
    if (r.is_discarded() || !r.is_object() || !r.contains("tokens_per_s") || !r["tokens_per_s"].is_number() ||
        !r.contains("step_ms") || !r["step_ms"].is_number())
      user_error("{}:{}: expected a JSON record with numbers tokens_per_s and step_ms", path, n);
    if (n == 1) {  // the first step warms up
      if (r.contains("ranks") && r["ranks"].is_number_integer()) ranks = r["ranks"].get<int>();
      if (r.contains("recompute") && r["recompute"].is_string()) recompute = r["recompute"].get<std::string>();
      continue;
    }
    tok_s.push_back(r["tokens_per_s"].get<double>());
    step_s.push_back(r["step_ms"].get<double>() / 1e3);
    if (r.contains("attention_span") && r["attention_span"].is_number()) span.push_back(r["attention_span"].get<double>());
  }
  if (tok_s.empty()) user_error("{}: needs at least 2 steps (the first warms up), found {}", path, n);
  Plan p = plan_for_run(cfg, ranks, RecomputePolicy::parse(recompute, path), devices_path, median(span));
  Calibration c;
  c.run_dir = run_dir;
  c.device = cfg.device.name;
  c.precision = dtype_name(cfg.precision.compute);
  c.ranks = ranks;
  c.steps = int(tok_s.size());
  c.tokens_per_s = median(tok_s);
  c.step_s = median(step_s);
  c.peak = p.s.device.peak_for(cfg.precision.compute);
  // tokens/s is rank 0's share of the step's tokens; the plan's FLOPs include recompute
  c.mfu = p.flops_per_token * double(p.step_tokens) / c.step_s / (ranks * c.peak);
  return c;
}

double parse_mfu(const std::string& text) {
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    if (used == text.size()) {
      if (!(v > 0 && v <= 1)) user_error("--mfu: expected a fraction in (0, 1], got {}", text);
      return v;
    }
  } catch (const std::invalid_argument&) {
  } catch (const std::out_of_range&) {
  }
  std::error_code ec;
  if (!std::filesystem::is_regular_file(text, ec))
    user_error("--mfu: '{}' is neither a number nor a readable calibration file", text);
  nlohmann::json j = nlohmann::json::parse(read_whole_file(text), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("mfu") || !j["mfu"].is_number() ||
      !(j["mfu"].get<double>() > 0))
    user_error("{}: mfu: expected a calibration file (frugal plan --calibrate) with a number mfu > 0", text);
  return j["mfu"].get<double>();
}

// ---- formatting -----------------------------------------------------------------------------

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(b) >= 1024.0 && u < 4) { b /= 1024.0; u++; }
  return fmt::format("{:.1f} {}", b, units[u]);
}

std::string human_time(double s) {
  if (!std::isfinite(s)) return "unknown";
  int64_t t = int64_t(s + 0.5);
  if (t >= 86400 * 2) return fmt::format("{}d{:02}h", t / 86400, (t / 3600) % 24);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  if (s < 10) return fmt::format("{:.2f}s", s);
  return fmt::format("{}s", t);
}

std::string dollars(double usd) {
  if (usd >= 1000) return fmt::format("${:.0f}", usd);
  if (usd >= 0.01 || usd == 0) return fmt::format("${:.2f}", usd);
  return fmt::format("${:.2g}", usd);
}

std::string compare_table(const Plan& p, const Measured* m) {
  std::string out = fmt::format("  {:<12} {:>12}{}\n", "", "predicted", m ? fmt::format(" {:>12} {:>7}", "measured", "error") : "");
  auto row = [&](const std::string& name, double pred, double meas, const std::string& a, const std::string& b) {
    out += fmt::format("  {:<12} {:>12}", name, a);
    if (m) out += fmt::format(" {:>12} {:>7}", b, pred > 0 ? fmt::format("{:+.1f}%", 100 * (meas / pred - 1)) : "");
    out += "\n";
  };
  size_t total = 0;
  for (int c = 0; c < num_mem; c++) {
    const double pr = double(p.memory.bytes[c]), me = m ? double(m->peak[c]) : 0;
    total += m ? m->peak[c] : 0;
    if (pr > 0 || me > 0) row(mem_name(Mem(c)), pr, me, human_bytes(pr), human_bytes(me));
  }
  row("memory sum", double(p.memory.total()), double(total), human_bytes(double(p.memory.total())), human_bytes(double(total)));
  row("tokens/s", p.tokens_per_s, m ? m->tokens_per_s : 0, fmt::format("{:.0f}", p.tokens_per_s),
      m ? fmt::format("{:.0f}", m->tokens_per_s) : "");
  // model FLOPs utilisation, as train measures it (recompute not counted)
  const double mfu = p.model_flops_per_token * p.tokens_per_s / (p.s.devices * p.s.device.peak_for(p.s.compute));
  if (m) row("MFU/device", mfu, m->mfu, fmt::format("{:.1f}%", 100 * mfu), fmt::format("{:.1f}%", 100 * m->mfu));
  const double rate = p.s.devices * p.s.device.price / 3600.0;
  row("time", p.total_s, m ? m->seconds : 0, human_time(p.total_s), m ? human_time(m->seconds) : "");
  if (p.s.device.price > 0)
    row("cost", p.cost, m ? m->seconds * rate : 0, dollars(p.cost), m ? dollars(m->seconds * rate) : "");
  return out;
}

}  // namespace frugal
