// This CPU's dense peaks, measured on every thread at once (OMP_NUM_THREADS; 2 on these VMs):
// fp32 FMA (vfmadd231ps on 512-bit registers), bf16 pair products (vdpbf16ps, AVX512-BF16) and
// AMX's tile products (tdpbf16ps), each from registers or tiles only, with enough independent
// accumulators to cover the latency. The figures a catalogue entry's peak_flops and
// peak_flops_bf16 take (configs/devices.toml). See RESULTS.md.
//   usage: peak_bench [seconds per measurement]
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// FLOP/s of `body` (which does `flops` per call) on every thread, over about `secs` seconds.
template <class F>
static double rate(double secs, double flops, F&& body) {
  double best = 0;
  for (int round = 0; round < 3; round++) {
    std::atomic<bool> stop{false};
    long calls = 0;
    const double t0 = now();
#pragma omp parallel reduction(+ : calls)
    while (!stop.load(std::memory_order_relaxed)) {
      for (int i = 0; i < 100; i++) body();
      calls += 100;
      if (omp_get_thread_num() == 0 && now() - t0 > secs) stop = true;
    }
    best = std::max(best, calls * flops / (now() - t0));
  }
  return best;
}

int main(int argc, char** argv) {
  const double secs = argc > 1 ? std::atof(argv[1]) : 0.5;
  std::printf("%d threads\n", omp_get_max_threads());
  // fp32: 12 independent FMA chains in registers (latency 4 x 2 ports, with margin)
  double f32 = rate(secs, 100 * 12 * 32.0, [] {
    __m512 c[12];
    const __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (int i = 0; i < 12; i++) c[i] = _mm512_set1_ps(float(i));
    for (int k = 0; k < 100; k++)
      for (int i = 0; i < 12; i++) c[i] = _mm512_fmadd_ps(a, c[i], b);
    for (int i = 0; i < 12; i++) __asm__ volatile("" ::"v"(c[i]));
  });
  std::printf("fp32 FMA            %8.1f GFLOP/s\n", f32 / 1e9);
#if defined(__AVX512BF16__)
  double dp = rate(secs, 100 * 12 * 64.0, [] {
    __m512 c[12];
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f80);
    for (int i = 0; i < 12; i++) c[i] = _mm512_set1_ps(float(i));
    for (int k = 0; k < 100; k++)
      for (int i = 0; i < 12; i++) c[i] = _mm512_dpbf16_ps(c[i], a, b);
    for (int i = 0; i < 12; i++) __asm__ volatile("" ::"v"(c[i]));
  });
  std::printf("bf16 vdpbf16ps      %8.1f GFLOP/s\n", dp / 1e9);
#endif
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0) {
    struct alignas(64) {
      uint8_t palette = 1, start_row = 0, reserved[14] = {};
      uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
      uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
    } cfg;
    alignas(64) static uint16_t ones[16 * 32];
    for (auto& x : ones) x = 0x3f80;
    // 4 accumulators (tiles 0-3) from 2 A tiles (4, 5) and 2 B tiles (6, 7): 16x16x32 each
    double amx = rate(secs, 4 * 2.0 * 16 * 16 * 32, [&] {
      static thread_local bool loaded = false;
      if (!loaded) {
        _tile_loadconfig(&cfg);
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        _tile_loadd(4, ones, 64); _tile_loadd(5, ones, 64); _tile_loadd(6, ones, 64); _tile_loadd(7, ones, 64);
        loaded = true;
      }
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    });
    std::printf("bf16 AMX tdpbf16ps  %8.1f GFLOP/s\n", amx / 1e9);
  } else {
    std::printf("bf16 AMX: the kernel refused the tile state (ARCH_REQ_XCOMP_PERM)\n");
  }
#endif
}
