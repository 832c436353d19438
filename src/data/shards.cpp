// Token shards: writing (whole, or streamed by ShardWriter), mapping and validating, against the
// directory's manifest where there is one.
#include <fcntl.h>
#include <glob.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "data/data.h"

namespace frugal {

void write_shard(const std::string& path, const std::vector<uint32_t>& tokens) {
  bool wide = std::any_of(tokens.begin(), tokens.end(), [](uint32_t t) { return t > 0xFFFF; });
  int32_t header[kShardHeaderInts] = {};
  header[0] = wide ? kShardMagic32 : kShardMagic16;
  header[1] = wide ? kShardVersion32 : kShardVersion16;
  header[2] = int32_t(tokens.size());
  FRUGAL_CHECK(tokens.size() < (size_t(1) << 31), "shard too large: {} tokens", tokens.size());
  size_t width = wide ? 4 : 2;
  std::vector<char> buf(sizeof(header) + tokens.size() * width);
  std::memcpy(buf.data(), header, sizeof(header));
  char* body = buf.data() + sizeof(header);
  for (size_t i = 0; i < tokens.size(); i++) {
    if (wide) std::memcpy(body + 4 * i, &tokens[i], 4);
    else { uint16_t t = uint16_t(tokens[i]); std::memcpy(body + 2 * i, &t, 2); }
  }
  write_file_atomic(path, buf.data(), buf.size());
}

static constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);
static constexpr size_t kWriterBufTokens = 1 << 16;  // a multiple of 8 bytes at either width

ShardWriter::ShardWriter(const std::string& path, bool wide)
    : file_(std::make_unique<AtomicFile>(path)), wide_(wide) {
  int32_t header[kShardHeaderInts] = {};  // patched by finish()
  file_->write(header, sizeof header);
}

void ShardWriter::append(const uint32_t* tokens, size_t n) {
  const size_t width = wide_ ? 4 : 2;
  buf_.resize(kWriterBufTokens * width);
  for (size_t i = 0; i < n; i++) {
    if (used_ == kWriterBufTokens) flush();
    if (wide_) {
      std::memcpy(buf_.data() + 4 * used_++, &tokens[i], 4);
    } else {
      FRUGAL_CHECK(tokens[i] <= 0xFFFF, "token {} in a uint16 shard", tokens[i]);
      const uint16_t t = uint16_t(tokens[i]);
      std::memcpy(buf_.data() + 2 * used_++, &t, 2);
    }
  }
  n_ += int64_t(n);
  FRUGAL_CHECK(n_ < (int64_t(1) << 31), "shard too large: {} tokens", n_);
}

void ShardWriter::flush() {
  const size_t bytes = used_ * (wide_ ? 4 : 2);
  sum_ = checksum(buf_.data(), bytes, sum_);
  if (file_) file_->write(buf_.data(), bytes);
  used_ = 0;
}

ShardWriter::Done ShardWriter::finish() {
  flush();
  const int64_t bytes = int64_t(kShardHeaderBytes) + n_ * (wide_ ? 4 : 2);
  if (file_) {
    int32_t header[3] = {wide_ ? kShardMagic32 : kShardMagic16, wide_ ? kShardVersion32 : kShardVersion16, int32_t(n_)};
    file_->write_at(0, header, sizeof header);
    file_->commit();
    file_.reset();
  }
  return {n_, bytes, sum_};
}

// The manifest's entry for a shard in a directory that has one: its token count and checksum;
// none without a manifest; UserError naming the shard when the manifest does not list it.
struct ManifestEntry { int64_t tokens; std::string checksum; };
static std::optional<ManifestEntry> manifest_entry(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(path).parent_path();
  std::string m = ((dir.empty() ? fs::path(".") : dir) / kManifest).string();
  if (!fs::exists(m)) return std::nullopt;
  try {
    const nlohmann::json j = nlohmann::json::parse(read_whole_file(m));
    for (auto& s : j.at("shards"))
      if (s.at("file").get<std::string>() == fs::path(path).filename().string())
        return ManifestEntry{s.at("tokens").get<int64_t>(), s.at("checksum").get<std::string>()};
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: not a frugal manifest: {}", m, e.what());
  }
  user_error("{}: not listed in {} (a file left from another prepare? prepare the directory again)", path, m);
}

