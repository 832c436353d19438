// libFuzzer target for the safetensors reader: any bytes must either open (and then every tensor
// reads back within the file) or be rejected with a UserError. Anything else — a crash, an
// AddressSanitizer report, another exception (uncaught: abort) — is a failure.
// Built with clang -fsanitize=fuzzer,address when available (tests/CMakeLists.txt); ctest runs it
// for a bounded time from the seed files in tests/io/fuzz_seeds.
#include <cstdint>
#include <vector>

#include "io/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    frugal::SafeTensors st("fuzz.safetensors", std::vector<char>(data, data + size));
    (void)st.metadata();
    for (const std::string& name : st.names()) {
      size_t n = 4;
      for (int64_t d : st.shape(name)) n *= size_t(d);
      if (n > (1u << 20)) continue;  // validated against the file, but no need to copy much
      std::vector<char> out(n);
      try {
        st.read(name, "F32", st.shape(name), out.data());
      } catch (const frugal::UserError&) {  // not F32: fine
      }
    }
  } catch (const frugal::UserError&) {
  }
  return 0;
}
