// The model: storage, init, activations and the explicit forward/backward of each stage, for
// every family (what differs between them is the table and a few switches: the norm, the
// positions, the MLP's activation).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "model/model.h"

namespace frugal {

UnitSpec make_unit_spec(UnitKind kind, int layer, std::string name, std::vector<ParamSpec> specs) {
  UnitSpec u{kind, layer, std::move(name), std::move(specs)};
  for (bool big : {true, false})  // the 2-D weights first, then the 1-D tail
    for (auto& s : u.specs) {
      if ((s.shape.size() == 2) != big) continue;
      s.numel = 1;
      for (int64_t d : s.shape) s.numel *= d;
      s.offset = u.numel;
      u.numel += s.numel;
      if (big) u.nbig = u.numel;
    }
  return u;
}

const char* family_name(Family f) { return f == Family::llama ? "llama" : "gpt2"; }

static int64_t align64(int64_t n) { return (n + 63) / 64 * 64; }

// Where the parts of one quantized tensor of n values sit in its region: codes, absmax codes
// (nf4), scales (nf4's absmax2, int8's per block), each 64-byte aligned.
struct QuantParts {
  int64_t q, absmax, scale;
  int64_t total() const { return q + absmax + scale; }
};
static QuantParts quant_parts(BaseFormat b, int64_t n) {
  const int64_t nb = (n + kQuantBlock - 1) / kQuantBlock;
  const bool nf4 = b == BaseFormat::nf4;
  return {align64(nf4 ? (n + 1) / 2 : n), align64(nf4 ? nb : 0), align64(4 * (nf4 ? (nb + kNf4Block2 - 1) / kNf4Block2 : nb))};
}

int64_t frozen_bytes(const UnitSpec& u, DType dt) {
  const int64_t tail = 4 * (u.numel - u.nbig);
  const BaseFormat base = u.base;
  if (base == BaseFormat::compute) return dt == DType::f32 ? 4 * u.numel : int64_t(dtype_size(dt)) * u.nbig + tail;
  int64_t q = 0;  // each of transformers' tensors (q_proj, k_proj, ...) quantized on its own
  for (const ParamSpec& s : u.specs)
    if (s.shape.size() == 2)
      for (const HfPart& part : s.hf) q += quant_parts(base, part.rows * s.shape[1]).total();
  return q + tail;
}

int64_t frozen_store_bytes(const UnitSpec& u, DType dt) { return frozen_bytes(u, dt) - 4 * (u.numel - u.nbig); }

// A unit of the table with the storage the model owns (a frozen unit's store unless Shards keeps it).
static Unit make_unit(UnitSpec spec, DType dt, Own own) {
  Unit u;
  static_cast<UnitSpec&>(u) = std::move(spec);
  if (u.frozen) {  // the 2-D weights as stored, the tail in fp32; no gradients
    u.params = PoolArray<float>(size_t(u.numel - u.nbig), Mem::params);
    if (own != Own::none) u.store = PoolArray<std::byte>(size_t(frozen_store_bytes(u, dt)), Mem::params);
    u.bind_frozen(u.store.data(), dt);
    return u;
  }
  if (own != Own::none) {
    u.params = PoolArray<float>(u.numel, Mem::params);
    if (dt != DType::f32) u.compute = PoolArray<uint16_t>(u.numel, Mem::params);
    u.bind_params(u.params.data(), u.params.data() + u.nbig, u.compute.data());
  }
  if (own == Own::all) {
    u.grads = PoolArray<float>(u.numel, Mem::grads);
    u.bind_grads(u.grads.data(), u.grads.data() + u.nbig);
  }
  return u;
}

void Unit::bind_frozen(const std::byte* at, DType dt) {
  float* tail = params.data();
  if (base == BaseFormat::compute) {
    const bool f32 = dt == DType::f32;
    bind_params(f32 && at ? reinterpret_cast<float*>(const_cast<std::byte*>(at)) : nullptr, tail,
                !f32 && at ? reinterpret_cast<const uint16_t*>(at) : nullptr);
    return;
  }
  bind_params(nullptr, tail, nullptr);
  // the quantized parts in order, each in its region of the store; their offsets (set when
  // quantized) stay
  qv.resize(specs.size());
  int64_t off = 0;
  for (size_t k = 0; k < specs.size(); k++) {
    const ParamSpec& s = specs[k];
    if (s.shape.size() != 2) continue;
    for (size_t j = 0; j < s.hf.size(); j++) {
      if (qv[k].size() <= j)
        qv[k].push_back({base == BaseFormat::nf4 ? QuantFormat::nf4 : QuantFormat::int8, s.hf[j].rows, s.shape[1]});
      const QuantParts q = quant_parts(base, s.hf[j].rows * s.shape[1]);
      const auto* p = at ? reinterpret_cast<const uint8_t*>(at + off) : nullptr;
      QuantView& v = qv[k][j];
      v.q = p;
      v.absmax = p && base == BaseFormat::nf4 ? p + q.q : nullptr;
      v.scale = p ? reinterpret_cast<const float*>(p + q.q + q.absmax) : nullptr;
      off += q.total();
    }
  }
}

int64_t Unit::offset_of(float* Tensors::*field) const {
  for (const auto& s : specs)
    if (s.site < 0 && s.field == field) return s.offset;
  FRUGAL_CHECK(false, "unit {} has no such parameter", name);
}

void Unit::bind_params(float* big, float* tail, const uint16_t* compute_copy) {
  for (const auto& s : specs)
    view_of(p, s) = s.offset < nbig ? (big ? big + s.offset : nullptr) : tail + (s.offset - nbig);
  wc = compute_copy;
}

void Unit::bind_grads(float* big, float* tail) {
  for (const auto& s : specs) view_of(g, s) = !big && !tail ? nullptr : s.offset < nbig ? big + s.offset : tail + (s.offset - nbig);
}

Model::Model(const ModelConfig& cfg, Backend& be, DType compute, Own own) : cfg_(cfg), be_(be), dt_(compute) {
  for (UnitSpec& spec : param_table(cfg)) {
    const size_t i = units_.size();
    switch (spec.kind) {
      case UnitKind::embedding: embedding_ = head_ = i; break;  // the head is tied to wte
      case UnitKind::block: blocks_.push_back(i); break;
      case UnitKind::final: final_ = i; break;
      case UnitKind::head: head_ = i; break;
      case UnitKind::adapter: adapters_.push_back(i); break;
    }
    units_.push_back(make_unit(std::move(spec), dt_, own));
  }
  sites_ = lora_sites(cfg_, 0);  // every block's are the same rows of the same weights
}

void Model::init(uint64_t seed, const std::function<void(size_t unit, const float* full)>& sink) {
  Rng rng(seed);
  const double std_resid = 0.02 / std::sqrt(2.0 * cfg_.n_layer);
  for (size_t ui = 0; ui < units_.size(); ui++) {
    Unit& u = units_[ui];
    // made on the host: in place on the CPU, else in host memory, then copied or handed over
    std::vector<float> host;
    float* base = u.params.data();
    if (!base || be_.gpu() || u.frozen) {
      host.resize(size_t(u.numel));
      base = host.data();
    }
    for (auto& s : u.specs) {
      float* d = base + s.offset;
      int64_t n = s.numel;
      if (s.vocab_rows()) n = int64_t(cfg_.vocab_size) * cfg_.n_embd;  // padding rows 0
      switch (s.init) {
        case Init::normal: rng.normals(d, n, 0.02); break;
        case Init::normal_residual: rng.normals(d, n, std_resid); break;
        case Init::ones: for (int64_t i = 0; i < n; i++) d[i] = 1.0f; break;
        case Init::zeros: std::memset(d, 0, n * sizeof(float)); break;
        case Init::kaiming_uniform: {  // torch's kaiming_uniform_(a=sqrt(5)): bound 1/sqrt(fan_in)
          const double bound = 1.0 / std::sqrt(double(s.shape[1]));
          for (int64_t i = 0; i < n; i++) d[i] = float(bound * (2 * rng.uniform() - 1));
          break;
        }
      }
      std::memset(d + n, 0, (s.numel - n) * sizeof(float));
    }
    if (u.frozen && (u.store.data() || u.nbig == 0)) {  // its store the model's (or only a tail)
      for (auto& s : u.specs) write_param({&s, view_of(u.p, s), nullptr, ui}, base + s.offset);
    } else if (u.params.data() && !u.frozen) {
      if (base != u.params.data()) be_.copy(u.params.data(), base, size_t(u.numel) * sizeof(float));
    } else {
      FRUGAL_CHECK(bool(sink), "unit {} has no parameter storage and init has no sink", u.name);
      sink(ui, base);
    }
  }
  sync_compute_weights();
}

void Model::sync_compute_weights() {
  if (dt_ == DType::f32) return;
  for (auto& u : units_)
    if (u.compute.data()) be_.cast(u.compute.data(), u.params.data(), u.numel, dt_);
}

const void* Model::cw(const Unit& u, float* Tensors::*field) const {
  if (dt_ == DType::f32) return u.p.*field;
  return u.wc + u.offset_of(field);
}

void Model::zero_grads() {
  for (auto& u : units_)
    if (u.grads.data()) be_.fill_zero(u.grads.data(), u.numel);
}

std::vector<Model::Named> Model::named_params() {
  be_.synchronize();  // every op done, on every stream, before the caller copies these
  std::vector<Named> out;
  for (size_t i = 0; i < units_.size(); i++)
    for (auto& s : units_[i].specs) out.push_back({&s, view_of(units_[i].p, s), view_of(units_[i].g, s), i});
  return out;
}

void Model::write_param(const Named& n, const float* host) {
  const size_t bytes = size_t(n.spec->numel) * sizeof(float);
  if (n.data) return be_.copy(n.data, host, bytes);
  Unit& u = units_[n.unit];
  if (!u.qv.empty()) {  // each part quantized on the host, then copied where the backend reads it
    const float* rows = host;
    const QuantStack& parts = u.qv[size_t(n.spec - u.specs.data())];
    for (size_t j = 0; j < parts.size(); j++) {
      const QuantView& v = parts[j];
      write_quant(n, j, v.format == QuantFormat::nf4 ? quantize_nf4(rows, v.rows, v.cols) : quantize_int8(rows, v.rows, v.cols));
      rows += v.rows * v.cols;
    }
    return;
  }
  // a frozen unit's 2-D weight: its compute copy
  FRUGAL_CHECK(u.frozen && u.wc, "{} has no storage", n.spec->name);
  uint16_t* dst = const_cast<uint16_t*>(u.wc) + n.spec->offset;
  if (!be_.gpu()) return be_.cast(dst, host, n.spec->numel, dt_);
  PoolArray<float> staged(size_t(n.spec->numel), Mem::workspace);
  be_.copy(staged.data(), host, bytes);
  be_.cast(dst, staged.data(), n.spec->numel, dt_);
  be_.synchronize();
}

void Model::write_quant(const Named& n, size_t part, const QuantTensor& t) {
  Unit& u = units_[n.unit];
  QuantView& v = u.qv[size_t(n.spec - u.specs.data())][part];
  FRUGAL_CHECK(v.format == t.format && v.rows == t.rows && v.cols == t.cols && v.q, "write_quant: {} part {}",
               n.spec->name, part);
  be_.copy(const_cast<uint8_t*>(v.q), t.q.data(), t.q.size());
  if (v.absmax) be_.copy(const_cast<uint8_t*>(v.absmax), t.absmax.data(), t.absmax.size());
  be_.copy(const_cast<float*>(v.scale), t.scale.data(), t.scale.size() * sizeof(float));
  v.offset = t.offset;
}

void Model::read_param(const Named& n, float* host) {
  const int64_t numel = n.spec->numel;
  if (n.data) return be_.copy(host, n.data, size_t(numel) * sizeof(float));
  const Unit& u = units_[n.unit];
  if (!u.qv.empty()) {  // each part dequantized from the backend's copy
    for (const QuantView& v : u.qv[size_t(n.spec - u.specs.data())]) {
      const bool nf4 = v.format == QuantFormat::nf4;
      const int64_t nb = (v.n() + kQuantBlock - 1) / kQuantBlock;
      QuantTensor t{v.format, v.rows, v.cols, std::vector<uint8_t>(size_t(nf4 ? (v.n() + 1) / 2 : v.n())),
                    std::vector<uint8_t>(size_t(nf4 ? nb : 0)),
                    std::vector<float>(size_t(nf4 ? (nb + kNf4Block2 - 1) / kNf4Block2 : nb)), v.offset};
      be_.copy(t.q.data(), v.q, t.q.size());
      if (v.absmax) be_.copy(t.absmax.data(), v.absmax, t.absmax.size());
      be_.copy(t.scale.data(), v.scale, t.scale.size() * sizeof(float));
      dequantize_ref(host, t.view(), 0, v.n());
      host += v.n();
    }
    return;
  }
  FRUGAL_CHECK(u.frozen && u.wc, "{} has no storage", n.spec->name);
  std::vector<uint16_t> h(static_cast<size_t>(numel));
  be_.copy(h.data(), u.wc + n.spec->offset, h.size() * sizeof(uint16_t));
  for (int64_t i = 0; i < numel; i++) host[i] = dt_ == DType::bf16 ? to_f32(bf16{h[size_t(i)]}) : f16_bits_to_f32(h[size_t(i)]);
}

// Columns of LoRA's dropout workspace: the widest adapter input (0 without dropout).
static int64_t dropout_width(const ModelConfig& c) {
  if (!c.lora.on() || c.lora.dropout == 0) return 0;
  int64_t most = 0;
  for (const LoraSite& s : lora_sites(c, 0)) most = std::max(most, s.in);
  return most;
}

// Elements of the quantized layers' panel workspace: the largest of the block's four linears'.
static int64_t quant_ws_elems(const ModelConfig& c) {
  if (!c.lora.on() || c.lora.base == BaseFormat::compute) return 0;
  const ActWidths w{c.n_embd, c.qkv_width(), c.gated_mlp() ? 2 * c.ffn() : c.ffn(), c.ffn(), 0, 0};
  int64_t most = 0;
  for (auto [OC, IC] : {std::pair{w.W, w.C}, {w.C, w.C}, {w.fin, w.C}, {w.C, w.F}})
    most = std::max(most, quant_panel_rows(IC, OC) * IC);
  return most;
}

// Bytes of the lm head's weight (Vp, C) kept in the backend's packed layout over the head's
// chunks, as B of the forward (W^T) and of dX (W), where the backend keeps such copies (the CPU,
// in bf16) and more than one chunk reuses them. On the CPU, gpt2 bf16 at B=4, T=1024: 2 x 77 MB.
static std::array<size_t, 2> head_pack(const Backend& be, int64_t C, int64_t Vp, int64_t BT, int64_t rows, DType dt) {
  if (rows >= BT) return {0, 0};
  return {be.packed_bytes(true, C, Vp, dt), be.packed_bytes(false, Vp, C, dt)};
}

void Model::allocate(int B, int T, const std::vector<Recompute>& plan, int64_t head_rows) {
  FRUGAL_CHECK(B > 0 && T > 0 && T <= cfg_.context, "allocate(B={}, T={})", B, T);
  std::vector<Recompute> p = plan.empty() ? std::vector<Recompute>(cfg_.n_layer, Recompute::none) : plan;
  FRUGAL_CHECK(int(p.size()) == cfg_.n_layer, "recompute plan for {} blocks, model has {}", p.size(), cfg_.n_layer);
  if (B == B_ && T == T_ && p == plan_ && (head_rows == 0 || head_rows == head_rows_)) return;
  B_ = B;
  T_ = T;
  plan_ = p;
  storage_.clear();
  res_.clear();
  acts_.clear();
  const int64_t BT = int64_t(B) * T, Vp = cfg_.padded_vocab();
  const ActWidths w = act_widths(cfg_);
  const int64_t C = w.C, NH = w.NH;
  const Mem A = Mem::activations, W = Mem::workspace;
  const size_t es = dtype_size(dt_);
  auto take = [&](int64_t bytes, Mem m) {
    storage_.emplace_back(size_t(bytes), m);
    return storage_.back().data();
  };
  auto f32 = [&](int64_t n, Mem m) { return reinterpret_cast<float*>(take(n * 4, m)); };
  auto act = [&](int64_t n, Mem m) { return take(n * int64_t(es), m); };
  // Workspace first: recomputed tensors live in it. dbig holds a recomputing block's MLP
  // activation (and, under selective, its attention output after the first W columns, where
  // dqkv goes: free until the activation is rebuilt); dsmall its norm outputs.
  dbig_ = Bytes(size_t(w.dbig() * BT) * es, W);
  dsmall_ = Bytes(size_t(BT * C) * es, W);
  // Everything of a block but its input; what a recompute policy rebuilds lives in workspace.
  auto stash = [&](Recompute r) {
    BlockActs a{};
    const bool all = r == Recompute::none;
    a.ln1 = all ? act(BT * C, A) : dsmall_.data();
    a.ln1_mean = w.stats == 2 ? f32(BT, A) : nullptr;
    a.ln1_rstd = f32(BT, A);
    a.qkv = act(w.W * BT, A);
    a.lse = f32(B * NH * T, A);
    a.atty = r != Recompute::selective ? act(BT * C, A) : dbig_.data() + w.W * BT * int64_t(es);
    a.proj = act(BT * C, A);
    a.ln2 = all ? act(BT * C, A) : dsmall_.data();
    a.ln2_mean = w.stats == 2 ? f32(BT, A) : nullptr;
    a.ln2_rstd = f32(BT, A);
    a.fch = act(w.fin * BT, A);
    a.fch_gelu = all ? act(w.F * BT, A) : dbig_.data();
    return a;
  };
  for (int l = 0; l <= cfg_.n_layer; l++) res_.push_back(f32(BT * C, A));
  const bool any_full = std::count(p.begin(), p.end(), Recompute::full) > 0;
  BlockActs shared_full = any_full ? stash(Recompute::full) : BlockActs{};  // one for all full blocks
  stash_block_ = -1;
  for (int l = 0; l < cfg_.n_layer; l++) acts_.push_back(p[l] == Recompute::full ? shared_full : stash(p[l]));
  lnf_ = Bytes(size_t(BT * C) * es, A);
  lnf_mean_ = {w.stats == 2 ? size_t(BT) : 0, A};
  lnf_rstd_ = {size_t(BT), A};
  losses_ = {size_t(BT), A};
  head_rows_ = head_rows > 0 ? head_rows : lm_head_rows(BT, Vp, dt_, be_.gpu());
  logits_ = Bytes(size_t(head_rows_ * Vp) * es, W);
  const auto [wt_bytes, w_bytes] = head_pack(be_, C, Vp, BT, head_rows_, dt_);
  head_wt_ = Bytes(wt_bytes, W);
  head_w_ = Bytes(w_bytes, W);
  dres_ = {size_t(BT * C), W};
  res_mid_ = {size_t(BT * C), W};
  dres_c_ = Bytes(dt_ != DType::f32 ? size_t(BT * C) * es : 0, W);
  lora_ws_ = Bytes(size_t(BT * lora_width(cfg_)) * es, W);
  quant_ws_ = Bytes(size_t(quant_ws_elems(cfg_)) * es, W);
  dropout_ws_ = Bytes(size_t(BT * dropout_width(cfg_)) * es, W);
  norm_sink_ = {cfg_.lora.on() ? size_t(2 * C) : 0, W};
  if (cfg_.rotary()) {
    std::vector<float> c, s;
    rope_tables(cfg_, T, c, s);
    rope_cos_ = {c.size(), W};
    rope_sin_ = {s.size(), W};
    be_.copy(rope_cos_.data(), c.data(), c.size() * sizeof(float));
    be_.copy(rope_sin_.data(), s.data(), s.size() * sizeof(float));
  }
}

ActWidths act_widths(const ModelConfig& cfg) {
  return {cfg.n_embd, cfg.qkv_width(), cfg.gated_mlp() ? 2 * cfg.ffn() : cfg.ffn(), cfg.ffn(), cfg.rms_norm() ? 1 : 2, cfg.n_head};
}

int64_t ActWidths::stash_bytes(Recompute r, int64_t es) const {
  // none: ln1, qkv, atty, proj, ln2, fch, fch_gelu; full drops the norm outputs and the
  // activation; selective also the attention output
  int64_t elems = W + C + fin + (r != Recompute::selective ? C : 0) + (r == Recompute::none ? 2 * C + F : 0);
  return elems * es + 4 * (2 * stats + NH);
}

size_t MemoryEstimate::total() const {
  size_t t = 0;
  for (size_t b : bytes) t += b;
  return t;
}

// Rows of logits per lm-head chunk: at most 256 MiB of them on a GPU. On the CPU at most 64 MiB,
// and a power of two: oneDNN's kernels split M in blocks of 32 to 64 rows over the threads, and
// gpt2's head (V = 50304, B*T = 4096, bf16 on AMX) took 1.15 s per step in chunks of 256 or 512
// rows, 1.44 s in the 333 that 32 MiB held and 1.6 s in 410 or 586 (bench/RESULTS.md).
int64_t lm_head_rows(int64_t BT, int64_t Vp, DType dt, bool gpu) {
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << (gpu ? 28 : 26)) / (Vp * int64_t(dtype_size(dt))));
  return std::min<int64_t>(BT, gpu ? rows : std::bit_floor(uint64_t(rows)));
}

