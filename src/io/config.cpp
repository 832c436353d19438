// The run configuration: TOML file + command-line overrides -> typed RunConfig.
// Every key is declared once in fields(); parsing, unknown-key errors and the resolved
// config.toml all iterate that table.
#include <toml++/toml.h>

#include <cmath>
#include <limits>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "dist/comm.h"
#include "io/io.h"
#include "plan/plan.h"

namespace frugal {

namespace {

struct Field {
  const char* section;
  const char* key;
  std::function<void(const toml::node&, const std::string& where)> set;
  std::function<std::string()> get;  // TOML literal
};

std::string qualified(const Field& f) { return std::string(f.section) + "." + f.key; }

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    default: return "a date/time";
  }
}

template <class I>
Field int_field(const char* s, const char* k, I* p, int64_t lo) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<int64_t>();
            if (!v) user_error("{}: {}.{}: expected an integer, got {}", where, s, k, type_name(n));
            if (*v < lo) user_error("{}: {}.{}: expected an integer >= {}, got {}", where, s, k, lo, *v);
            if (*v > 0 && uint64_t(*v) > uint64_t(std::numeric_limits<I>::max()))
              user_error("{}: {}.{}: expected an integer <= {}, got {}", where, s, k, std::numeric_limits<I>::max(), *v);
            *p = I(*v);
          },
          [=] { return fmt::format("{}", *p); }};
}

Field float_field(const char* s, const char* k, double* p, double lo) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value<double>();  // integers are accepted too
            if (!v || n.is_boolean() || n.is_string())
              user_error("{}: {}.{}: expected a number, got {}", where, s, k, type_name(n));
            if (!(*v >= lo) || !std::isfinite(*v))
              user_error("{}: {}.{}: expected a finite number >= {}, got {}", where, s, k, lo, *v);
            *p = *v;
          },
          [=] { return fmt::format("{}", *p); }};
}

Field bool_field(const char* s, const char* k, bool* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<bool>();
            if (!v) user_error("{}: {}.{}: expected true or false, got {}", where, s, k, type_name(n));
            *p = *v;
          },
          [=] { return std::string(*p ? "true" : "false"); }};
}

Field string_field(const char* s, const char* k, std::string* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<std::string>();
            if (!v) user_error("{}: {}.{}: expected a string, got {}", where, s, k, type_name(n));
            *p = *v;
          },
          [=] {
            std::ostringstream os;
            os << toml::value<std::string>(*p);
            return os.str();
          }};
}

Field dtype_field(const char* s, const char* k, DType* p, std::vector<DType> allowed) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<std::string>();
            std::vector<std::string> names;
            for (DType d : allowed) {
              names.push_back(dtype_name(d));
              if (v && *v == dtype_name(d)) { *p = d; return; }
            }
            user_error("{}: {}.{}: expected one of {}, got {}", where, s, k, fmt::join(names, ", "),
                       v ? "'" + *v + "'" : std::string(type_name(n)));
          },
          [=] { return fmt::format("\"{}\"", dtype_name(*p)); }};
}

Field recompute_field(const char* s, const char* k, RecomputePolicy* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<std::string>();
            if (!v) user_error("{}: {}.{}: expected a string (none, selective, full, every:K), got {}", where, s, k, type_name(n));
            *p = RecomputePolicy::parse(*v, where);
          },
          [=] { return fmt::format("\"{}\"", p->name()); }};
}

Field bytes_field(const char* s, const char* k, int64_t* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            if (auto i = n.value_exact<int64_t>(); i && *i >= 0) { *p = *i; return; }
            if (auto str = n.value_exact<std::string>()) { *p = parse_bytes(*str, where + ": " + s + "." + k); return; }
            user_error("{}: {}.{}: expected bytes or a size like \"16GiB\", got {}", where, s, k, type_name(n));
          },
          [=] { return fmt::format("{}", *p); }};
}

