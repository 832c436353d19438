// `frugal report`: one self-contained HTML page per run, with inline SVG charts (no scripts):
// loss, tokens/s, memory by category over steps, predicted against measured, cost so far.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "plan/plan.h"

namespace frugal {

namespace {

struct Series {
  std::string name, color;
  std::vector<double> x, y;
  bool dashed = false;
};

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

const int W = 640, H = 300, ML = 80, MR = 20, MT = 36, MB = 64;

std::string tick(double v) {
  const double a = std::abs(v);
  if (a >= 1 << 30) return human_bytes(v);
  if (a >= 1e4) return fmt::format("{:.3g}", v);
  return fmt::format("{:.4g}", v);
}

// A line chart; every series is one <polyline class="series">.
std::string line_chart(const std::string& title, const std::string& xlabel, const std::vector<Series>& all,
                       bool bytes_axis = false) {
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const Series& s : all)
    for (size_t i = 0; i < s.x.size(); i++) {
      x0 = std::min(x0, s.x[i]); x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]); y1 = std::max(y1, s.y[i]);
    }
  if (x0 > x1) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  if (x1 == x0) x1 = x0 + 1;
  if (bytes_axis || y0 > 0) y0 = std::min(y0, 0.0);
  if (y1 == y0) y1 = y0 + 1;
  y1 += 0.05 * (y1 - y0);
  auto px = [&](double x) { return ML + (x - x0) / (x1 - x0) * (W - ML - MR); };
  auto py = [&](double y) { return H - MB - (y - y0) / (y1 - y0) * (H - MT - MB); };
  std::string o = fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\">\n", W, H, W, H);
  o += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", ML, escape(title));
  o += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n", ML, MT, W - ML - MR, H - MT - MB);
  for (int i = 0; i <= 4; i++) {
    double y = y0 + (y1 - y0) * i / 4, x = x0 + (x1 - x0) * i / 4;
    o += fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>", ML, W - MR, py(y), py(y));
    o += fmt::format("<text x=\"{}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text>", ML - 4, py(y) + 4,
                     bytes_axis ? human_bytes(y) : tick(y));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n", px(x), H - MB + 16, tick(x));
  }
  o += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", (ML + W - MR) / 2, H - MB + 32, escape(xlabel));
  double lx = ML;
  for (const Series& s : all) {
    o += fmt::format("<polyline class=\"series\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{} points=\"", s.color,
                     s.dashed ? " stroke-dasharray=\"6 4\"" : "");
    for (size_t i = 0; i < s.x.size(); i++) o += fmt::format("{:.1f},{:.1f} ", px(s.x[i]), py(s.y[i]));
    o += "\"/>\n";
    if (s.x.size() == 1) o += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(s.x[0]), py(s.y[0]), s.color);
    o += fmt::format("<rect x=\"{:.0f}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{}\"/><text x=\"{:.0f}\" y=\"{}\" font-size=\"12\">{}</text>\n",
                     lx, H - 14, s.color, lx + 18, H - 9, escape(s.name));
    lx += 30 + 7.0 * double(s.name.size());
  }
  return o + "</svg>\n";
}

// Grouped bars: for each label, predicted and measured (class="bar").
std::string bar_chart(const std::string& title, const std::vector<std::string>& labels,
                      const std::vector<double>& pred, const std::vector<double>& meas) {
  double top = 1;
  for (size_t i = 0; i < labels.size(); i++) top = std::max({top, pred[i], meas[i]});
  top *= 1.1;
  const double slot = double(W - ML - MR) / std::max<size_t>(1, labels.size());
  auto py = [&](double y) { return H - MB - y / top * (H - MT - MB); };
  std::string o = fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\">\n", W, H, W, H);
  o += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{}</text>\n", ML, escape(title));
  for (int i = 0; i <= 4; i++)
    o += fmt::format("<text x=\"{}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text><line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eee\"/>\n",
                     ML - 4, py(top * i / 4) + 4, human_bytes(top * i / 4), ML, W - MR, py(top * i / 4), py(top * i / 4));
  for (size_t i = 0; i < labels.size(); i++) {
    const double x = ML + slot * double(i);
    o += fmt::format("<rect class=\"bar\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#8899cc\"/>", x + slot * 0.1, py(pred[i]), slot * 0.38, H - MB - py(pred[i]));
    o += fmt::format("<rect class=\"bar\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#dd7733\"/>", x + slot * 0.5, py(meas[i]), slot * 0.38, H - MB - py(meas[i]));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n", x + slot / 2, H - MB + 16, escape(labels[i]));
  }
  o += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"8\" fill=\"#8899cc\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">predicted</text>", ML, H - 18, ML + 18, H - 10);
  o += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"8\" fill=\"#dd7733\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">measured peak</text>\n", ML + 100, H - 18, ML + 118, H - 10);
  return o + "</svg>\n";
}

