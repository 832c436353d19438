// The safetensors format: 8-byte little-endian header length, JSON header, raw little-endian
// data. Reading checks everything (see SafeTensors::parse); the model mapping is safetensors.cpp.
// Depends on core only, so the fuzz target (tests/io/safetensors_fuzz.cpp) links just this file.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

#include "core/dtype.h"
#include "io/io.h"

namespace frugal {

using nlohmann::json;

// Bytes per element of a safetensors dtype; 0 for an unknown one.
static size_t dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2}, {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4}, {"I64", 8}, {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

void save_safetensors(const std::string& path, const std::vector<StTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    FRUGAL_CHECK(n > 0, "unsupported dtype {}", t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes
  uint64_t len = h.size();
  AtomicFile f(path);
  f.write(&len, 8);
  f.write(h.data(), h.size());
  std::vector<float> rows;  // one transposed tensor at a time
  for (auto& t : tensors) {
    size_t n = dtype_size(t.dtype);
    for (int64_t d : t.shape) n *= size_t(d);
    if (!t.transposed) {
      f.write(t.data, n);
      continue;
    }
    FRUGAL_CHECK(t.dtype == "F32" && t.shape.size() == 2, "{}: transposed needs a 2-D F32 tensor", t.name);
    const int64_t R = t.shape[0], C = t.shape[1];  // written (R, C) from data (C, R)
    const float* src = static_cast<const float*>(t.data);
    rows.resize(size_t(R * C));
    const int64_t tile = 64;  // cache-sized tiles: both sides stay sequential within a tile
    for (int64_t c0 = 0; c0 < C; c0 += tile)
      for (int64_t r0 = 0; r0 < R; r0 += tile)
        for (int64_t c = c0; c < std::min(C, c0 + tile); c++)
          for (int64_t r = r0; r < std::min(R, r0 + tile); r++) rows[size_t(r * C + c)] = src[c * R + r];
    f.write(rows.data(), n);
  }
  f.commit();
}

SafeTensors::SafeTensors(const std::string& path) : path_(path) {
  // Mapped, not read: a reader pages in only the tensors (or ranges of them) it copies.
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) user_error("{}: cannot open", path);
  struct stat sb;
  size_t size = ::fstat(fd, &sb) == 0 ? size_t(sb.st_size) : 0;
  void* p = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  if (p == MAP_FAILED) user_error("{}: cannot map: {}", path, std::strerror(errno));
  if (p) map_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  bytes_ = std::string_view(static_cast<const char*>(p), size);
  parse();
}

SafeTensors::SafeTensors(std::string name, std::vector<char> bytes)
    : path_(std::move(name)), owned_(std::move(bytes)), bytes_(owned_.data(), owned_.size()) {
  parse();
}

// Checks the whole header against the file: a JSON object (UTF-8) of string metadata and
// tensors with a known dtype, a shape of non-negative integers whose size matches the byte
// range, and byte ranges that tile the data without overlap.
void SafeTensors::parse() {
  const std::string& path = path_;
  uint64_t len = 0;
  if (bytes_.size() >= 8) std::memcpy(&len, bytes_.data(), 8);
  if (bytes_.size() < 8 || len > bytes_.size() - 8)
    user_error("{}: not a safetensors file (header length {} for a {}-byte file)", path, len, bytes_.size());
  data_start_ = 8 + len;
  const size_t data_bytes = bytes_.size() - data_start_;
  json header;
  try {
    header = json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + std::ptrdiff_t(len));
  } catch (const json::exception& e) {
    user_error("{}: bad safetensors header (not UTF-8 JSON): {}", path, e.what());
  }
  if (!header.is_object()) user_error("{}: bad safetensors header: expected a JSON object", path);
  auto bad = [&](const std::string& name, const std::string& what) {
    user_error("{}: bad safetensors header: tensor '{}': {}", path, name, what);
  };
  std::vector<std::pair<size_t, size_t>> ranges;  // [begin, end) of each tensor, checked for overlap
  for (auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      if (!v.is_object()) user_error("{}: bad safetensors header: __metadata__ is not an object", path);
      for (auto& [k, mv] : v.items()) {
        if (!mv.is_string()) user_error("{}: bad safetensors header: metadata '{}' is not a string", path, k);
        metadata_[k] = mv.get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      bad(name, "expected an object with dtype, shape and data_offsets");
    const json &dt = v["dtype"], &sh = v["shape"], &off = v["data_offsets"];
    if (!dt.is_string() || dtype_size(dt.get<std::string>()) == 0)
      bad(name, fmt::format("unknown dtype {}", dt.dump()));
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad(name, fmt::format("data_offsets {}, expected [begin, end]", off.dump()));
    if (!sh.is_array()) bad(name, fmt::format("shape {}, expected an array", sh.dump()));
    Entry e{dt.get<std::string>(), {}, off[0].get<size_t>(), off[1].get<size_t>()};
    size_t n = dtype_size(e.dtype);
    for (auto& d : sh) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(INT64_MAX))
        bad(name, fmt::format("shape {}, expected non-negative integers", sh.dump()));
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && n > SIZE_MAX / dim) bad(name, fmt::format("shape {} is too large", sh.dump()));
      n *= size_t(dim);
      e.shape.push_back(int64_t(dim));
    }
    if (e.end < e.begin || e.end > data_bytes)
      user_error("{}: tensor '{}' lies outside the file (offsets {}..{}, {} bytes of data)", path,
                 name, e.begin, e.end, data_bytes);
    if (e.end - e.begin != n)
      bad(name, fmt::format("{} [{}] is {} bytes, but data_offsets {}..{} hold {}", e.dtype,
                            fmt::join(e.shape, ", "), n, e.begin, e.end, e.end - e.begin));
    if (n > 0) ranges.push_back({e.begin, e.end});
    index_[name] = std::move(e);
  }
  // the tensors tile the data, as the safetensors library requires: a gap or bytes past the last
  // tensor mean the file was cut, spliced or extended
  std::sort(ranges.begin(), ranges.end());
  size_t covered = 0;
  for (size_t i = 0; i < ranges.size(); i++) {
    if (i > 0 && ranges[i].first < ranges[i - 1].second)
      user_error("{}: bad safetensors header: tensors overlap (bytes {}..{} and {}..{})", path,
                 ranges[i - 1].first, ranges[i - 1].second, ranges[i].first, ranges[i].second);
    if (ranges[i].first != covered) break;
    covered = ranges[i].second;
  }
  if (covered != data_bytes)
    user_error("{}: bad safetensors header: the tensors hold {} of the file's {} bytes of data (bytes {}.. belong to "
               "none: the file is damaged)", path, covered, data_bytes, covered);
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  for (auto& [name, e] : index_) out.push_back(name);
  return out;
}