MemoryEstimate model_memory(const ModelConfig& cfg, const std::vector<UnitSpec>& table, int B, int T, DType dt,
                            const std::vector<Recompute>& plan, bool gpu) {
  // The closed forms of docs/memory.md. e: bytes per compute element.
  const ActWidths w = act_widths(cfg);
  const double BT = double(B) * T, C = cfg.n_embd, L = cfg.n_layer,
               Vp = double(cfg.padded_vocab()), e = double(dtype_size(dt));
  const double hr = double(lm_head_rows(int64_t(B) * T, cfg.padded_vocab(), dt, gpu));
  const int64_t es = int64_t(dtype_size(dt));
  double acts = BT * 4 * C * (L + 1)                           // the residual stream, fp32
                + BT * (e * C + 4 * w.stats + 4);              // final norm output, its statistics, losses
  int num_full = 0, num_sel = 0;
  for (Recompute r : plan) {
    num_full += r == Recompute::full;
    num_sel += r == Recompute::selective;
  }
  if (plan.empty()) num_full = num_sel = 0;
  const double num_none = L - num_full - num_sel;
  acts += BT * (num_none * double(w.stash_bytes(Recompute::none, es)) + num_sel * double(w.stash_bytes(Recompute::selective, es)));
  if (num_full > 0) acts += BT * double(w.stash_bytes(Recompute::full, es));  // one stash shared by full blocks
  double work = hr * Vp * e + BT * C * 8 + BT * (double(w.dbig()) + C) * e;  // logits, dres, res_mid, dbig, dsmall
  if (!gpu)
    for (size_t b : head_pack(cpu_backend(), cfg.n_embd, cfg.padded_vocab(), int64_t(B) * T, int64_t(hr), dt)) work += double(b);
  if (dt != DType::f32) work += BT * C * e;                    // dres in dt
  if (cfg.rotary()) work += 4.0 * T * cfg.head_size();  // the rotary tables
  work += BT * double(lora_width(cfg)) * e + (cfg.lora.on() ? 8.0 * C : 0.0);  // LoRA's h and dh, the norms' sink
  work += double(quant_ws_elems(cfg)) * e;  // a quantized base's dequantized panel
  work += BT * double(dropout_width(cfg)) * e;  // LoRA's dropped-out input
  MemoryEstimate m;
  m.bytes[int(Mem::activations)] = size_t(acts);
  m.bytes[int(Mem::workspace)] = size_t(work);
  // The GPU backend's own scratch (backend.h says what it holds).
  if (gpu) {
    size_t num_tensors = 0;
    int64_t widest_bias = 0;  // a bias is a 1-D tensor initialised to zeros
    for (const UnitSpec& t : table) {
      num_tensors += t.specs.size();
      for (const ParamSpec& p : t.specs)
        if (p.shape.size() == 1 && p.init == Init::zeros) widest_bias = std::max(widest_bias, p.numel);
    }
    m.bytes[int(Mem::runtime)] = cuda_runtime_bytes(int64_t(B) * T, int64_t(B) * cfg.n_head * T, cfg.n_embd, widest_bias,
                                                    num_tensors);
  }
  return m;
}