const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f"};

}  // namespace

// run.profile's profile.json as a table: each op family's time per step, its share (a bar), and
// the FLOP/s of GEMMs and attention against the device's peak. "" without a profile.
static std::string profile_table(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return "";
  try {
    const nlohmann::json j = nlohmann::json::parse(read_whole_file(path));
    std::string t = fmt::format("<h2>Where a step goes (run.profile: {} steps, {:.4f} s per step)</h2>\n"
                                "<table style=\"border-collapse:collapse\"><tr><th align=left>op</th><th>s/step</th>"
                                "<th align=left>share</th><th>GFLOP/s</th><th>of peak</th></tr>\n",
                                j.value("steps", 0), j.value("step_s", 0.0));
    for (const auto& r : j.at("ops")) {
      const double share = r.value("share", 0.0);
      t += fmt::format("<tr><td>{}</td><td align=right>{:.4f}</td><td><div style=\"background:{};height:12px;width:{:.0f}px\">"
                       "</div>{:.1f}%</td><td align=right>{}</td><td align=right>{}</td></tr>\n",
                       escape(r.value("op", std::string())), r.value("seconds_per_step", 0.0), kColors[0], 300 * share,
                       100 * share, r.contains("gflops") ? fmt::format("{:.1f}", r["gflops"].get<double>()) : "",
                       r.contains("of_peak") ? fmt::format("{:.0f}%", 100 * r["of_peak"].get<double>()) : "");
    }
    return t + "</table>\n";
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: not a run.profile table: {}", path, e.what());
  }
}