Field family_field(const char* s, const char* k, Family* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<std::string>();
            for (Family f : {Family::gpt2, Family::llama})
              if (v && *v == family_name(f)) { *p = f; return; }
            user_error("{}: {}.{}: expected gpt2 or llama, got {}", where, s, k, v ? "'" + *v + "'" : std::string(type_name(n)));
          },
          [=] { return fmt::format("\"{}\"", family_name(*p)); }};
}

// LoRA's target modules: a TOML array of names, or one string of them separated by spaces or
// commas (handy on the command line: --lora.targets=q_proj,v_proj).
Field targets_field(const char* s, const char* k, std::vector<std::string>* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            std::vector<std::string> out;
            auto add = [&](const std::string& text) {
              std::string cur;
              for (char ch : text + ",") {
                if (ch == ' ' || ch == ',') {
                  if (!cur.empty()) out.push_back(cur);
                  cur.clear();
                } else {
                  cur += ch;
                }
              }
            };
            if (auto str = n.value_exact<std::string>()) {
              add(*str);
            } else if (const toml::array* a = n.as_array()) {
              for (const toml::node& e : *a) {
                auto v = e.value_exact<std::string>();
                if (!v) user_error("{}: {}.{}: expected module names (strings), got {}", where, s, k, type_name(e));
                add(*v);
              }
            } else {
              user_error("{}: {}.{}: expected module names (an array of strings), got {}", where, s, k, type_name(n));
            }
            *p = out;
          },
          [=] {
            std::vector<std::string> q;
            for (const std::string& t : *p) q.push_back("\"" + t + "\"");
            return fmt::format("[{}]", fmt::join(q, ", "));
          }};
}

Field base_field(const char* s, const char* k, BaseFormat* p) {
  return {s, k,
          [=](const toml::node& n, const std::string& where) {
            auto v = n.value_exact<std::string>();
            for (BaseFormat b : {BaseFormat::compute, BaseFormat::nf4, BaseFormat::int8})
              if (v && *v == base_format_name(b)) { *p = b; return; }
            user_error("{}: {}.{}: expected compute, nf4 or int8, got {}", where, s, k, v ? "'" + *v + "'" : std::string(type_name(n)));
          },
          [=] { return fmt::format("\"{}\"", base_format_name(*p)); }};
}