std::vector<Recompute> RecomputePolicy::per_block(int num_layers) const {
  std::vector<Recompute> p(num_layers, Recompute::none);
  for (int l = 0; l < num_layers; l++) {
    if (kind == Kind::selective || kind == Kind::every) p[l] = Recompute::selective;
    if (kind == Kind::full || (kind == Kind::every && l % k == 0)) p[l] = Recompute::full;
  }
  return p;
}

std::string RecomputePolicy::name() const {
  switch (kind) {
    case Kind::none: return "none";
    case Kind::selective: return "selective";
    case Kind::full: return "full";
    default: return fmt::format("every:{}", k);
  }
}

RecomputePolicy RecomputePolicy::parse(const std::string& text, const std::string& where) {
  RecomputePolicy p;
  if (text == "none") return p;
  if (text == "selective") { p.kind = Kind::selective; return p; }
  if (text == "full") { p.kind = Kind::full; return p; }
  if (text.rfind("every:", 0) == 0) {
    try {
      size_t used = 0;
      p.k = std::stoi(text.substr(6), &used);
      if (used == text.size() - 6 && p.k >= 1) { p.kind = Kind::every; return p; }
    } catch (const std::exception&) {
    }
  }
  user_error("{}: memory.recompute: expected none, selective, full or every:K (K >= 1), got '{}'", where, text);
}

