// Test support: random inputs, comparisons, temporary directories.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace frugal::test {

// Fresh random inputs each run unless FRUGAL_TEST_SEED is set; the seed is printed on failure.
inline uint64_t test_seed() {
  static uint64_t s = [] {
    const char* e = std::getenv("FRUGAL_TEST_SEED");
    return e ? std::strtoull(e, nullptr, 10) : std::random_device{}();
  }();
  return s;
}

inline std::vector<float> randn(size_t n, float scale = 1.0f, uint64_t salt = 0) {
  std::mt19937_64 g(test_seed() * 1000003 + salt);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// max_i |a_i - b_i| / (atol + rtol * |b_i|) <= 1
template <class A, class B>
::testing::AssertionResult all_close(const A& a, const B& b, double rtol, double atol) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes " << a.size() << " vs " << b.size();
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double r = std::abs(double(a[i]) - double(b[i])) / (atol + rtol * std::abs(double(b[i])));
    if (!(r <= worst)) { worst = r; at = i; }
  }
  if (worst <= 1.0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "element " << at << ": " << a[at] << " vs " << b[at]
                                       << " (" << worst << "x the tolerance, seed " << test_seed() << ")";
}

// ||a - b|| / ||b|| (the relative error of a whole tensor)
template <class A, class B>
double rel_error(const A& a, const B& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); i++) {
    num += (double(a[i]) - double(b[i])) * (double(a[i]) - double(b[i]));
    den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// f must throw a UserError whose message contains needle.
template <class F>
void expect_user_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning: " << needle;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// Batch k of windows(S, B, T+1) (the token tensor the Python references read): inputs(B,T) and
// targets(B,T), the first `masked` targets of every row -1 (a prompt: not counted).
inline void batch_of(const std::vector<int32_t>& windows, int k, int B, int T, int32_t* in, int32_t* tg, int masked = 0) {
  for (int b = 0; b < B; b++) {
    const int32_t* w = windows.data() + (size_t(k) * B + b) * (T + 1);
    for (int i = 0; i < T; i++) {
      in[b * T + i] = w[i];
      tg[b * T + i] = i < masked ? -1 : w[i + 1];
    }
  }
}

// Window g of a fixed token stream over 97 ids: inputs(T) and targets(T). Runs of 8 tokens
// that step by 12 (a bigram to learn) from a hashed start, so that every window differs (a
// data-parallel test whose ranks all saw the same tokens could not tell a missing reduction).
inline void stream_window(int64_t g, int T, int32_t* in, int32_t* tg) {
  for (int t = 0; t <= T; t++) {
    uint64_t i = uint64_t(g) * T + t, h = (i / 8 + 1) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    int32_t v = int32_t((h + 12 * (i % 8)) % 97);
    if (t < T) in[t] = v;
    if (t > 0) tg[t - 1] = v;
  }
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("frugal_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter()++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
  static int& counter() { static int c = 0; return c; }
};

#ifdef FRUGAL_SOURCE_DIR
// Runs a Python reference (tests/reference/SCRIPT with ARGS) in the venv that scripts/setup.sh
// makes (.venv: PyTorch 2.x, transformers, safetensors, tiktoken); fails the test, naming the
// command, when the venv is missing or the script fails. OMP_NUM_THREADS=2 as the tests run.
inline ::testing::AssertionResult run_reference(const std::string& script, const std::string& args) {
  std::string python = std::string(FRUGAL_SOURCE_DIR) + "/.venv/bin/python";
  if (!std::filesystem::exists(python))
    return ::testing::AssertionFailure() << python << " is missing: run scripts/setup.sh";
  std::string cmd = python + " " + FRUGAL_SOURCE_DIR + "/tests/reference/" + script + " " + args;
  if (std::system(cmd.c_str()) != 0) return ::testing::AssertionFailure() << "failed: " << cmd;
  return ::testing::AssertionSuccess();
}
#endif

}  // namespace frugal::test
