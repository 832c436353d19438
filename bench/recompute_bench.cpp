// Step time and activation peak of each recompute policy, measured in one process with the
// policies interleaved round by round (none, selective, ..., none, selective, ...), so that a
// shared, noisy host slows them alike; the time ratio is the median over rounds of each
// policy's step time over that round's `none`.
//   usage: recompute_bench [preset] [B] [T] [fp32|bf16] [rounds] [policy...]
//   (default: gpt2 4 1024 bf16 3 none selective every:2 full)
#include <omp.h>

#include <algorithm>
#include <chrono>

#include "train/train.h"

using namespace frugal;

int main(int argc, char** argv) {
  const std::string preset = argc > 1 ? argv[1] : "gpt2";
  const int B = argc > 2 ? std::atoi(argv[2]) : 4, T = argc > 3 ? std::atoi(argv[3]) : 1024;
  PrecisionSettings prec;
  prec.compute = argc > 4 && std::string(argv[4]) == "fp32" ? DType::f32 : DType::bf16;
  const int rounds = argc > 5 ? std::atoi(argv[5]) : 3;
  std::vector<std::string> names;
  for (int i = 6; i < argc; i++) names.push_back(argv[i]);
  if (names.empty()) names = {"none", "selective", "every:2", "full"};
  if (names[0] != "none") names.insert(names.begin(), "none");
  const ModelConfig cfg = model_preset(preset, "recompute_bench");
  Model model(cfg, cpu_backend(), prec.compute);
  model.init(1);
  TrainSettings t;
  t.micro_batch = B;
  t.seq_len = T;
  t.steps = 1000;
  auto comm = make_local_comm();
  Rng rng(2);
  auto next = [&](int32_t* in, int32_t* tg) {
    for (int i = 0; i < B * T; i++) {
      in[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
      tg[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
    }
  };
  std::vector<std::vector<double>> secs(names.size()), ratio(names.size());
  std::vector<size_t> acts(names.size());
  for (int r = 0; r < rounds; r++)
    for (size_t p = 0; p < names.size(); p++) {
      Stepper st(model, cpu_backend(), *comm, t, 1, prec,
                 RecomputePolicy::parse(names[p], "recompute_bench").per_block(cfg.n_layer));
      st.step(0, next);  // warm-up: first touch of this policy's buffers
      MemoryPool::get().reset_peak();
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 1; s <= 2; s++) st.step(s, next);
      secs[p].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 2);
      ratio[p].push_back(secs[p].back() / secs[0].back());
      acts[p] = MemoryPool::get().stats().peak[int(Mem::activations)];
    }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  };
  std::printf("%s %s B=%d T=%d, %d threads, %d rounds of 2 steps per policy (after 1)\n", preset.c_str(),
              dtype_name(prec.compute), B, T, omp_get_max_threads(), rounds);
  std::printf("%-10s %14s %9s %12s %9s   per-round time ratios\n", "recompute", "activations", "vs none",
              "s/step", "vs none");
  for (size_t p = 0; p < names.size(); p++) {
    std::printf("%-10s %10.1f MiB %+8.1f%% %12.3f %+8.1f%%  ", names[p].c_str(), double(acts[p]) / (1 << 20),
                100.0 * (double(acts[p]) / double(acts[0]) - 1), median(secs[p]), 100.0 * (median(ratio[p]) - 1));
    for (double x : ratio[p]) std::printf(" %.3f", x);
    std::printf("\n");
  }
  return 0;
}
