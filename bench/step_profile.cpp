// Where a training step's time goes: runs steps of a model through a timing decorator of the
// CPU backend (or the CUDA backend, synchronised around every op) and prints seconds per op
// family, GEMM against the rest.
//   usage: step_profile [preset] [B] [T] [steps] [fp32|bf16|fp16] [recompute] [cpu|cuda] [gemms]
//   (default: gpt2 4 256 3 fp32 none cpu); gemms: also each GEMM's time and GFLOP/s by shape and
//   pass (a linear layer's backward: dW, dX and the bias sums).
#include <omp.h>

#include <chrono>
#include <map>

#include "train/train.h"

using namespace frugal;

int run(int argc, char** argv) {
  std::string preset = argc > 1 ? argv[1] : "gpt2";
  int B = argc > 2 ? std::atoi(argv[2]) : 4, T = argc > 3 ? std::atoi(argv[3]) : 256;
  int steps = argc > 4 ? std::atoi(argv[4]) : 3;
  PrecisionSettings prec;
  std::string dtn = argc > 5 ? argv[5] : "fp32";
  prec.compute = dtn == "bf16" ? DType::bf16 : dtn == "fp16" ? DType::f16 : DType::f32;
  ModelConfig cfg = model_preset(preset, "step_profile");
  const std::string on = argc > 7 ? argv[7] : "cpu";
  const bool by_shape = argc > 8 && std::string(argv[8]) == "gemms";
  if (argc > 8 && !by_shape) user_error("argument 8 is '{}'; expected 'gemms' or nothing", argv[8]);
  OpTimes times, gemms;
  std::unique_ptr<Backend> timed =
      timing_backend(on == "cuda" ? cuda_backend() : cpu_backend(), &times, by_shape ? &gemms : nullptr);
  Backend& tb = *timed;
  Model model(cfg, tb, prec.compute);
  model.init(1);
  TrainSettings t;
  t.micro_batch = B;
  t.seq_len = T;
  t.steps = steps + 1;
  auto comm = make_local_comm();
  const auto plan = RecomputePolicy::parse(argc > 6 ? argv[6] : "none", "step_profile").per_block(cfg.n_layer);
  Stepper stepper(model, tb, *comm, t, 1, prec, plan);
  Rng rng(2);
  auto next = [&](int32_t* in, int32_t* tg) {
    for (int i = 0; i < B * T; i++) {
      in[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
      tg[i] = int32_t(rng.below(uint64_t(cfg.vocab_size)));
    }
  };
  stepper.step(0, next);  // warm-up
  times.clear();
  gemms.clear();
  auto t0 = std::chrono::steady_clock::now();
  for (int s = 1; s <= steps; s++) stepper.step(s, next);
  double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  std::printf("%s %s B=%d T=%d on %s, %d threads: %.4f s/step, %.1f tokens/s\n", preset.c_str(),
              dtype_name(prec.compute), B, T, on.c_str(), omp_get_max_threads(), total, B * T / total);
  double accounted = 0;
  for (auto& [k, o] : times) {
    std::printf("  %-18s %8.4f s  %5.1f%%\n", k.c_str(), o.seconds / steps, 100 * o.seconds / steps / total);
    accounted += o.seconds / steps;
  }
  std::printf("  %-18s %8.4f s  %5.1f%%\n", "other (host)", total - accounted, 100 * (total - accounted) / total);
  const double gemm_s = times["gemm"].seconds + times["gemm with gelu"].seconds;
  std::printf("GEMM: %.1f GFLOP/s over %.4f s; model: %.1f GFLOP/s\n", (times["gemm"].flops + times["gemm with gelu"].flops) / gemm_s / 1e9,
              gemm_s / steps, cfg.flops_per_token(T) * B * T / total / 1e9);
  for (auto& [k, o] : gemms)
    std::printf("  %-34s %8.4f s  %5.1f%%  %7.1f GFLOP/s\n", k.c_str(), o.seconds / steps,
                100 * o.seconds / steps / total, o.flops / o.seconds / 1e9);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UserError& e) {
    std::fprintf(stderr, "step_profile: %s\n", e.what());
    return 1;
  }
}
