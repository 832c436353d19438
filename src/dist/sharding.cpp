// The data-parallel strategies: their policy, their memory per rank, and Shards, which
// allocates exactly that and runs the collectives (docs/memory.md, "Sharding").
#include <algorithm>
#include <chrono>
#include <cstring>

#include "dist/comm.h"

namespace frugal {

Strategy parse_strategy(const std::string& text, const std::string& where) {
  for (Strategy s : {Strategy::ddp, Strategy::zero1, Strategy::zero2, Strategy::zero3, Strategy::yafsdp})
    if (text == strategy_name(s)) return s;
  if (text == "fsdp") return Strategy::zero3;
  user_error("{}: dist.strategy: expected ddp, zero1, zero2, zero3 (or fsdp) or yafsdp, got '{}'", where, text);
}

const char* strategy_name(Strategy s) {
  static const char* names[] = {"ddp", "zero1", "zero2", "zero3", "yafsdp"};
  return names[int(s)];
}

StrategyPolicy StrategyPolicy::of(Strategy s) {
  StrategyPolicy p;
  p.shard_optimizer = s >= Strategy::zero1;
  p.shard_grads = s >= Strategy::zero2;
  p.shard_params = s >= Strategy::zero3;
  p.persistent = s == Strategy::zero2 || s == Strategy::yafsdp;
  return p;
}

Own model_owns(Strategy s) {
  const StrategyPolicy p = StrategyPolicy::of(s);
  return p.shard_params ? Own::none : p.shard_grads ? Own::params : Own::all;
}

// The allocations of Shards (and of the model, for what it owns), in closed form.
void strategy_memory(const std::vector<UnitSpec>& table, DType dt, Sharding sharding, MemoryEstimate& m) {
  // Model states per rank: each unit's 2-D weights are sliced into len = ceil(nbig / ranks)
  // elements per rank (a frozen unit's store into words of frozen_elem_bytes); its 1-D tail
  // stays whole.
  const StrategyPolicy pol = StrategyPolicy::of(sharding.strategy);
  const int64_t R = sharding.ranks, es = int64_t(dtype_size(dt));
  struct U { int64_t nbig = 0, tail = 0; };
  auto len = [&](const U& u) { return (u.nbig + R - 1) / R; };
  U emb, blk, fin, hd;  // the embedding, the largest block or adapter, the final unit, an untied head (trained)
  int64_t whole = 0, slices = 0;  // elements: every trained unit whole; this rank's slices + tails
  int64_t frozen = 0;  // bytes of the frozen units (LoRA's base): whole on every rank, or (zero3+) a slice of each store
  int64_t Pt = 0, Pa = 0, Fb = 0, Fe = 0, Fh = 0;  // zero3+ gathers: a trained block's, an adapter's; frozen ones'
  int L = 0;
  bool untied = false;
  for (const UnitSpec& t : table) {
    L += t.kind == UnitKind::block;
    untied |= t.kind == UnitKind::head;
    if (t.frozen) {
      if (!pol.shard_params) {
        frozen += frozen_bytes(t, dt);
        continue;
      }
      const int64_t fes = frozen_elem_bytes(t, dt), n = frozen_store_bytes(t, dt) / fes, l = (n + R - 1) / R;
      frozen += 4 * (t.numel - t.nbig) + l * fes;
      int64_t& g = t.kind == UnitKind::block ? Fb : t.kind == UnitKind::embedding ? Fe : Fh;
      g = std::max(g, R * l * fes);
      continue;
    }
    const U u{t.nbig, t.numel - t.nbig};
    whole += u.nbig + u.tail;
    slices += len(u) + u.tail;
    if (t.kind == UnitKind::embedding) emb = u;
    if ((t.kind == UnitKind::block || t.kind == UnitKind::adapter) && u.nbig + u.tail > blk.nbig + blk.tail) blk = u;
    if (t.kind == UnitKind::block) Pt = std::max(Pt, R * len(u) * es);
    if (t.kind == UnitKind::adapter) Pa = std::max(Pa, R * len(u) * es);
    if (t.kind == UnitKind::final) fin = u;
    if (t.kind == UnitKind::head) hd = u;
  }
  m.bytes[int(Mem::params)] = size_t(frozen + (pol.shard_params ? 4 * slices : 4 * whole + (dt != DType::f32 ? 2 * whole : 0)));
  m.bytes[int(Mem::grads)] = size_t(4 * (pol.shard_grads ? slices : whole));
  m.bytes[int(Mem::optimizer)] = size_t(8 * (pol.shard_optimizer ? slices : whole));
  // Communication buffers: full gradients of the embedding (GE), the final unit (GF), an untied
  // head (GH) and two blocks (GB, with their reduced slices); gathered weights of the embedding
  // (E, fp32, plus its compute copy for a tied head), of an untied head (PH, compute dtype) and
  // of two blocks (P, compute dtype, with their adapters; a frozen unit's as stored). Persistent
  // buffers are held from the start; zero3 allocates them on use and frees them after: its peak
  // is at the lm head or in the backward of a block (which also holds the next block's gradients
  // and prefetched weights), or, with an untied head, at the embedding's backward (its gradients
  // begin after the blocks').
  const int64_t out = R > 1 && sharding.reduce != DType::bf16;  // the reduced slice's own buffer: a reduce-scatter's
  auto grads = [&](const U& u) { return 4 * (R * len(u) + u.tail + out * len(u)); };
  const int64_t GE = grads(emb), GF = 4 * fin.tail, GB = grads(blk), GH = untied ? grads(hd) : 0,
                E = Fe + R * len(emb) * (4 + (dt != DType::f32 && !untied ? 2 : 0)), P = std::max(Pt, Fb) + Pa,
                PH = untied ? Fh + R * len(hd) * es : 0;
  int64_t comm = 0;
  if (pol.shard_grads && pol.persistent) comm = GE + GF + GH + 2 * GB;  // zero2, yafsdp
  if (pol.shard_params && pol.persistent) comm += E + 2 * P + PH;       // yafsdp
  if (pol.shard_params && !pol.persistent) {                           // zero3
    const int64_t held = GF + GH + (untied ? 0 : GE);  // gradient buffers alive through the backward
    comm = (untied ? PH : E) + held + (L > 0 ? P : 0);  // at the lm head, the last block prefetched
    for (int l = 0; l < L; l++)  // backward of block l: it, the prefetched l-1, its and l+1's gradients
      comm = std::max(comm, held + (l > 0 ? 2 : 1) * P + (l + 1 < L ? 2 : 1) * GB);
    if (untied) comm = std::max({comm, E + (L > 0 ? P : 0), held + GE + std::min(L, 2) * GB});
  }
  if (sharding.reduce == DType::bf16 && R > 1) {  // one bf16 scratch, the largest reduction
    int64_t most = 0;
    for (const UnitSpec& t : table) {
      const U u{t.nbig, t.numel - t.nbig};
      if (t.frozen) continue;
      most = std::max(most, pol.shard_grads ? R * len(u) + u.tail : u.nbig + u.tail);
    }
    comm += 2 * most;
  }
  m.bytes[int(Mem::comm)] = size_t(comm);
}

MemoryEstimate estimate_memory(const ModelConfig& cfg, int B, int T, DType dt, const std::vector<Recompute>& plan,
                               bool gpu, Sharding sharding) {
  return estimate_memory(cfg, param_table(cfg), B, T, dt, plan, gpu, sharding);
}

MemoryEstimate estimate_memory(const ModelConfig& cfg, const std::vector<UnitSpec>& table, int B, int T, DType dt,
                               const std::vector<Recompute>& plan, bool gpu, Sharding sharding) {
  MemoryEstimate m = model_memory(cfg, table, B, T, dt, plan, gpu);
  strategy_memory(table, dt, sharding, m);
  return m;
}

namespace {
using clock = std::chrono::steady_clock;
double since(clock::time_point t0) { return std::chrono::duration<double>(clock::now() - t0).count(); }
}  // namespace

Shards::Shards(Model& model, Backend& be, Comm& comm, Strategy s, DType reduce)
    : model_(model), be_(be), comm_(comm), s_(s), pol_(StrategyPolicy::of(s)), world_(comm.size()), rank_(comm.rank()) {
  auto& units = model.units();
  const bool shard_grads = pol_.shard_grads, shard_params = pol_.shard_params;
  const DType dt = model.compute_dtype();
  int64_t max_block_len = 0, max_block_tail = 0;  // gradient slots: blocks' and adapters'
  int64_t block_gather = 0, adapter_gather = 0;   // gather slots' bytes
  for (size_t i = 0; i < units.size(); i++) {
    Unit& u = units[i];
    Part p;
    if (u.frozen) {  // no gradient or optimizer state; under zero3+ a slice of its store
      if (shard_params) {
        p.es = frozen_elem_bytes(u, dt);
        p.n = frozen_store_bytes(u, dt) / p.es;
        p.len = (p.n + world_ - 1) / world_;
        p.lo = std::min(p.n, rank_ * p.len);
        p.hi = std::min(p.n, p.lo + p.len);
        p.fs = PoolArray<std::byte>(size_t(p.len * p.es), Mem::params);
        if (u.kind == UnitKind::block) block_gather = std::max(block_gather, world_ * p.len * p.es);
      }
      parts_.push_back(std::move(p));
      continue;
    }
    p.n = u.nbig;
    p.len = (u.nbig + world_ - 1) / world_;
    p.lo = std::min(u.nbig, rank_ * p.len);
    p.hi = std::min(u.nbig, p.lo + p.len);
    p.tail = u.numel - u.nbig;
    if (shard_params) {
      p.es = u.kind == UnitKind::embedding ? 4 : int(dtype_size(dt));  // gather_dtype's
      p.w = PoolArray<float>(size_t(p.len), Mem::params);
      p.wt = PoolArray<float>(size_t(p.tail), Mem::params);
      u.bind_params(nullptr, p.wt.data(), nullptr);
    }
    if (shard_grads) {
      p.g = PoolArray<float>(size_t(p.len), Mem::grads);
      p.gt = PoolArray<float>(size_t(p.tail), Mem::grads);
    }
    if (u.kind == UnitKind::block || u.kind == UnitKind::adapter) {  // adapters use the blocks' gradient slots
      max_block_len = std::max(max_block_len, p.len);
      max_block_tail = std::max(max_block_tail, p.tail);
      int64_t& slot = u.kind == UnitKind::adapter ? adapter_gather : block_gather;
      slot = std::max(slot, world_ * p.len * p.es);
    }
    parts_.push_back(std::move(p));
  }
  const size_t emb = model.embedding_unit(), fin = model.final_unit(), head = model.head_unit();
  const bool untied = head != emb;
  // Slots: gathered weights of two blocks (used alternately), of the embedding, of an untied
  // head and of two blocks' adapters; full gradients of two blocks (or their adapters), the
  // embedding, the final unit and an untied head. zero2 and yafsdp allocate their buffers here,
  // once; zero3 allocates one on use and frees it after.
  if (shard_params) gathers_.resize(6);
  if (shard_grads) grad_bufs_.resize(5);
  if (shard_params && pol_.persistent) {
    for (int k = 0; k < 2; k++) alloc_gather(gathers_[k], block_gather, 0);
    for (int k = 4; k < 6; k++) alloc_gather(gathers_[k], adapter_gather, 0);
    const Part& e = parts_[emb];
    alloc_gather(gathers_[2], world_ * e.len * e.es, dt != DType::f32 && !untied && !units[emb].frozen ? world_ * e.len : 0);
    if (untied) alloc_gather(gathers_[3], world_ * parts_[head].len * parts_[head].es, 0);
  }
  // precision.reduce = bf16: one scratch for the largest reduction (the communication thread
  // runs one collective at a time)
  if (reduce == DType::bf16 && world_ > 1) {
    int64_t most = 0;
    for (size_t i = 0; i < units.size(); i++)
      if (!units[i].frozen) most = std::max(most, shard_grads ? world_ * parts_[i].len + parts_[i].tail : units[i].numel);
    bf16_scratch_ = PoolArray<uint16_t>(size_t(most), Mem::comm);
  }
  if (shard_grads && pol_.persistent) {
    for (int k = 0; k < 2; k++) alloc_grads(grad_bufs_[k], max_block_len, max_block_tail);
    for (auto [k, i] : {std::pair{2, emb}, {3, fin}, {4, head}})  // a frozen one has none
      if (!units[i].frozen && (k < 4 || untied)) alloc_grads(grad_bufs_[size_t(k)], parts_[i].len, parts_[i].tail);
  }
  build_segments();
}

void Shards::alloc_gather(Gather& g, int64_t bytes, int64_t copy_elems) {
  g.buf = PoolArray<std::byte>(size_t(bytes), Mem::comm);
  g.copy = PoolArray<uint16_t>(size_t(copy_elems), Mem::comm);
}

void Shards::alloc_grads(GradBuf& b, int64_t len, int64_t tail) {
  b.buf = PoolArray<float>(size_t(world_ * len + tail), Mem::comm);
  // the reduced slice gets a buffer of its own only from a reduce-scatter: a bf16 reduction sums
  // the whole buffer, and on one rank the slice is the buffer's; both are read in place
  if (world_ > 1 && !bf16_scratch_.data()) b.out = PoolArray<float>(size_t(len), Mem::comm);
}

void Shards::build_segments() {
  auto& units = model_.units();
  for (size_t i = 0; i < units.size(); i++) {
    Unit& u = units[i];
    Part& p = parts_[i];
    if (u.frozen) continue;
    if (!pol_.shard_optimizer) {
      segs_.push_back({i, 0, u.numel, u.params.data(), u.grads.data(), u.compute.data()});
      continue;
    }
    float* w = pol_.shard_params ? p.w.data() : u.params.data() + p.lo;
    float* g = pol_.shard_grads ? p.g.data() : u.grads.data() + p.lo;
    float* wt = pol_.shard_params ? p.wt.data() : u.params.data() + u.nbig;
    float* gt = pol_.shard_grads ? p.gt.data() : u.grads.data() + u.nbig;
    if (p.hi > p.lo) segs_.push_back({i, p.lo, p.hi, w, g});
    if (p.tail > 0) segs_.push_back({i, u.nbig, u.numel, wt, gt});
  }
}

void Shards::set(size_t i, const float* full) {
  Part& p = parts_[i];
  Unit& u = model_.units()[i];
  if (u.frozen) {  // stored whole for a moment (cast or quantized by the model), then sliced
    u.store = PoolArray<std::byte>(size_t(p.n * p.es), Mem::workspace);
    u.bind_frozen(u.store.data(), model_.compute_dtype());
    for (const ParamSpec& s : u.specs) model_.write_param({&s, view_of(u.p, s), nullptr, i}, full + s.offset);
    return keep_slice(i);
  }
  FRUGAL_CHECK(p.w.size() || !p.len, "Shards::set: unit {} is not sharded", u.name);
  be_.copy(p.w.data(), full + p.lo, size_t(p.hi - p.lo) * 4);
  be_.fill_zero(p.w.data() + (p.hi - p.lo), p.len - (p.hi - p.lo));
  be_.copy(p.wt.data(), full + u.nbig, size_t(p.tail) * 4);
}

void Shards::keep_slice(size_t i) {
  Part& p = parts_[i];
  Unit& u = model_.units()[i];
  be_.copy(p.fs.data(), u.store.data() + p.lo * p.es, size_t((p.hi - p.lo) * p.es));
  be_.synchronize();
  u.store = {};
  u.bind_frozen(nullptr, model_.compute_dtype());
}

// ---- parameters ------------------------------------------------------------------------------

Shards::Gather* Shards::gather_slot(size_t i) {
  if (!pol_.shard_params || parts_[i].len == 0) return nullptr;  // owned, or nothing to gather
  const Unit& u = model_.units()[i];
  return &gathers_[u.kind == UnitKind::embedding ? 2 : u.kind == UnitKind::head ? 3
                   : size_t(u.layer % 2 + (u.kind == UnitKind::adapter ? 4 : 0))];
}

// The embedding is gathered in fp32 (its lookup reads fp32 weights, as in every strategy) and
// cast locally for a tied lm head; blocks and an untied head in the compute dtype.
DType Shards::gather_dtype(size_t i) const {
  return model_.units()[i].kind == UnitKind::embedding ? DType::f32 : model_.compute_dtype();
}

void Shards::prefetch(size_t i) {
  Gather* g = gather_slot(i);
  if (!g || g->unit == int(i)) return;  // nothing to do, in flight, or still resident
  Part& p = parts_[i];
  const bool frozen = model_.units()[i].frozen;
  const DType gdt = gather_dtype(i);
  const bool cast_copy = !frozen && gdt == DType::f32 && model_.compute_dtype() != DType::f32 && i == model_.head_unit();  // a tied head's
  if (!g->buf.data()) alloc_gather(*g, world_ * p.len * p.es, cast_copy ? world_ * p.len : 0);
  std::byte* mine = g->buf.data() + rank_ * p.len * p.es;
  if (frozen) be_.copy(mine, p.fs.data(), size_t((p.hi - p.lo) * p.es));  // as stored
  else be_.cast(mine, p.w.data(), p.hi - p.lo, gdt);                       // (a copy in fp32)
  g->unit = int(i);
  g->cast_done = false;
  g->work = comm_.all_gather_inplace(g->buf.data(), p.n, p.len, p.es);
}

void Shards::acquire(size_t i) {
  Gather* g = gather_slot(i);
  if (!g) return;
  prefetch(i);
  if (g->work) {
    auto t0 = clock::now();
    g->work->wait();
    g->work.reset();
    wait_s_ += since(t0);
  }
  Unit& u = model_.units()[i];
  const DType dt = model_.compute_dtype();
  if (u.frozen) return u.bind_frozen(g->buf.data(), dt);
  auto* f32 = reinterpret_cast<float*>(g->buf.data());
  if (g->copy.size() && !g->cast_done) be_.cast(g->copy.data(), f32, u.nbig, dt);
  g->cast_done = true;
  const uint16_t* wc = dt == DType::f32 ? nullptr
                       : g->copy.size() ? g->copy.data()
                                        : reinterpret_cast<const uint16_t*>(g->buf.data());
  u.bind_params(gather_dtype(i) == DType::f32 ? f32 : nullptr, parts_[i].wt.data(), wc);
}

void Shards::release(size_t i) {
  Gather* g = gather_slot(i);
  if (!g) return;
  Unit& u = model_.units()[i];
  if (u.frozen) u.bind_frozen(nullptr, model_.compute_dtype());
  else u.bind_params(nullptr, parts_[i].wt.data(), nullptr);
  if (!pol_.persistent) *g = Gather{};  // freed; yafsdp keeps it until the slot is reused
}

// ---- gradients -------------------------------------------------------------------------------

void Shards::zero_grads() {
  if (!pol_.shard_grads) return model_.zero_grads();
  for (Part& p : parts_) {
    be_.fill_zero(p.g.data(), int64_t(p.g.size()));
    be_.fill_zero(p.gt.data(), int64_t(p.gt.size()));
  }
}

Shards::GradBuf& Shards::grad_slot(size_t i) {
  const Unit& u = model_.units()[i];
  switch (u.kind) {
    case UnitKind::embedding: return grad_bufs_[2];
    case UnitKind::final: return grad_bufs_[3];
    case UnitKind::head: return grad_bufs_[4];
    default: return grad_bufs_[size_t(u.layer % 2)];
  }
}

void Shards::grads_begin(size_t i) {
  if (!pol_.shard_grads || model_.units()[i].frozen) return;
  GradBuf& b = grad_slot(i);
  if (b.unit >= 0) fold(b);
  Part& p = parts_[i];
  if (!b.buf.data()) alloc_grads(b, p.len, p.tail);  // zero-filled
  else be_.fill_zero(b.buf.data(), world_ * p.len + p.tail);
  b.unit = int(i);
  model_.units()[i].bind_grads(b.buf.data(), b.buf.data() + world_ * p.len);
}

void Shards::grads_end(size_t i, bool last_micro) {
  Unit& u = model_.units()[i];
  if (u.frozen) return;
  uint16_t* h = bf16_scratch_.data();
  if (!pol_.shard_grads) {  // ddp, zero1: whole gradients, summed once per step
    if (last_micro && world_ > 1)
      pending_.push_back(h ? comm_.all_reduce_bf16(u.grads.data(), h, u.numel)
                           : comm_.all_reduce(u.grads.data(), u.numel, ReduceOp::sum));
    return;
  }
  // zero2+: every micro-batch's gradients leave the full buffer at once, into the shard
  GradBuf& b = grad_slot(i);
  Part& p = parts_[i];
  // bf16: the whole buffer is summed and fold() takes the slice from it
  if (h) b.rs = comm_.all_reduce_bf16(b.buf.data(), h, world_ * p.len + p.tail);
  else if (b.out.data()) b.rs = comm_.reduce_scatter(b.buf.data(), b.out.data(), p.len, ReduceOp::sum);
  if (!h && p.tail) b.ar = comm_.all_reduce(b.buf.data() + world_ * p.len, p.tail, ReduceOp::sum);
}

void Shards::fold(GradBuf& b) {
  auto t0 = clock::now();
  comm_.mark("fold wait", b.unit);
  if (b.rs) b.rs->wait();
  if (b.ar) b.ar->wait();
  comm_.mark("fold waited", b.unit);
  wait_s_ += since(t0);
  b.rs.reset();
  b.ar.reset();
  Part& p = parts_[size_t(b.unit)];
  const float* tail = b.buf.data() + world_ * p.len;
  const float* slice = b.out.data() ? b.out.data() : b.buf.data() + rank_ * p.len;
  be_.add(p.g.data(), p.g.data(), slice, p.len, DType::f32);  // on the backend's device
  be_.add(p.gt.data(), p.gt.data(), tail, p.tail, DType::f32);
  model_.units()[size_t(b.unit)].bind_grads(nullptr, nullptr);
  b.unit = -1;
  if (!pol_.persistent) b = GradBuf{};
}

double Shards::finish() {
  auto t0 = clock::now();
  for (auto& w : pending_) w->wait();
  pending_.clear();
  wait_s_ += since(t0);
  for (GradBuf& b : grad_bufs_)
    if (b.unit >= 0) fold(b);
  double w = wait_s_;
  wait_s_ = 0.0;
  return w;
}

// One backend reduction over all units: one host wait on a GPU.
double Shards::grad_sum_squares() {
  std::vector<FloatSpan> spans;
  if (!pol_.shard_grads) {
    for (auto& u : model_.units())
      if (!u.frozen) spans.push_back({u.grads.data(), u.numel});
    return be_.sum_squares(spans);  // whole gradients, the same on every rank
  }
  for (size_t i = 0; i < parts_.size(); i++) {
    const Part& p = parts_[i];
    if (model_.units()[i].frozen) continue;
    spans.push_back({p.g.data(), p.len});
    if (rank_ == 0) spans.push_back({p.gt.data(), p.tail});  // replicated: counted on one rank
  }
  float buf[1] = {float(be_.sum_squares(spans))};
  comm_.all_reduce(buf, 1, ReduceOp::sum)->wait();
  return buf[0];
}

void Shards::after_update() {
  auto& units = model_.units();
  if (pol_.shard_optimizer && !pol_.shard_params)  // zero1, zero2: every rank's updated slice, in place
    for (size_t i = 0; i < units.size(); i++)
      if (units[i].nbig && !units[i].frozen) comm_.all_gather_inplace(units[i].params.data(), units[i].nbig, parts_[i].len)->wait();
  if (!pol_.shard_optimizer) return;  // ddp: AdamW wrote the compute copies; nothing is gathered
  refresh();
}

void Shards::refresh() {
  for (Gather& g : gathers_) g.unit = -1;  // stale: gathered again before the next use
  model_.sync_compute_weights();
}

std::vector<Shards::Range> Shards::master_ranges(size_t i) {
  Unit& u = model_.units()[i];
  Part& p = parts_[i];
  if (u.frozen) return {};  // not a training state: the base is loaded again
  if (!pol_.shard_params) return {{0, u.numel, u.params.data()}};
  std::vector<Range> out;
  if (p.hi > p.lo) out.push_back({p.lo, p.hi, p.w.data()});
  if (p.tail) out.push_back({u.nbig, u.numel, p.wt.data()});
  return out;
}

void Shards::materialize(bool frozen) {
  be_.synchronize();  // no gather or optimizer step is still in flight
  for (size_t i = 0; i < model_.units().size(); i++)
    if (frozen || !model_.units()[i].frozen) materialize(i);
}

void Shards::dematerialize() {
  be_.synchronize();  // no gather is still reading the shards copied into next
  for (size_t i = 0; i < model_.units().size(); i++) dematerialize(i);
  refresh();
}

void Shards::materialize(size_t i) {
  if (!pol_.shard_params) return;
  Unit& u = model_.units()[i];
  Part& p = parts_[i];
  if (u.frozen) {
    u.store = PoolArray<std::byte>(size_t(p.n * p.es), Mem::workspace);
    be_.copy(u.store.data() + p.lo * p.es, p.fs.data(), size_t((p.hi - p.lo) * p.es));
    if (p.n) comm_.all_gather_inplace(u.store.data(), p.n, p.len, p.es)->wait();
    return u.bind_frozen(u.store.data(), model_.compute_dtype());
  }
  u.params = PoolArray<float>(size_t(u.numel), Mem::workspace);
  be_.copy(u.params.data() + p.lo, p.w.data(), size_t(p.hi - p.lo) * 4);
  if (u.nbig) comm_.all_gather_inplace(u.params.data(), u.nbig, p.len)->wait();
  be_.copy(u.params.data() + u.nbig, p.wt.data(), size_t(p.tail) * 4);
  u.bind_params(u.params.data(), u.params.data() + u.nbig, nullptr);
}

void Shards::dematerialize(size_t i) {
  if (!pol_.shard_params) return;
  Unit& u = model_.units()[i];
  if (u.frozen) {
    if (u.store.data()) keep_slice(i);
    return;
  }
  if (!u.params.data()) return;  // not materialized
  set(i, u.params.data());
  be_.synchronize();  // the copies out of params are done before it is freed
  u.params = {};
  u.bind_params(nullptr, parts_[i].wt.data(), nullptr);
}

}  // namespace frugal