std::vector<std::pair<int64_t, int64_t>> document_pieces(const int32_t* tokens, int B, int T, int32_t sep, bool after) {
  std::vector<std::pair<int64_t, int64_t>> docs;
  for (int64_t b = 0; b < B; b++)
    for (int64_t t = 0, start = 0; t < T; t++)
      if (t == T - 1 || tokens[b * T + t + !after] == sep) {
        docs.emplace_back(b * T + start, t + 1 - start);
        start = t + 1;
      }
  return docs;
}

void Model::embed_forward(const int32_t* tokens, int B, int T) {
  docs_.clear();  // the documents of this micro-batch
  if (doc_sep_ >= 0 && decode_pos_ < 0 && kcache_.empty()) {
    docs_ = document_pieces(tokens, B, T, doc_sep_, doc_after_);
    if (docs_.size() == size_t(B)) docs_.clear();  // one a row: the rows whole
  }
  const Unit& u = units_[embedding_];
  const bool copy = u.frozen && dt_ != DType::f32;  // a frozen embedding is only its compute copy
  const void* wpe = copy && cfg_.family == Family::gpt2 ? cw(u, &Tensors::wpe) : u.p.wpe;
  if (wpe && decode_pos_ >= 0)  // one token at decode_pos_
    wpe = static_cast<const std::byte*>(wpe) + int64_t(decode_pos_) * cfg_.n_embd * int64_t(dtype_size(copy ? dt_ : DType::f32));
  per_document(B, T, [&](int64_t first, int b, int t) {
    be_.embedding_forward(res_[0] + first * cfg_.n_embd, tokens + first, copy ? cw(u, &Tensors::wte) : u.p.wte, wpe, b, t,
                          cfg_.n_embd, copy ? dt_ : DType::f32);
  }, wpe != nullptr);
}