TokenShard::TokenShard(const std::string& path, int64_t vocab_size) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) user_error("{}: cannot open token shard: {}", path, std::strerror(errno));
  struct stat st;
  ::fstat(fd, &st);
  size_t bytes = size_t(st.st_size);
  const size_t hdr = kShardHeaderInts * sizeof(int32_t);
  if (bytes < hdr) {
    ::close(fd);
    user_error("{}: not a token shard: {} bytes, shorter than the {}-byte header", path, bytes, hdr);
  }
  map_ = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) { map_ = nullptr; user_error("{}: cannot map: {}", path, std::strerror(errno)); }
  map_bytes_ = bytes;
  const int32_t* h = static_cast<const int32_t*>(map_);
  if (h[0] == kShardMagic16 && h[1] == kShardVersion16) wide_ = false;
  else if (h[0] == kShardMagic32 && h[1] == kShardVersion32) wide_ = true;
  else
    user_error("{}: bad header: magic {} version {}, expected {} / {} (uint16) or {} / {} (uint32)",
               path, h[0], h[1], kShardMagic16, kShardVersion16, kShardMagic32, kShardVersion32);
  n_ = h[2];
  size_t width = wide_ ? 4 : 2;
  if (n_ < 0 || hdr + size_t(n_) * width != bytes)
    user_error("{}: header says {} tokens ({} bytes of body), but the body has {} bytes", path, n_,
               size_t(std::max<int64_t>(n_, 0)) * width, bytes - hdr);
  const char* body = static_cast<const char*>(map_) + hdr;
  if (auto e = manifest_entry(path)) {
    if (e->tokens != n_)
      user_error("{}: {} tokens, but the manifest lists {} (the shard is damaged: prepare it again)", path, n_, e->tokens);
    const std::string sum = fmt::format("{:016x}", checksum(body, bytes - hdr));
    if (sum != e->checksum)
      user_error("{}: checksum {}, but the manifest lists {} (the shard is corrupt: prepare it again)", path, sum,
                 e->checksum);
  }
  u16_ = reinterpret_cast<const uint16_t*>(body);
  u32_ = reinterpret_cast<const uint32_t*>(body);
  if (vocab_size > 0) {
    for (int64_t i = 0; i < n_; i++) {
      if (int64_t((*this)[i]) >= vocab_size) {
        auto dir = std::filesystem::path(path).parent_path().string();
        auto info = tokenizer_info(dir.empty() ? "." : dir);
        user_error("{}: token {} has id {}, expected ids below model.vocab_size = {} (the shards' "
                   "tokenizer, {}, has {} ids: set model.vocab_size = {})", path, i, (*this)[i],
                   vocab_size, info.kind, info.vocab_size, info.vocab_size);
      }
    }
  }
}

TokenShard::TokenShard(TokenShard&& o) noexcept
    : path_(std::move(o.path_)), map_(o.map_), map_bytes_(o.map_bytes_), n_(o.n_), wide_(o.wide_),
      u16_(o.u16_), u32_(o.u32_) {
  o.map_ = nullptr;
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

// A prepared directory's manifest, parsed (null where there is none). Shards of a prepare that
// has not finished (interrupted, failed or still running) are refused: the set is not all there,
// though each shard listed so far is whole.
static nlohmann::json finished_manifest(const std::filesystem::path& manifest) {
  std::error_code ec;
  if (!std::filesystem::exists(manifest, ec)) return nullptr;
  nlohmann::json j;
  bool complete = false;
  try {
    j = nlohmann::json::parse(read_whole_file(manifest.string()));
    complete = j.at("complete").get<bool>();
  } catch (const nlohmann::json::exception& e) {
    user_error("{}: not a frugal manifest: {}", manifest.string(), e.what());
  }
  if (!complete)
    user_error("{}: prepare did not finish here (interrupted, or stopped at an error): run it again, it resumes", manifest.string());
  return j;
}

std::vector<std::string> resolve_shards(const std::string& pattern, const std::string& field) {
  std::vector<std::string> files;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path manifest = fs::path(pattern) / kManifest;
  if (fs::is_directory(pattern, ec) && fs::exists(manifest)) {
    // a prepared directory: its shards in the manifest's order
    const std::string split = field.ends_with("train") ? "train" : field.ends_with("val") ? "val" : "";
    const nlohmann::json j = finished_manifest(manifest);
    try {
      for (auto& s : j.at("shards"))
        if (split.empty() || s.at("split").get<std::string>() == split)
          files.push_back((fs::path(pattern) / s.at("file").get<std::string>()).string());
    } catch (const nlohmann::json::exception& e) {
      user_error("{}: not a frugal manifest: {}", manifest.string(), e.what());
    }
    if (files.empty()) user_error("{}: {} lists no {} shards", field, manifest.string(), split);
    return files;
  } else if (fs::is_directory(pattern, ec)) {
    // a directory of prepared shards holds both splits: data.train takes train_*, data.val val_*
    const std::string split = field.ends_with("train") ? "train_" : field.ends_with("val") ? "val_" : "";
    bool has_split = false;
    for (auto& e : fs::directory_iterator(pattern, ec))
      has_split |= !split.empty() && e.path().filename().string().starts_with(split);
    for (auto& e : fs::directory_iterator(pattern, ec))
      if (e.path().extension() == ".bin" && (!has_split || e.path().filename().string().starts_with(split)))
        files.push_back(e.path().string());
  } else {
    glob_t g;
    if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; i++) files.push_back(g.gl_pathv[i]);
    ::globfree(&g);
    std::set<fs::path> dirs;
    for (const auto& f : files) dirs.insert(fs::path(f).parent_path());
    for (const auto& dir : dirs) finished_manifest((dir.empty() ? fs::path(".") : dir) / kManifest);
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) user_error("{}: no token shards match '{}'", field, pattern);
  return files;
}

}  // namespace frugal