std::vector<Field> fields(RunConfig& c) {
  TrainSettings& t = c.train;
  return {
      string_field("model", "preset", &c.model.preset),
      int_field("model", "n_layer", &c.model.n_layer, 1),
      int_field("model", "n_head", &c.model.n_head, 1),
      int_field("model", "n_embd", &c.model.n_embd, 1),
      int_field("model", "vocab_size", &c.model.vocab_size, 1),
      int_field("model", "context", &c.model.context, 1),
      family_field("model", "family", &c.model.family),
      int_field("model", "n_kv_head", &c.model.n_kv_head, 0),
      int_field("model", "ffn_hidden", &c.model.ffn_hidden, 0),
      bool_field("model", "attention_bias", &c.model.attention_bias),
      bool_field("model", "tied_head", &c.model.tied_head),
      float_field("model", "norm_eps", &c.model.norm_eps, 0),
      float_field("model", "rope_theta", &c.model.rope_theta, 0),
      float_field("model", "rope_scaling_factor", &c.model.rope_scaling.factor, 0),
      float_field("model", "rope_low_freq_factor", &c.model.rope_scaling.low_freq_factor, 0),
      float_field("model", "rope_high_freq_factor", &c.model.rope_scaling.high_freq_factor, 0),
      int_field("model", "rope_original_context", &c.model.rope_scaling.original_context, 1),
      int_field("model", "sliding_window", &c.model.sliding_window, 0),
      int_field("lora", "rank", &c.model.lora.rank, 0),
      float_field("lora", "alpha", &c.model.lora.alpha, 0),
      float_field("lora", "dropout", &c.model.lora.dropout, 0),
      targets_field("lora", "targets", &c.model.lora.targets),
      string_field("lora", "init_from", &t.lora_init_from),
      base_field("lora", "base", &c.model.lora.base),
      int_field("train", "seed", &t.seed, 0),
      int_field("train", "steps", &t.steps, 1),
      int_field("train", "seq_len", &t.seq_len, 1),
      int_field("train", "micro_batch", &t.micro_batch, 1),
      int_field("train", "batch_tokens", &t.batch_tokens, 0),
      float_field("train", "lr", &t.lr, 0.0),
      float_field("train", "min_lr", &t.min_lr, 0.0),
      int_field("train", "warmup_steps", &t.warmup_steps, 0),
      float_field("train", "weight_decay", &t.weight_decay, 0.0),
      float_field("train", "beta1", &t.beta1, 0.0),
      float_field("train", "beta2", &t.beta2, 0.0),
      float_field("train", "eps", &t.eps, 0.0),
      float_field("train", "grad_clip", &t.grad_clip, 0.0),
      int_field("train", "eval_every", &t.eval_every, 0),
      int_field("train", "eval_batches", &t.eval_batches, 0),
      int_field("train", "threads", &t.threads, 0),
      string_field("train", "init_from", &t.init_from),
      dtype_field("precision", "compute", &c.precision.compute, {DType::f32, DType::bf16, DType::f16}),
      dtype_field("precision", "reduce", &c.precision.reduce, {DType::f32, DType::bf16}),
      float_field("precision", "loss_scale", &c.precision.loss_scale, 1.0),
      int_field("precision", "loss_scale_window", &c.precision.loss_scale_window, 1),
      float_field("precision", "loss_scale_min", &c.precision.loss_scale_min, 1e-30),
      recompute_field("memory", "recompute", &c.memory.recompute),
      bytes_field("memory", "budget", &c.memory.budget),
      bool_field("memory", "preflight", &c.memory.preflight),
      string_field("dist", "strategy", &c.dist.strategy),
      float_field("dist", "timeout", &c.dist.timeout, 1.0),
      string_field("data", "train", &c.data.train),
      string_field("data", "val", &c.data.val),
      bool_field("data", "document_mask", &c.data.document_mask),
      string_field("run", "dir", &c.run.dir),
      int_field("run", "log_every", &c.run.log_every, 1),
      int_field("run", "checkpoint_every", &c.run.checkpoint_every, 0),
      int_field("run", "keep_checkpoints", &c.run.keep_checkpoints, 1),
      bool_field("run", "profile", &c.run.profile),
      string_field("device", "backend", &c.device.backend),
      string_field("device", "name", &c.device.name),
      float_field("device", "peak_flops", &c.device.peak_flops, 1.0),
      float_field("device", "peak_flops_bf16", &c.device.peak_flops_bf16, 1.0),
  };
}

// Parses "section.key=value" into the table; value as a TOML literal, else as a string.
void apply_override(toml::table& tbl, const std::string& ov, std::map<std::string, std::string>& origin) {
  auto eq = ov.find('=');
  auto dot = ov.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    user_error("--{}: expected --section.key=value", ov);
  std::string section = ov.substr(0, dot), key = ov.substr(dot + 1, eq - dot - 1);
  std::string value = ov.substr(eq + 1);
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed.insert("v", value);  // not a TOML literal: a bare string (a path, a preset name)
  }
  auto* sec = tbl.get(section);
  if (!sec) sec = tbl.insert(section, toml::table{}).first->second.as_table();
  if (!sec->is_table()) user_error("--{}: [{}] is not a table", ov, section);
  sec->as_table()->insert_or_assign(key, *parsed.get("v"));
  origin[section + "." + key] = "--" + section + "." + key;
}

}  // namespace

int64_t parse_bytes(const std::string& text, const std::string& where) {
  static const std::pair<const char*, double> units[] = {
      {"TiB", 1099511627776.0}, {"GiB", 1073741824.0}, {"MiB", 1048576.0}, {"KiB", 1024.0},
      {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1.0}, {"", 1.0}};
  try {
    size_t used = 0;
    double v = std::stod(text, &used);
    std::string unit = text.substr(used);
    unit.erase(0, unit.find_first_not_of(' '));
    for (auto& [name, mult] : units)
      if (unit == name && v >= 0 && v * mult < 0x1p63) return int64_t(v * mult);  // not inf, nor past int64
  } catch (const std::exception&) {
  }
  user_error("{}: expected bytes or a size like \"16GiB\", got '{}'", where, text);
}