void Model::norm_forward(void* out, float* mean, float* rstd, const float* x, const float* w, const float* b, int64_t N) {
  if (cfg_.rms_norm()) be_.rmsnorm_forward(out, rstd, x, w, N, cfg_.n_embd, float(cfg_.norm_eps), dt_);
  else be_.layernorm_forward(out, mean, rstd, x, w, b, N, cfg_.n_embd, dt_);
}

void Model::norm_backward(float* dx, float* dw, float* db, const void* dout, const float* x, const float* w,
                          const float* mean, const float* rstd, int64_t N) {
  if (!dw) {  // frozen: the kernels' weight gradients go to a sink
    dw = norm_sink_.data();
    db = dw + cfg_.n_embd;
  }
  if (cfg_.rms_norm()) be_.rmsnorm_backward(dx, dw, dout, x, w, rstd, N, cfg_.n_embd, dt_, dres_copy());
  else be_.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd, N, cfg_.n_embd, dt_, dres_copy());
}

void Model::rope(void* qkv, int B, int T, bool inverse) {
  if (!cfg_.rotary()) return;
  const int64_t at = decode_pos_ >= 0 ? int64_t(decode_pos_) * (cfg_.head_size() / 2) : 0;  // decoding: its position's angles
  const int64_t row = cfg_.qkv_width() * int64_t(dtype_size(dt_));
  per_document(B, T, [&](int64_t first, int b, int t) {
    be_.rope(static_cast<std::byte*>(qkv) + first * row, rope_cos_.data() + at, rope_sin_.data() + at, b, t,
             cfg_.qkv_width(), cfg_.n_head + cfg_.kv_heads(), cfg_.head_size(), inverse, dt_);
  });
}