std::string write_report(const std::string& run_dir, const std::string& devices_path) {
  RunConfig cfg = load_config(run_dir + "/config.toml", {});
  const std::string path = run_dir + "/metrics.jsonl";
  Series loss{"train loss", kColors[0], {}, {}}, val{"validation loss", kColors[1], {}, {}},
      tok{"measured", kColors[0], {}, {}},
      cost{"measured", kColors[0], {}, {}};
  std::vector<Series> mem(num_mem);
  std::vector<double> peak(num_mem, 0.0);
  std::string recompute = cfg.memory.recompute.name();
  int ranks = 1;
  double seconds = 0;
  std::vector<double> span;  // data.document_mask's attention_span, after the first step
  for (const auto& [n, r] : read_metrics(run_dir)) {
    if (r.is_discarded() || !r.is_object()) user_error("{}:{}: not a JSON record", path, n);
    auto num = [&](const char* k) {
      if (!r.contains(k) || !r[k].is_number())
        user_error("{}:{}: {}: expected a number", path, n, k);
      return r[k].get<double>();
    };
    const double step = num("step");
    if (n == 1) {
      ranks = int(num("ranks"));
      if (r.contains("recompute") && r["recompute"].is_string()) recompute = r["recompute"].get<std::string>();
    }
    if (r.contains("loss")) { loss.x.push_back(step); loss.y.push_back(num("loss")); }  // none: no target trained on
    if (r.contains("val_loss")) { val.x.push_back(step); val.y.push_back(num("val_loss")); }
    tok.x.push_back(step); tok.y.push_back(num("tokens_per_s"));
    if (n > 1 && r.contains("attention_span")) span.push_back(num("attention_span"));
    seconds += num("step_ms") / 1e3;
    cost.x.push_back(step); cost.y.push_back(seconds);
    if (!r.contains("mem_peak") || !r["mem_peak"].is_object()) user_error("{}:{}: mem_peak: expected an object", path, n);
    for (int c = 0; c < num_mem; c++) {
      const auto& m = r["mem_peak"];
      double b = m.contains(mem_name(Mem(c))) && m[mem_name(Mem(c))].is_number() ? m[mem_name(Mem(c))].get<double>() : 0.0;
      mem[c].x.push_back(step); mem[c].y.push_back(b);
      peak[c] = std::max(peak[c], b);
    }
  }
  if (tok.x.empty()) user_error("{}: no records (has the run started?)", path);
  const Plan p = plan_for_run(cfg, ranks, RecomputePolicy::parse(recompute, path), devices_path, median(span));
  const double rate = p.s.devices * p.s.device.price / 3600.0;
  for (double& y : cost.y) y *= rate;
  const double last = tok.x.back(), first = tok.x.front();

  std::vector<Series> mem_series;
  std::vector<std::string> labels;
  std::vector<double> pred, meas;
  for (int c = 0; c < num_mem; c++) {
    if (peak[c] == 0 && p.memory.bytes[c] == 0) continue;
    mem[c].name = mem_name(Mem(c));
    mem[c].color = kColors[c];
    mem_series.push_back(mem[c]);
    labels.push_back(mem_name(Mem(c)));
    pred.push_back(double(p.memory.bytes[c]));
    meas.push_back(peak[c]);
  }
  std::vector<Series> loss_series = {loss};
  if (!val.x.empty()) loss_series.push_back(val);
  Series tok_pred{"predicted", kColors[3], {first, last}, {p.tokens_per_s, p.tokens_per_s}, true};
  Series cost_pred{"predicted", kColors[3], {first, last}, {first * p.step_s * rate, last * p.step_s * rate}, true};

  Measured m;
  for (int c = 0; c < num_mem; c++) m.peak[c] = size_t(peak[c]);
  std::vector<double> sorted(tok.y.begin() + (tok.y.size() > 1), tok.y.end());
  std::sort(sorted.begin(), sorted.end());
  m.tokens_per_s = sorted[sorted.size() / 2];
  m.mfu = p.model_flops_per_token * m.tokens_per_s / (p.s.devices * p.s.device.peak_for(p.s.compute));
  m.seconds = seconds;

  std::string html = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>frugal run " + escape(run_dir) +
                     "</title>\n<style>body{font-family:sans-serif;margin:24px;max-width:1340px}"
                     "svg{background:#fff;border:1px solid #ddd;margin:6px}pre{background:#f6f6f6;padding:8px}</style></head><body>\n";
  html += fmt::format("<h1>frugal run {}</h1>\n<p>{} ({} layers, {} dims, {:.2f} M parameters), {} compute, recompute {}, "
                      "{}, {} rank(s), {} steps of {} tokens; device {} ({}/h each). "
                      "Cost so far: <b>{}</b> for {}.</p>\n",
                      escape(run_dir), escape(cfg.model.preset), cfg.model.n_layer, cfg.model.n_embd,
                      cfg.model.num_params() / 1e6, dtype_name(p.s.compute), escape(recompute),
                      strategy_name(p.s.strategy), ranks, tok.x.size(), p.step_tokens, escape(p.s.device.name),
                      dollars(p.s.device.price), dollars(seconds * rate), human_time(seconds));
  html += line_chart("Loss", "step", loss_series);
  html += line_chart("Tokens/s", "step", {tok, tok_pred});
  html += line_chart("Memory by category (peak per step, per rank)", "step", mem_series, true);
  html += bar_chart("Memory: predicted vs measured peak", labels, pred, meas);
  html += line_chart("Cost so far (USD)", "step", {cost, cost_pred});
  html += profile_table(run_dir + "/profile.json");
  html += "<h2>Predicted vs measured</h2>\n<pre>" + escape(compare_table(p, &m)) + "</pre>\n</body></html>\n";
  const std::string out = run_dir + "/report.html";
  write_file_atomic(out, html.data(), html.size());
  return out;
}

}  // namespace frugal