int RunConfig::accum_steps(int world) const {
  int64_t micro = int64_t(train.micro_batch) * train.seq_len * world;
  return int(train.batch_tokens == 0 ? 1 : train.batch_tokens / micro);
}

void check_world(const RunConfig& c, int world) {
  int64_t micro = int64_t(c.train.micro_batch) * c.train.seq_len * world;
  if (c.train.batch_tokens % micro != 0)
    user_error("{}: train.batch_tokens = {} must be a multiple of micro_batch * seq_len * ranks = {} * {} * {} = {}",
               c.source, c.train.batch_tokens, c.train.micro_batch, c.train.seq_len, world, micro);
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  RunConfig c;
  c.source = path.empty() ? "command line" : path;
  c.model = model_preset("mini", "defaults");
  toml::table tbl;
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0) {  // a Hugging Face config.json: the model's shape, defaults for the rest
    c.model = read_hf_config(path);
  } else if (!path.empty()) {
    if (!std::ifstream(path)) user_error("{}: cannot open the config file", path);
    try {
      tbl = toml::parse(read_whole_file(path), path);
    } catch (const toml::parse_error& e) {
      auto& b = e.source().begin;
      user_error("{}:{}:{}: {}", path, b.line, b.column, e.description());
    }
  }
  std::map<std::string, std::string> origin;  // "section.key" -> where it was set
  for (auto& [k, v] : tbl)
    if (v.is_table())
      for (auto& [k2, v2] : *v.as_table()) origin[std::string(k.str()) + "." + std::string(k2.str())] = path;
  for (auto& ov : overrides) apply_override(tbl, ov, origin);

  auto fs = fields(c);
  // Unknown sections and keys first, with the known ones in the message.
  for (auto& [sk, sv] : tbl) {
    std::string sec(sk.str());
    std::vector<std::string> known;
    for (auto& f : fs)
      if (sec == f.section) known.push_back(f.key);
    if (known.empty())
      user_error("{}: unknown section [{}] (expected model, train, precision, memory, dist, data, run, device)", c.source, sec);
    if (!sv.is_table()) user_error("{}: [{}] must be a table", c.source, sec);
    for (auto& [kk, kv] : *sv.as_table()) {
      std::string key(kk.str());
      if (std::find(known.begin(), known.end(), key) == known.end())
        user_error("{}: unknown key {}.{} (expected one of: {})", origin[sec + "." + key], sec, key,
                   fmt::join(known, ", "));
    }
  }
  // The preset first, so that explicit model keys override it.
  if (auto* n = tbl.at_path("model.preset").node()) {
    fs[0].set(*n, origin["model.preset"]);
    if (c.model.preset != "custom") c.model = model_preset(c.model.preset, origin["model.preset"]);
  }
  // A family's defaults: llama's without any preset are llama-tiny's (then overridden key by key).
  if (auto* n = tbl.at_path("model.family").node(); n && !tbl.at_path("model.preset").node()) {
    Family f = c.model.family;
    for (auto& fl : fs)
      if (qualified(fl) == "model.family") fl.set(*n, origin["model.family"]);
    if (c.model.family != f) c.model = model_preset(c.model.family == Family::llama ? "llama-tiny" : "mini", origin["model.family"]);
  }
  for (auto& f : fs) {
    if (qualified(f) == "model.preset") continue;
    if (auto* n = tbl.at_path(qualified(f)).node()) f.set(*n, origin[qualified(f)]);
  }

  c.model.validate(c.source);
  // data.train given without data.val: its own validation split, not the default corpus's
  if (tbl.at_path("data.train").node() && !tbl.at_path("data.val").node()) {
    const std::string& train = c.data.train;
    const size_t name = train.find_last_of('/') + 1, at = train.rfind("train");
    std::error_code ec;
    if (std::filesystem::is_directory(train, ec)) c.data.val = train;  // a prepared directory: its val split
    else if (at != std::string::npos && at >= name) c.data.val = train.substr(0, at) + "val" + train.substr(at + 5);
    else
      user_error("{}: data.val: not set, and data.train = '{}' has no \"train\" in its name to read as \"val\": "
                 "set data.val", origin["data.train"], train);
  }
  for (auto [key, value] : {std::pair{"run.dir", &c.run.dir}, {"data.train", &c.data.train}, {"data.val", &c.data.val}})
    if (value->empty()) user_error("{}: {}: expected a path, got an empty string", origin.count(key) ? origin[key] : c.source, key);
  const TrainSettings& t = c.train;
  if (t.seq_len > c.model.context)
    user_error("{}: train.seq_len = {} is above the model's context of {} positions", c.source,
               t.seq_len, c.model.context);
  if (c.model.sliding_window > 0 && t.seq_len > c.model.sliding_window)
    user_error("{}: train.seq_len = {} is above the model's sliding window of {} keys (model.sliding_window, "
               "Mistral's): frugal attends to whole sequences, the same function only up to the window",
               c.source, t.seq_len, c.model.sliding_window);
  int64_t micro = int64_t(t.micro_batch) * t.seq_len;
  if (t.batch_tokens % micro != 0)
    user_error("{}: train.batch_tokens = {} must be a multiple of micro_batch * seq_len = {}",
               c.source, t.batch_tokens, micro);
  if (t.min_lr > t.lr)
    user_error("{}: train.min_lr = {} is above train.lr = {}", c.source, t.min_lr, t.lr);
  if (c.device.backend != "cpu" && c.device.backend != "cuda")
    user_error("{}: device.backend: expected cpu or cuda, got '{}'", c.source, c.device.backend);
  parse_strategy(c.dist.strategy, c.source);
  if (c.model.lora.base != BaseFormat::compute && !c.model.lora.on())
    user_error("{}: lora.base = {} quantizes LoRA's frozen base: set lora.rank too", c.source, base_format_name(c.model.lora.base));
  if (c.precision.loss_scale_min > c.precision.loss_scale)
    user_error("{}: precision.loss_scale_min = {} is above precision.loss_scale = {}", c.source,
               c.precision.loss_scale_min, c.precision.loss_scale);
  if (t.beta1 >= 1.0 || t.beta2 >= 1.0)
    user_error("{}: train.beta1 and train.beta2 must be below 1", c.source);
  if (t.threads > 4096)  // libgomp crashes on 100000 threads and aborts on 2^31 - 1
    user_error("{}: train.threads = {}: expected at most 4096 (threads beyond the cores only share them)", c.source, t.threads);
  // AdamW's update is m / (sqrt(v) + eps), and its decay multiplies the weights by 1 - lr · decay
  if (t.eps <= 0.0)
    user_error("{}: train.eps must be above 0: AdamW divides by sqrt(v) + eps, and a weight whose gradients are all 0 so "
               "far (a token no batch held yet) would get 0/0", c.source);
  if (t.lr * t.weight_decay >= 1.0)
    user_error("{}: train.lr * train.weight_decay = {} must be below 1: AdamW's decay multiplies the weights by "
               "1 - lr * weight_decay each step", c.source, t.lr * t.weight_decay);
  resolve_device(c.device, c.source, default_devices_path());
  return c;
}

std::vector<std::string> model_overrides(const ModelConfig& m) {
  RunConfig copy;
  copy.model = m;
  std::vector<std::string> out = {"model.preset=custom"};
  for (auto& f : fields(copy))
    if (std::string(f.section) == "model" && std::string(f.key) != "preset")
      out.push_back(fmt::format("model.{}={}", f.key, f.get()));
  return out;
}

std::string RunConfig::to_toml() const {
  RunConfig copy = *this;
  std::string out = "# resolved frugal configuration\n";
  const char* section = "";
  for (auto& f : fields(copy)) {
    if (std::string(section) != f.section) {
      section = f.section;
      out += fmt::format("\n[{}]\n", section);
    }
    out += fmt::format("{} = {}\n", f.key, f.get());
  }
  return out;
}

}  // namespace frugal