// lse(B,NH,T) holds a document's rows as (NH, length) from NH first: the documents of a row tile its NH T.
void Model::attention_forward(BlockActs& a, int B, int T) {
  const int64_t es = int64_t(dtype_size(dt_)), NH = cfg_.n_head;
  per_document(B, T, [&](int64_t first, int b, int t) {
    be_.attention_forward(a.atty + first * cfg_.n_embd * es, a.lse + first * NH, a.qkv + first * cfg_.qkv_width() * es, b, t,
                          NH, cfg_.kv_heads(), cfg_.head_size(), dt_);
  });
}

void Model::attention_backward(BlockActs& a, void* dqkv, const void* dout, int B, int T) {
  const int64_t es = int64_t(dtype_size(dt_)), NH = cfg_.n_head, C = cfg_.n_embd, W = cfg_.qkv_width();
  per_document(B, T, [&](int64_t first, int b, int t) {
    be_.attention_backward(static_cast<std::byte*>(dqkv) + first * W * es, static_cast<const std::byte*>(dout) + first * C * es,
                           a.qkv + first * W * es, a.atty + first * C * es, a.lse + first * NH, b, t, NH, cfg_.kv_heads(),
                           cfg_.head_size(), dt_);
  });
}

// The view of a quantized weight `weight` of unit u.
static const QuantStack& qview(const Unit& u, float* Tensors::*weight) {
  for (size_t k = 0; k < u.specs.size(); k++)
    if (u.specs[k].site < 0 && u.specs[k].field == weight) return u.qv[k];
  FRUGAL_CHECK(false, "unit {} has no such weight", u.name);
}

void Model::linear(int l, float* Tensors::*weight, float* Tensors::*bias, void* out, const void* in, int64_t BT,
                   int64_t IC, int64_t OC) {
  const Unit& u = block_unit(l);
  const float* b = u.p.*bias;
  if (!u.qv.empty()) return quant_linear_forward(be_, out, in, qview(u, weight), b, quant_ws_.data(), BT, IC, OC, dt_);
  be_.linear_forward(out, in, cw(u, weight), b, BT, IC, OC, dt_);
}

void Model::linear_backward(int l, float* Tensors::*weight, float* Tensors::*bias, void* dinp, const void* dout,
                            const void* inp, int64_t BT, int64_t IC, int64_t OC) {
  const Unit& u = block_unit(l);
  if (!u.qv.empty()) return quant_linear_backward(be_, dinp, dout, qview(u, weight), quant_ws_.data(), BT, IC, OC, dt_);
  be_.linear_backward(dinp, u.g.*weight, u.g.*bias, dout, inp, cw(u, weight), BT, IC, OC, dt_);
}

void Model::block_forward(int l, int B, int T, bool recompute) {
  const Unit& u = block_unit(l);
  const Tensors& p = u.p;
  BlockActs& a = acts_[l];
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd, W = cfg_.qkv_width(), F = cfg_.ffn();
  const DType dt = dt_;
  const bool glu = cfg_.gated_mlp();  // SwiGLU: fc is gate|up (2F)
  const float* x = res_[l];
  if (plan_[l] == Recompute::full) {  // the shared stash: still this block's since its forward?
    if (recompute && stash_block_ == l) return;
    stash_block_ = l;
  }
  norm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, x, p.ln1_w, p.ln1_b, BT);
  linear(l, &Tensors::qkv_w, &Tensors::qkv_b, a.qkv, a.ln1, BT, C, W);
  lora_forward(l, &Tensors::qkv_w, a.ln1, a.qkv, BT);
  rope(a.qkv, B, T, false);
  if (decode_pos_ >= 0) {  // one position: its key and value join the cache, its query reads it
    const int64_t es = int64_t(dtype_size(dt)), KW = int64_t(cfg_.kv_heads()) * cfg_.head_size(), Q = C * es;
    be_.copy(kcache_[l].data() + decode_pos_ * KW * es, a.qkv + Q, size_t(KW * es));
    be_.copy(vcache_[l].data() + decode_pos_ * KW * es, a.qkv + Q + KW * es, size_t(KW * es));
    be_.attention_decode(a.atty, a.qkv, kcache_[l].data(), vcache_[l].data(), decode_pos_ + 1, cfg_.n_head,
                         cfg_.kv_heads(), cfg_.head_size(), dt, decode_scratch_.data());
  } else {
    attention_forward(a, B, T);
  }
  linear(l, &Tensors::proj_w, &Tensors::proj_b, a.proj, a.atty, BT, C, C);
  lora_forward(l, &Tensors::proj_w, a.atty, a.proj, BT);
  float* res_mid = res_mid_.data();
  be_.add(res_mid, x, a.proj, BT * C, dt);
  norm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, res_mid, p.ln2_w, p.ln2_b, BT);
  const int64_t fin = glu ? 2 * F : F;
  const bool fc_lora = has_lora(&Tensors::fc_w);
  if (recompute || glu || fc_lora || !u.qv.empty()) {  // the activation, like the norms, is recomputed where backward uses it
    linear(l, &Tensors::fc_w, &Tensors::fc_b, a.fch, a.ln2, BT, C, fin);
    lora_forward(l, &Tensors::fc_w, a.ln2, a.fch, BT);
    if (recompute) return;
  }
  if (glu) {
    be_.swiglu_forward(a.fch_gelu, a.fch, BT, F, dt);
  } else if (fc_lora || !u.qv.empty()) {
    be_.gelu_forward(a.fch_gelu, a.fch, BT * F, dt);
  } else {
    be_.linear_gelu_forward(a.fch_gelu, a.fch, a.ln2, cw(u, &Tensors::fc_w), p.fc_b, BT, C, F, dt);
  }
  void* mlp_out = dsmall_.data();
  linear(l, &Tensors::fcproj_w, &Tensors::fcproj_b, mlp_out, a.fch_gelu, BT, F, C);
  lora_forward(l, &Tensors::fcproj_w, a.fch_gelu, mlp_out, BT);
  be_.add(res_[l + 1], res_mid, mlp_out, BT * C, dt);
}

