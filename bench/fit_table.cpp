// The longest sequence (micro-batch 1) and the largest micro-batch (T = 1024) that fit a memory
// size, per recompute policy, from the memory formulas (checked against the MemoryPool by
// tests/model/recompute_test.cpp). The context is widened with T for the sequence column.
//   usage: fit_table [preset] [GiB] [fp32|bf16]      (default: gpt2 8 bf16)
#include <cstdio>
#include <string>

#include "dist/comm.h"

using namespace frugal;

int main(int argc, char** argv) {
  std::string preset = argc > 1 ? argv[1] : "gpt2";
  double gib = argc > 2 ? std::atof(argv[2]) : 8.0;
  DType dt = (argc > 3 && std::string(argv[3]) == "fp32") ? DType::f32 : DType::bf16;
  const size_t limit = size_t(gib * double(1ull << 30));
  ModelConfig cfg = model_preset(preset, "fit_table");
  std::printf("%s %s, %.0f GiB (all categories: model states + activations + workspace)\n",
              preset.c_str(), dtype_name(dt), gib);
  std::printf("%-10s %22s %26s\n", "recompute", "longest T at B=1", "largest B at T=1024");
  for (const char* name : {"none", "selective", "every:4", "every:2", "full"}) {
    auto plan = RecomputePolicy::parse(name, "fit_table").per_block(cfg.n_layer);
    auto fits = [&](int B, int T) {
      ModelConfig c = cfg;
      c.context = std::max(c.context, T);
      return estimate_memory(c, B, T, dt, plan).total() <= limit;
    };
    int T = 64;
    while (fits(1, T * 2)) T *= 2;
    for (int step = T / 2; step >= 64; step /= 2)
      if (fits(1, T + step)) T += step;
    int B = 0;
    while (fits(B + 1, 1024)) B++;
    std::printf("%-10s %22d %26d\n", name, fits(1, 64) ? T : 0, B);
  }
  return 0;
}
