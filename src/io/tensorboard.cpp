// TensorBoard event files: the run's scalars as tensorboard reads them. A file is a sequence of
// records, [length u64][masked crc32c of the length][Event, protobuf][masked crc32c of the data],
// the first Event holding the file version. Event and Summary are encoded here by hand: wall_time
// (field 1, double), step (2, int64), file_version (3, string), summary (5: Summary.value (1):
// tag (1, string), simple_value (2, float)), session_log (6: status (1) START = 1).
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "io/io.h"

namespace frugal {

namespace {

uint32_t crc32c(const void* data, size_t n) {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; i++) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

// protobuf wire format
void varint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out += char(v | 0x80);
  out += char(v);
}
void key(std::string& out, int field, int wire) { varint(out, uint64_t(field) << 3 | uint64_t(wire)); }
template <class T>
void fixed(std::string& out, int field, T v) {
  key(out, field, sizeof(T) == 8 ? 1 : 5);
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
void bytes(std::string& out, int field, const std::string& v) {
  key(out, field, 2);
  varint(out, v.size());
  out += v;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  char host[256] = "localhost";
  ::gethostname(host, sizeof host - 1);
  path_ = fmt::format("{}/events.out.tfevents.{}.{}", dir, int64_t(now_s()), host);
  f_ = std::fopen(path_.c_str(), "ab");
  if (!f_) user_error("{}: cannot write: {}", path_, std::strerror(errno));
  std::string ev;
  fixed(ev, 1, now_s());
  bytes(ev, 3, "brain.Event:2");
  record(ev);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  std::string summary;
  for (auto& [tag, v] : values) {
    std::string value;
    bytes(value, 1, tag);
    fixed(value, 2, float(v));
    bytes(summary, 1, value);
  }
  std::string ev;
  fixed(ev, 1, now_s());
  key(ev, 2, 0);
  varint(ev, uint64_t(step));
  bytes(ev, 5, summary);
  record(ev);
}

void TensorBoardWriter::restart(int64_t step) {
  std::string log, ev;
  key(log, 1, 0);
  varint(log, 1);  // SessionLog.START: tensorboard drops what an earlier file has from this step on
  fixed(ev, 1, now_s());
  key(ev, 2, 0);
  varint(ev, uint64_t(step));
  bytes(ev, 6, log);
  record(ev);
}

void TensorBoardWriter::record(const std::string& data) {
  const uint64_t n = data.size();
  const uint32_t len_crc = masked_crc(&n, 8), data_crc = masked_crc(data.data(), data.size());
  if (std::fwrite(&n, 8, 1, f_) != 1 || std::fwrite(&len_crc, 4, 1, f_) != 1 ||
      std::fwrite(data.data(), 1, data.size(), f_) != data.size() || std::fwrite(&data_crc, 4, 1, f_) != 1 ||
      std::fflush(f_) != 0)
    user_error("{}: cannot write: {}", path_, std::strerror(errno));
}

}  // namespace frugal