void Model::final_forward(int B, int T) {
  const Tensors& p = units_[final_].p;
  norm_forward(lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), res_[cfg_.n_layer], p.lnf_w, p.lnf_b, int64_t(B) * T);
}

float Model::head(const int32_t* targets, int B, int T, float grad_scale) {
  final_forward(B, T);
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd, V = cfg_.vocab_size, Vp = cfg_.padded_vocab();
  const DType dt = dt_;
  const size_t es = dtype_size(dt);
  const void* wte = cw(units_[head_], &Tensors::wte);
  float* dwte = units_[head_].g.wte;
  std::byte* lnf = lnf_.data();
  std::byte* dlnf = dsmall_.data();
  // lm head (tied to wte, or a head of its own) + softmax cross-entropy, chunk by chunk of rows:
  // logits in the compute dtype (as autocast and llm.c have them: half the bytes of fp32 through
  // the largest tensor of the step), the loss in fp32 from them, and dlogits over them, for one
  // chunk; then its contribution to dlnf and dwte, before the next chunk.
  void* dlogits = logits_.data();
  // wte, packed by the backend at the first chunk's GEMMs where it keeps copies (head_pack)
  Backend::PackedB wt{head_wt_.data(), false}, w{head_w_.data(), false};
  for (int64_t r0 = 0; r0 < BT; r0 += head_rows_) {
    int64_t rows = std::min(head_rows_, BT - r0);
    const std::byte* x = lnf + r0 * C * es;
    be_.matmul(false, true, rows, Vp, C, x, C, wte, C, dlogits, Vp, dt, dt, nullptr, false, head_wt_.size() ? &wt : nullptr);
    be_.softmax_xent(dlogits, losses_.data() + r0, targets + r0, rows, V, Vp, grad_scale, dt);
    if (grad_scale != 0.0f) {
      be_.matmul(false, false, rows, C, Vp, dlogits, Vp, wte, C, dlnf + r0 * C * es, C, dt, dt, nullptr, false,
                 head_w_.size() ? &w : nullptr);
      if (dwte) be_.matmul(true, false, Vp, C, rows, dlogits, Vp, x, C, dwte, C, dt, DType::f32, nullptr, true);
    }
  }
  if (grad_scale != 0.0f) {
    const Tensors& p = units_[final_].p;
    const Tensors& g = units_[final_].g;
    be_.fill_zero(dres_.data(), BT * C);
    norm_backward(dres_.data(), g.lnf_w, g.lnf_b, dlnf, res_[cfg_.n_layer], p.lnf_w, lnf_mean_.data(),
                  lnf_rstd_.data(), BT);
  }
  const int64_t counted = std::count_if(targets, targets + BT, [](int32_t t) { return t >= 0; });
  return counted > 0 ? float(be_.sum(losses_.data(), BT) / double(counted)) : 0.0f;
}

void Model::block_backward(int l, int B, int T) {
  const Unit& u = block_unit(l);
  const Tensors& p = u.p;
  const Tensors& g = u.g;
  BlockActs& a = acts_[l];
  const int64_t BT = int64_t(B) * T, C = cfg_.n_embd, W = cfg_.qkv_width(), F = cfg_.ffn();
  const DType dt = dt_;
  const bool glu = cfg_.gated_mlp();
  float* dres = dres_.data();  // fp32; in: d(block output); out: d(block input)
  void* dbig = dbig_.data();
  void* dsmall = dsmall_.data();
  // Under selective and full, the norm outputs and the MLP's activation are rebuilt in workspace
  // right before the GEMM that reads them, and that GEMM's input gradient overwrites them
  // (dsmall, dbig); selective also re-runs the attention forward into dbig after its first W
  // columns.
  const bool rebuild = plan_[l] != Recompute::none;
  float* res_mid = res_mid_.data();
  be_.add(res_mid, res_[l], a.proj, BT * C, dt);  // bit-identical to the forward's
  // MLP: y = res_mid + fcproj(act(fc(ln2(res_mid))))
  const bool down_lora = has_lora(&Tensors::fcproj_w);
  if (rebuild) {
    if (glu) be_.swiglu_forward(a.fch_gelu, a.fch, BT, F, dt);
    else be_.gelu_forward(a.fch_gelu, a.fch, BT * F, dt);
  }
  lora_backward(l, &Tensors::fcproj_w, a.fch_gelu, dres_compute(), BT);
  if (glu || down_lora || !u.qv.empty()) {  // d(gate|up) overwrites the stashed gate|up, which nothing reads after
    linear_backward(l, &Tensors::fcproj_w, &Tensors::fcproj_b, dbig, dres_compute(), a.fch_gelu, BT, F, C);
    lora_backward_input(l, &Tensors::fcproj_w, dbig, BT);
    if (glu) be_.swiglu_backward(a.fch, a.fch, dbig, BT, F, dt);
    else be_.gelu_backward(dbig, a.fch, dbig, BT * F, dt);
  } else {
    be_.linear_backward_gelu(dbig, g.fcproj_w, g.fcproj_b, dres_compute(), a.fch_gelu, a.fch,
                             cw(u, &Tensors::fcproj_w), BT, F, C, dt);
  }
  const void* dfch = glu ? static_cast<const void*>(a.fch) : dbig;
  if (rebuild) norm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, res_mid, p.ln2_w, p.ln2_b, BT);
  lora_backward(l, &Tensors::fc_w, a.ln2, dfch, BT);
  linear_backward(l, &Tensors::fc_w, &Tensors::fc_b, dsmall, dfch, a.ln2, BT, C, glu ? 2 * F : F);
  lora_backward_input(l, &Tensors::fc_w, dsmall, BT);
  norm_backward(dres, g.ln2_w, g.ln2_b, dsmall, res_mid, p.ln2_w, a.ln2_mean, a.ln2_rstd, BT);
  // attention: res_mid = x + proj(attention(rope(qkv(ln1(x)))))
  if (plan_[l] == Recompute::selective) attention_forward(a, B, T);
  lora_backward(l, &Tensors::proj_w, a.atty, dres_compute(), BT);
  linear_backward(l, &Tensors::proj_w, &Tensors::proj_b, dsmall, dres_compute(), a.atty, BT, C, C);
  lora_backward_input(l, &Tensors::proj_w, dsmall, BT);
  void* dqkv = dbig;  // its first W columns
  attention_backward(a, dqkv, dsmall, B, T);
  rope(dqkv, B, T, true);
  if (rebuild) norm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, res_[l], p.ln1_w, p.ln1_b, BT);
  lora_backward(l, &Tensors::qkv_w, a.ln1, dqkv, BT);
  linear_backward(l, &Tensors::qkv_w, &Tensors::qkv_b, dsmall, dqkv, a.ln1, BT, C, W);
  lora_backward_input(l, &Tensors::qkv_w, dsmall, BT);
  norm_backward(dres, g.ln1_w, g.ln1_b, dsmall, res_[l], p.ln1_w, a.ln1_mean, a.ln1_rstd, BT);
}