std::vector<int64_t> SafeTensors::shape(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  return it->second.shape;
}

const float* SafeTensors::f32(const std::string& name, int64_t numel) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if (e.dtype != "F32" || e.end - e.begin != size_t(numel) * 4)
    user_error("{}: tensor '{}' is {} of {} bytes, expected F32 of {} elements", path_, name, e.dtype,
               e.end - e.begin, numel);
  return reinterpret_cast<const float*>(bytes_.data() + data_start_ + e.begin);
}

void SafeTensors::read_f32(const std::string& name, const std::vector<int64_t>& shape, float* out) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if ((e.dtype != "F32" && e.dtype != "BF16" && e.dtype != "F16") || e.shape != shape)
    user_error("{}: tensor '{}' is {} [{}], expected F32, BF16 or F16 [{}]", path_, name, e.dtype,
               fmt::join(e.shape, ", "), fmt::join(shape, ", "));
  if (e.dtype == "F32") return read(name, "F32", shape, out);
  const char* src = bytes_.data() + data_start_ + e.begin;
  const size_t n = (e.end - e.begin) / 2;
  for (size_t i = 0; i < n; i++) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    out[i] = e.dtype == "BF16" ? to_f32(bf16{h}) : f16_bits_to_f32(h);
  }
}

void SafeTensors::read(const std::string& name, const std::string& dtype,
                       const std::vector<int64_t>& shape, void* out) const {
  auto it = index_.find(name);
  if (it == index_.end()) user_error("{}: tensor '{}' is missing", path_, name);
  const Entry& e = it->second;
  if (e.dtype != dtype || e.shape != shape)
    user_error("{}: tensor '{}' is {} [{}], expected {} [{}]", path_, name, e.dtype,
               fmt::join(e.shape, ", "), dtype, fmt::join(shape, ", "));
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  if (e.end - e.begin != n)
    user_error("{}: tensor '{}' has {} bytes, expected {}", path_, name, e.end - e.begin, n);
  std::memcpy(out, bytes_.data() + data_start_ + e.begin, n);
}

}  // namespace frugal
