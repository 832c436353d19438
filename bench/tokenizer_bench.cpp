// Tokenizer speed: encodes a text file in one call with an empty piece cache (the figure that
// counts: `frugal prepare` sees each text once), then again with the cache warm; writes the ids
// (uint32, little-endian) for comparison with the reference. GPT-2's (GPT2_DIR/gpt2.tiktoken), or
// a pretrained one's (a directory holding tokenizer.json or tokenizer.model). Run by
// bench/tokenizer_bench.sh. MB/s per CPU second of this process (on the shared 2-core machines,
// wall time mostly measures the neighbours); wall time is printed too.
//   tokenizer_bench TEXT_FILE IDS_OUT [GPT2_DIR | MODEL_DIR]
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "data/data.h"

using namespace frugal;

int main(int argc, char** argv) {
  if (argc < 3) { std::fprintf(stderr, "usage: tokenizer_bench TEXT_FILE IDS_OUT [GPT2_DIR]\n"); return 2; }
  std::string text = read_whole_file(argv[1]);
  const std::string dir = argc > 3 ? argv[3] : kGpt2Dir;
  auto tok = std::filesystem::exists(dir + "/" + kGpt2Ranks) ? make_gpt2_tokenizer(dir) : load_pretrained_tokenizer(dir);
  std::vector<uint32_t> ids;
  for (const char* pass : {"cold cache", "warm cache"}) {
    ids.clear();
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
    tok->encode(text, ids);
    double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("frugal (%s): %.2f MB in %.3f s CPU (%.3f s wall), %.2f MB/s, %zu tokens\n", pass,
                text.size() / 1e6, cpu, wall, text.size() / 1e6 / cpu, ids.size());
  }
  write_file_atomic(argv[2], ids.data(), ids.size() * sizeof(uint32_t));
  return 0;
}