void Model::embed_backward(const int32_t* tokens, int B, int T) {
  const Unit& u = units_[embedding_];
  if (u.frozen) return;
  per_document(B, T, [&](int64_t first, int b, int t) {
    be_.embedding_backward(u.g.wte, u.g.wpe, dres_.data() + first * cfg_.n_embd, tokens + first, b, t, cfg_.n_embd);
  }, u.g.wpe != nullptr);
}

float Model::forward_loss(const int32_t* tokens, const int32_t* targets, int B, int T) {
  embed_forward(tokens, B, T);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, B, T);
  return head(targets, B, T, 0.0f);
}

void Model::start_cache(int max_T) {
  allocate(1, max_T);
  const int64_t bytes = int64_t(max_T) * cfg_.kv_heads() * cfg_.head_size() * int64_t(dtype_size(dt_));
  kcache_.clear();
  vcache_.clear();
  for (int l = 0; l < cfg_.n_layer; l++) {
    kcache_.emplace_back(size_t(bytes), Mem::activations);
    vcache_.emplace_back(size_t(bytes), Mem::activations);
  }
  decode_scratch_ = {size_t(cfg_.n_head) * max_T, Mem::workspace};
  cache_max_ = max_T;
  cache_len_ = 0;
}

void Model::prefill(const int32_t* tokens, int T, std::vector<float>& out) {
  FRUGAL_CHECK(T >= 1 && T <= cache_max_, "prefill of {} positions, a cache of {}", T, cache_max_);
  embed_forward(tokens, 1, T);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, 1, T);
  final_forward(1, T);
  // every position's key and value (the stash's q|k|v rows, k rotated) into the cache
  const int64_t es = int64_t(dtype_size(dt_)), KW = int64_t(cfg_.kv_heads()) * cfg_.head_size(), W = cfg_.qkv_width();
  const int64_t Q = int64_t(cfg_.n_embd) * es;
  for (int l = 0; l < cfg_.n_layer; l++)
    for (int64_t t = 0; t < T; t++) {
      const std::byte* row = acts_[size_t(l)].qkv + t * W * es;
      be_.copy(kcache_[size_t(l)].data() + t * KW * es, row + Q, size_t(KW * es));
      be_.copy(vcache_[size_t(l)].data() + t * KW * es, row + Q + KW * es, size_t(KW * es));
    }
  cache_len_ = T;
  last_logits(T - 1, out);
}

void Model::next(int32_t token, std::vector<float>& out) {
  FRUGAL_CHECK(cache_len_ >= 1 && cache_len_ < cache_max_, "next with {} of {} positions cached", cache_len_, cache_max_);
  decode_pos_ = cache_len_;
  embed_forward(&token, 1, 1);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, 1, 1);
  decode_pos_ = -1;
  final_forward(1, 1);
  cache_len_++;
  last_logits(0, out);
}

void Model::last_logits(int64_t row, std::vector<float>& out) {
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  out.resize(size_t(V));
  be_.matmul(false, true, 1, V, C, lnf_.data() + row * C * int64_t(dtype_size(dt_)), C, cw(units_[head_], &Tensors::wte), C,
             out.data(), V, dt_, DType::f32, nullptr, false);
  be_.synchronize();
}

void Model::logits(const int32_t* tokens, int B, int T, bool last_only, std::vector<float>& out) {
  embed_forward(tokens, B, T);
  for (int l = 0; l < cfg_.n_layer; l++) block_forward(l, B, T);
  final_forward(B, T);
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size;
  const size_t es = dtype_size(dt_);
  const int64_t rows = last_only ? B : int64_t(B) * T;
  out.resize(size_t(rows * V));
  // all rows at once, or row T-1 of each sequence
  for (int b = 0; b < (last_only ? B : 1); b++) {
    const std::byte* x = lnf_.data() + (last_only ? (int64_t(b) * T + T - 1) * C * es : 0);
    be_.matmul(false, true, last_only ? 1 : rows, V, C, x, C, cw(units_[head_], &Tensors::wte), C,
               out.data() + (last_only ? b * V : 0), V, dt_, DType::f32, nullptr, false);
  }
}

}  // namespace frugal
