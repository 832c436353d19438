// `frugal prepare`: a corpus of any size -> token shards with a train/val split, the tokenizer's
// description and a manifest, streaming, on every core.
//
// The pipeline: one reader turns the input files into a batch of pieces of text (a document, or
// a part of a long .txt document cut where the tokenizer allows, or a raw .jsonl line), about
// 8 MB per thread; the threads tokenize the batch's pieces, each with its own tokenizer, into
// their own token buffers; then the pieces' tokens go, in input order, to the train or val
// shard writer. Only the order of the pieces decides the output, never the threads.
#include <glob.h>
#include <omp.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <queue>
#include <set>

#include <nlohmann/json.hpp>

#include "data/bpe.h"

namespace frugal {

namespace fs = std::filesystem;
using nlohmann::json;

std::string kjv_text() {
  FILE* p = ::popen("COLUMNS=80 bible 'Genesis 1:1-Revelation 22:21' 2>/dev/null", "r");
  std::string text;
  if (p) {
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
    int rc = ::pclose(p);
    if (rc != 0) text.clear();
  }
  if (text.size() < 1000000)
    user_error("bible: the default corpus needs Debian's bible-kjv package (run scripts/setup.sh)");
  return text;
}

namespace {

// ---- inputs ------------------------------------------------------------------------------------

enum class Format { text, jsonl };
struct Source {
  std::string path;  // empty: the KJV, from `text`
  Format format;
  int64_t bytes;     // on disk (compressed)
};

std::string strip_compression(const std::string& p) {
  for (const char* ext : {".gz", ".zst"})
    if (p.ends_with(ext)) return p.substr(0, p.size() - std::strlen(ext));
  return p;
}
bool is_corpus_file(const std::string& p) {
  std::string s = strip_compression(p);
  return s.ends_with(".txt") || s.ends_with(".jsonl");
}

// Files, directories (their .txt/.jsonl[.gz|.zst] files, recursively, sorted) and globs.
std::vector<Source> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> paths;
  auto add = [&](const std::string& p, bool named) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> found;
      for (auto& e : fs::recursive_directory_iterator(p, ec))
        if (e.is_regular_file() && is_corpus_file(e.path().string())) found.push_back(e.path().string());
      if (ec) user_error("{}: cannot list the directory: {}", p, ec.message());
      if (found.empty()) user_error("{}: no .txt or .jsonl files (plain, .gz or .zst) in the directory", p);
      std::sort(found.begin(), found.end());
      paths.insert(paths.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(p, ec)) {
      paths.push_back(p);
    } else if (named) {
      user_error("{}: no such file or directory (expected text files, .jsonl files, directories or globs)", p);
    }
  };
  for (auto& in : inputs) {
    if (in.find_first_of("*?[") == std::string::npos) { add(in, true); continue; }
    glob_t g;
    int rc = ::glob(in.c_str(), 0, nullptr, &g);
    size_t before = paths.size();
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; i++) add(g.gl_pathv[i], false);
    ::globfree(&g);
    if (paths.size() == before) user_error("{}: no files match", in);
  }
  std::vector<Source> out;
  for (auto& p : paths) {
    std::error_code ec;
    int64_t bytes = int64_t(fs::file_size(p, ec));
    out.push_back({p, strip_compression(p).ends_with(".jsonl") ? Format::jsonl : Format::text, ec ? 0 : bytes});
  }
  return out;
}

// A file's bytes, decompressed by its name (.gz: zlib, .zst: zstd), or a string's.
class ByteReader {
 public:
  ByteReader(const Source& s, const std::string* text) : path_(s.path), text_(text) {
    if (text_) return;
    if (s.path.ends_with(".gz")) {
      gz_ = ::gzopen(s.path.c_str(), "rb");
      if (!gz_) user_error("{}: cannot open: {}", s.path, std::strerror(errno));
      ::gzbuffer(gz_, 1 << 20);
      return;
    }
    f_ = std::fopen(s.path.c_str(), "rb");
    if (!f_) user_error("{}: cannot open: {}", s.path, std::strerror(errno));
    if (s.path.ends_with(".zst")) {
      zs_ = ZSTD_createDStream();
      in_.resize(ZSTD_DStreamInSize());
    }
  }
  ~ByteReader() {
    if (gz_) ::gzclose(gz_);
    if (f_) std::fclose(f_);
    if (zs_) ZSTD_freeDStream(zs_);
  }
  // Up to n bytes into buf; 0 at the end. UserError naming the file on a read or decode error.
  size_t read(char* buf, size_t n) {
    if (text_) {
      size_t k = std::min(n, text_->size() - size_t(pos_));
      std::memcpy(buf, text_->data() + pos_, k);
      pos_ += int64_t(k);
      return k;
    }
    if (gz_) {
      int k = ::gzread(gz_, buf, unsigned(std::min<size_t>(n, 1 << 30)));
      int err;
      if (k < 0) user_error("{}: not a valid gzip file: {}", path_, ::gzerror(gz_, &err));
      pos_ = ::gzoffset(gz_);
      return size_t(k);
    }
    if (!zs_) {
      size_t k = std::fread(buf, 1, n, f_);
      if (k == 0 && std::ferror(f_)) user_error("{}: read failed: {}", path_, std::strerror(errno));
      pos_ += int64_t(k);
      return k;
    }
    ZSTD_outBuffer out{buf, n, 0};
    while (out.pos == 0) {
      if (zin_.pos == zin_.size) {
        size_t k = std::fread(in_.data(), 1, in_.size(), f_);
        if (k == 0) {
          if (std::ferror(f_)) user_error("{}: read failed: {}", path_, std::strerror(errno));
          if (zst_open_) user_error("{}: the zstd stream is truncated", path_);
          return 0;
        }
        pos_ += int64_t(k);
        zin_ = {in_.data(), k, 0};
      }
      size_t r = ZSTD_decompressStream(zs_, &out, &zin_);
      if (ZSTD_isError(r)) user_error("{}: not a valid zstd file: {}", path_, ZSTD_getErrorName(r));
      zst_open_ = r != 0;
    }
    return out.pos;
  }
  int64_t consumed() const { return pos_; }  // bytes of the file (compressed) read so far

 private:
  std::string path_;
  const std::string* text_;
  gzFile gz_ = nullptr;
  FILE* f_ = nullptr;
  ZSTD_DStream* zs_ = nullptr;
  std::vector<char> in_;
  ZSTD_inBuffer zin_{nullptr, 0, 0};
  bool zst_open_ = false;
  int64_t pos_ = 0;
};

// ---- pieces ----------------------------------------------------------------------------------

// A piece of a batch: text[begin, end) of the batch, from source `source`; first: the piece
// starts its document (a non-empty .txt file, a non-blank .jsonl line); line: a .jsonl piece's
// line number (its text is the raw line).
struct Piece {
  size_t begin, end;
  int32_t source;
  int64_t line;  // 0: a text piece
  bool first;
};
struct Batch {
  std::string text;
  std::vector<Piece> pieces;
};

constexpr size_t kPieceBytes = 1 << 20;  // a long .txt document is cut into pieces of ~this

bool printable_ascii(unsigned char c) { return c > 0x20 && c < 0x7F; }

// Where a .txt document may be cut (see Tokenizer::cuts_at_lines): the start of the last line
// in s[from, n) whose '\n' stands between printable ASCII characters; 0 if none.
size_t cut_point(const std::string& s, size_t from) {
  for (size_t p = s.size() - 1; p > std::max<size_t>(from, 1); p--)
    if (s[p - 1] == '\n' && printable_ascii(s[p - 2]) && printable_ascii(s[p])) return p;
  return 0;
}

// Reads the sources in order, one batch of pieces at a time.
class PieceReader {
 public:
  PieceReader(const std::vector<Source>& sources, const std::string* kjv, bool cut)
      : sources_(sources), kjv_(kjv), cut_(cut) {}

  // Fills b with pieces until it holds about `budget` bytes; false at the end of the input.
  bool next(Batch& b, size_t budget) {
    b.text.clear();
    b.pieces.clear();
    while (b.text.size() < budget && src_ < sources_.size()) {
      if (!reader_) {
        reader_ = std::make_unique<ByteReader>(sources_[src_], sources_[src_].path.empty() ? kjv_ : nullptr);
        carry_.clear();
        line_ = 0;
        first_ = true;
      }
      chunk_.resize(kPieceBytes);
      size_t k = reader_->read(chunk_.data(), chunk_.size());
      const bool eof = k == 0;
      carry_.append(chunk_.data(), k);
      if (sources_[src_].format == Format::jsonl) take_lines(b, eof);
      else take_text(b, eof);
      if (eof) {
        done_bytes_ += reader_->consumed();
        reader_.reset();
        src_++;
      }
    }
    return !b.pieces.empty() || src_ < sources_.size();
  }
  int64_t consumed() const { return done_bytes_ + (reader_ ? reader_->consumed() : 0); }

 private:
  void add(Batch& b, const char* p, size_t n, int64_t line) {
    b.pieces.push_back({b.text.size(), b.text.size() + n, int32_t(src_), line, first_ || line > 0});
    first_ = false;
    b.text.append(p, n);
  }
  void take_text(Batch& b, bool eof) {
    if (eof) {
      if (!carry_.empty()) add(b, carry_.data(), carry_.size(), 0);
      carry_.clear();
      return;
    }
    if (!cut_ || carry_.size() < kPieceBytes) return;
    size_t p = cut_point(carry_, carry_.size() / 2);
    if (p == 0) p = cut_point(carry_, 0);
    if (p == 0) return;  // no place to cut yet: the piece grows
    add(b, carry_.data(), p, 0);
    carry_.erase(0, p);
  }
  void take_lines(Batch& b, bool eof) {
    size_t start = 0;
    for (;;) {
      size_t nl = carry_.find('\n', start);
      if (nl == std::string::npos && !(eof && start < carry_.size())) break;
      size_t end = nl == std::string::npos ? carry_.size() : nl;
      line_++;
      size_t e = end;
      if (e > start && carry_[e - 1] == '\r') e--;
      bool blank = carry_.find_first_not_of(" \t", start) >= e;
      if (!blank) add(b, carry_.data() + start, e - start, line_);
      start = nl == std::string::npos ? carry_.size() : nl + 1;
    }
    carry_.erase(0, start);
  }

  const std::vector<Source>& sources_;
  const std::string* kjv_;
  bool cut_;
  size_t src_ = 0;
  std::unique_ptr<ByteReader> reader_;
  std::string carry_, chunk_;
  int64_t line_ = 0, done_bytes_ = 0;
  bool first_ = true;
};

bool valid_utf8(const char* s, size_t n) {
  const auto* u = reinterpret_cast<const unsigned char*>(s);
  uint32_t cp;
  for (size_t i = 0, len; i < n; i += len)
    if (!(len = utf8_at(u, i, n, cp))) return false;
  return true;
}

// What a thread made of a piece: its tokens in the thread's buffer, or why it is a bad line.
struct Encoded {
  int thread;
  size_t begin, count;
  bool bad_utf8;
  std::string error;  // a .jsonl line that is not a document: "file:line: ..."
};

// The text of a .jsonl line's field; an error message when there is none.
bool json_text(std::string_view line, const std::string& field, std::string& text, std::string& error) {
  json j = json::parse(line, nullptr, false);
  if (j.is_discarded()) { error = "not JSON (expected one object a line)"; return false; }
  if (!j.is_object()) { error = fmt::format("a JSON {}, expected an object with a \"{}\" string", j.type_name(), field); return false; }
  auto it = j.find(field);
  if (it == j.end()) { error = fmt::format("no \"{}\" field (--field names the field that holds the text)", field); return false; }
  if (!it->is_string()) { error = fmt::format("\"{}\" is a {}, expected a string", field, it->type_name()); return false; }
  text = it->get<std::string>();
  return true;
}

// What a .jsonl line holds to tokenize: the --field string, or an instruction record's pieces;
// false, with `error` saying why, if it holds none.
bool line_pieces(std::string_view line, const CorpusOptions& opt, const ChatTemplate& tmpl, std::vector<RecordPiece>& pieces,
                 std::string& error) {
  if (opt.instruct) return tmpl.render_record(line, pieces, error);
  std::string text;
  if (!json_text(line, opt.field, text, error)) return false;
  pieces.assign(1, {std::move(text), true});
  return true;
}

// ---- the split and the shards ----------------------------------------------------------------

uint64_t mix64(uint64_t x) {  // splitmix64's finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
uint64_t doc_hash(uint64_t seed, int64_t doc) { return mix64(mix64(seed) ^ uint64_t(doc)); }

struct ShardEntry { std::string file, split; int64_t tokens, bytes; std::string checksum; };
json to_json(const ShardEntry& e) {
  return {{"file", e.file}, {"split", e.split}, {"tokens", e.tokens}, {"bytes", e.bytes}, {"checksum", e.checksum}};
}

// The shards of one split, written one after the other. A shard already in the directory that
// verified at the start (`reusable`) is only summed, not written, and must come out the same.
class SplitWriter {
 public:
  SplitWriter(std::string dir, std::string split, int64_t shard_tokens, bool wide,
              const std::map<std::string, ShardEntry>& reusable, std::function<void(const ShardEntry&, bool)> done)
      : dir_(std::move(dir)), split_(std::move(split)), shard_tokens_(shard_tokens), wide_(wide),
        reusable_(reusable), done_(std::move(done)) {}
  // n tokens and, for instruction records, their mask bytes
  void append(const uint32_t* t, const uint8_t* mask, size_t n) {
    while (n > 0) {
      if (!w_) open();
      size_t k = std::min<size_t>(n, size_t(shard_tokens_ - w_->tokens()));
      w_->append(t, k);
      if (mask) mask_.insert(mask_.end(), mask, mask + k);
      t += k;
      if (mask) mask += k;
      n -= k;
      total_ += int64_t(k);
      if (w_->tokens() == shard_tokens_) close();
    }
  }
  void close() {
    if (!w_) return;
    if (!mask_.empty()) write_mask(mask_path(dir_ + "/" + name_), mask_);  // before its shard: never a shard without it
    mask_.clear();
    ShardWriter::Done d = w_->finish();
    w_.reset();
    ShardEntry e{name_, split_, d.tokens, d.bytes, fmt::format("{:016x}", d.checksum)};
    auto it = reusable_.find(name_);
    if (it != reusable_.end() && (it->second.checksum != e.checksum || it->second.tokens != e.tokens))
      user_error("{}/{}: differs from what this prepare makes of the same inputs (changed since?): remove the "
                 "directory and prepare again", dir_, name_);
    done_(e, it != reusable_.end());
  }
  int64_t total() const { return total_; }
  bool empty() const { return total_ == 0; }

 private:
  void open() {
    name_ = fmt::format("{}_{:03d}.bin", split_, index_++);
    w_ = std::make_unique<ShardWriter>(reusable_.count(name_) ? ShardWriter::dry(wide_)
                                                               : ShardWriter(dir_ + "/" + name_, wide_));
  }
  std::string dir_, split_, name_;
  int64_t shard_tokens_;
  bool wide_;
  const std::map<std::string, ShardEntry>& reusable_;
  std::function<void(const ShardEntry&, bool)> done_;
  std::unique_ptr<ShardWriter> w_;
  std::vector<uint8_t> mask_;
  int index_ = 0;
  int64_t total_ = 0;
};

// The entries of an earlier manifest made by the same prepare (same `head`) whose files verify.
std::map<std::string, ShardEntry> reusable_shards(const std::string& dir, const json& head) {
  std::map<std::string, ShardEntry> out;
  const std::string path = dir + "/" + kManifest;
  if (!fs::exists(path)) return out;
  json old = json::parse(read_whole_file(path), nullptr, false);
  if (old.is_discarded() || !old.is_object()) return out;
  for (auto& [k, v] : head.items())
    if (!old.contains(k) || old[k] != v) return out;
  if (!old.contains("shards") || !old["shards"].is_array()) return out;
  for (auto& s : old["shards"]) {
    ShardEntry e;
    try {  // a damaged entry is not reused: its shard is written again
      e = {s.at("file").get<std::string>(), s.at("split").get<std::string>(), s.at("tokens").get<int64_t>(),
           s.at("bytes").get<int64_t>(), s.at("checksum").get<std::string>()};
    } catch (const json::exception&) {
      continue;
    }
    std::error_code ec;
    const std::string f = dir + "/" + e.file;
    if (e.file.empty() || int64_t(fs::file_size(f, ec)) != e.bytes || ec) continue;
    try {
      TokenShard shard(f, 0);  // checked against the (old) manifest: tokens and checksum
      out[e.file] = e;
    } catch (const UserError&) {
    }
  }
  return out;
}

// A progress line on stderr: a bar redrawn in place on a terminal, else a line every 30 s.
class Progress {
 public:
  Progress(bool on, int64_t total) : on_(on), tty_(::isatty(2)), total_(total) {}
  void update(int64_t consumed, int64_t text_bytes, int64_t tokens, bool last = false) {
    if (!on_) return;
    const double t = seconds();
    if (!last && t - shown_ < (tty_ ? 0.5 : 30.0)) return;
    shown_ = t;
    const double mbs = text_bytes / 1e6 / std::max(t, 1e-9), frac = total_ > 0 ? double(consumed) / total_ : 1;
    const double eta = frac > 0 ? t / frac - t : 0;
    std::string line = fmt::format("prepare: {:5.1f}% of {:.1f} MB, {:.1f} MB/s, {} tokens, {:.0f} s, ETA {:.0f} s",
                                   100 * frac, total_ / 1e6, mbs, tokens, t, last ? 0.0 : eta);
    if (tty_) std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), last ? "\n" : "");
    else std::fprintf(stderr, "%s\n", line.c_str());
  }

 private:
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
  bool on_, tty_;
  int64_t total_;
  double shown_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// The tokenizer; a trained SentencePiece reads the first 256 MB of text of the input first.
std::unique_ptr<Tokenizer> make_tokenizer(const std::vector<Source>& sources, const std::string& kjv,
                                          const std::string& field, const TokenizerOptions& topt) {
  if (!topt.pretrained.empty()) return load_pretrained_tokenizer(topt.pretrained, topt.tiktoken_pattern);
  switch (topt.kind) {
    case TokenizerKind::byte: return make_byte_tokenizer();
    case TokenizerKind::gpt2: return make_gpt2_tokenizer(topt.gpt2_dir);
    case TokenizerKind::sentencepiece: {
      std::vector<std::string> docs;
      PieceReader r(sources, &kjv, true);
      Batch b;
      size_t bytes = 0;
      while (bytes < (size_t(256) << 20) && r.next(b, size_t(8) << 20))
        for (auto& p : b.pieces) {
          std::string text(b.text, p.begin, p.end - p.begin), error;
          if (p.line && !json_text(text, field, text, error)) continue;  // reported when tokenizing
          if (p.first || docs.empty()) docs.emplace_back();
          docs.back() += text;
          bytes += text.size();
        }
      return train_sentencepiece(docs, topt.vocab_size, topt.model_type);
    }
    case TokenizerKind::hf_bpe:
    case TokenizerKind::tiktoken:
      break;
  }
  user_error("prepare: a {} tokenizer is pretrained: name its file with --tokenizer PATH", to_string(topt.kind));
}

// A .jsonl line prepare cannot read: "FILE:LINE: what" (and what --skip-bad-lines does).
static std::string line_error(const Source& s, int64_t line, const std::string& error) {
  return fmt::format("{}:{}: {} (--skip-bad-lines skips such lines)", s.path, line, error);
}

// --val-docs: counts the documents (the .jsonl lines that hold one); the val_docs smallest
// (hash, index) pairs are validation: returns the largest of them.
std::pair<uint64_t, int64_t> val_docs_bound(const std::vector<Source>& sources, const std::string& kjv,
                                            const CorpusOptions& opt, const ChatTemplate& tmpl, int threads) {
  PieceReader r(sources, &kjv, false);
  Batch b;
  int64_t docs = 0, bad = 0;
  std::vector<std::string> errors;  // a bad line is the error it will be when tokenizing, not a wrong count
  while (r.next(b, size_t(8 << 20) * size_t(threads))) {
    errors.assign(b.pieces.size(), {});
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64) reduction(+ : docs, bad)
    for (int64_t i = 0; i < int64_t(b.pieces.size()); i++) {
      const Piece& p = b.pieces[size_t(i)];
      std::vector<RecordPiece> pieces;
      std::string error;
      const bool ok = !p.line || line_pieces(std::string_view(b.text).substr(p.begin, p.end - p.begin), opt, tmpl, pieces, error);
      if (!ok) errors[size_t(i)] = line_error(sources[size_t(p.source)], p.line, error);
      docs += p.first && ok;
      bad += !ok;
    }
    if (!opt.skip_bad_lines)
      for (const std::string& e : errors)
        if (!e.empty()) user_error("{}", e);
  }
  if (docs <= opt.val_docs)
    user_error("--val-docs {}: the input holds {} documents{}, expected more than that", opt.val_docs, docs,
               bad ? fmt::format(" ({} bad .jsonl lines skipped)", bad) : "");
  std::priority_queue<std::pair<uint64_t, int64_t>> largest;  // the val_docs smallest so far
  for (int64_t d = 0; d < docs; d++) {
    largest.push({doc_hash(opt.seed, d), d});
    if (int64_t(largest.size()) > opt.val_docs) largest.pop();
  }
  return largest.top();
}

void write_json(const std::string& path, const json& j) {
  std::string text = j.dump(1) + "\n";
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace

void too_few_for_chunk_split(int64_t tokens, int val_every) {
  const int64_t most = (tokens - 1) / kSplitChunk + 1;  // the largest N whose first validation chunk starts inside
  user_error("prepare: the input has {} tokens, too few for a validation split by --val-every {} (the first validation "
             "chunk of {} tokens starts at token {}): {}", tokens, val_every, kSplitChunk, (val_every - 1) * kSplitChunk,
             most >= 2 ? fmt::format("give --val-every {} or less", most)
                       : fmt::format("a split by chunks needs more than {} tokens", kSplitChunk));
}

PrepareStats prepare_corpus(const std::vector<std::string>& inputs, const std::string& out_dir,
                            const CorpusOptions& opt_in, const TokenizerOptions& topt) {
  CorpusOptions opt = opt_in;
  const int num_set = (opt.val_every != 0) + (opt.val_fraction != 0) + (opt.val_docs != 0);
  if (num_set > 1) user_error("prepare: --val-every, --val-fraction and --val-docs exclude each other: give one");
  if (opt.val_every != 0 && opt.val_every < 2) user_error("--val-every: expected an integer >= 2, got {}", opt.val_every);
  if (opt.val_fraction < 0 || opt.val_fraction >= 1) user_error("--val-fraction: expected a number in (0, 1), got {}", opt.val_fraction);
  if (opt.val_docs < 0) user_error("--val-docs: expected a positive count, got {}", opt.val_docs);
  // a window never crosses shards: each loses its tail, and one shorter than seq_len + 1 holds none
  // (--shard-tokens 2 wrote 10,000 files for 20 KB, in minutes, for no window at all)
  if (opt.shard_tokens < 1024 || opt.shard_tokens >= (int64_t(1) << 31))
    user_error("--shard-tokens: expected 1024 to {} (a window does not cross shards), got {}", (int64_t(1) << 31) - 1,
               opt.shard_tokens);
  const int threads = opt.threads > 0 ? opt.threads : omp_get_num_procs();

  std::vector<Source> sources = expand_inputs(inputs);
  if (opt.instruct) {
    if (inputs.empty()) user_error("prepare --format jsonl: expected one or more .jsonl files of instruction records");
    for (auto& s : sources)
      if (s.format != Format::jsonl) user_error("{}: --format jsonl reads .jsonl files (one instruction record a line)", s.path);
    if (topt.pretrained.empty() && topt.kind == TokenizerKind::sentencepiece)
      user_error("prepare --format jsonl: --train-tokenizer trains on text: run it in a text prepare, then give "
                 "that directory (its tokenizer.model) as --tokenizer");
  }
  std::string kjv;
  if (inputs.empty()) {
    kjv = kjv_text();
    sources.push_back({"", Format::text, int64_t(kjv.size())});
  }
  if (num_set == 0) {
    if (sources.size() == 1 && sources[0].format == Format::text) opt.val_every = 20;
    else opt.val_fraction = 0.01;
  }
  std::unique_ptr<Tokenizer> tok = make_tokenizer(sources, kjv, opt.field, topt);
  const bool wide = tok->vocab_size() > 65536;
  const uint32_t eot = tok->eot();
  const int64_t bos = tok->bos_prefix();  // each document and plain record starts with it, as transformers encodes
  const bool text_bos = !opt.instruct && bos >= 0;  // text documents: BOS ... end of text
  if (!opt.chat_template.empty() && !opt.instruct) user_error("--chat-template renders instruction records: give --format jsonl");
  const ChatTemplate tmpl = opt.instruct ? ChatTemplate::of(topt.pretrained, *tok, opt.chat_template) : ChatTemplate();
  const std::pair<uint64_t, int64_t> val_below = opt.val_docs > 0 ? val_docs_bound(sources, kjv, opt, tmpl, threads)
                                                                  : std::make_pair(uint64_t(0), int64_t(-1));
  // the output directory once the inputs are known good: a refused prepare leaves nothing behind
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) user_error("{}: cannot create directory: {}", out_dir, ec.message());

  // What decides the shards: compared with an earlier manifest's to reuse its shards.
  json head;
  json src = json::array();
  for (auto& s : sources) src.push_back({{"path", s.path.empty() ? "bible-kjv" : s.path}, {"bytes", s.bytes}});
  head["tokenizer"] = {{"kind", to_string(tok->kind())}, {"vocab_size", tok->vocab_size()}, {"eot", eot},
                       {"pattern", tok->split_pattern()}};
  if (bos >= 0) head["tokenizer"]["bos_prefix"] = bos;
  if (!tok->model_type().empty()) head["tokenizer"]["model_type"] = tok->model_type();
  head["options"] = {{"split", opt.val_every ? "chunks" : "documents"}, {"val_every", opt.val_every},
                     {"val_fraction", opt.val_fraction}, {"val_docs", opt.val_docs}, {"seed", opt.seed},
                     {"shard_tokens", opt.shard_tokens}, {"field", opt.field}, {"skip_bad_lines", opt.skip_bad_lines}};
  if (opt.instruct) head["options"]["chat_template"] = tmpl.name();
  head["sources"] = src;
  const std::map<std::string, ShardEntry> reusable = reusable_shards(out_dir, head);
  // an unfinished manifest while this runs: readers refuse the directory, a rerun reuses shards
  std::vector<ShardEntry> written;
  auto write_manifest = [&](bool complete) {
    json j = {{"format", "frugal token shards"}, {"version", 1}, {"complete", complete}};
    j.update(head);
    json shards = json::array();
    std::set<std::string> listed;
    for (auto& e : written) { shards.push_back(to_json(e)); listed.insert(e.file); }
    if (!complete)
      for (auto& [f, e] : reusable) if (!listed.count(f)) shards.push_back(to_json(e));
    j["shards"] = shards;
    write_json(out_dir + "/" + kManifest, j);
  };
  write_manifest(false);
  save_tokenizer(out_dir, *tok);
  // the template the records were rendered with, for sample --chat and export: a given one; the
  // tokenizer's own came with it (save_files), and no other stays from an earlier prepare
  const std::string template_file = out_dir + "/" + kChatTemplateFile;
  if (!opt.chat_template.empty()) write_file_atomic(template_file, tmpl.source().data(), tmpl.source().size());
  else if (tok->kind() != TokenizerKind::hf_bpe) fs::remove(template_file, ec);

  auto is_val_doc = [&](int64_t d) {
    if (opt.val_docs > 0) return std::make_pair(doc_hash(opt.seed, d), d) <= val_below;
    return double(doc_hash(opt.seed, d) >> 11) * 0x1p-53 < opt.val_fraction;
  };

  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(std::move(tok));
  for (int t = 1; t < threads; t++) toks.push_back(load_tokenizer(out_dir));

  PrepareStats st;
  if (opt.instruct) st.chat_template = tmpl.note();
  if (!opt.instruct || tmpl.plain()) st.bos = bos;  // a chat template writes its own
  auto done = [&](const ShardEntry& e, bool reused) {
    written.push_back(e);
    st.files.push_back(out_dir + "/" + e.file);
    st.reused_shards += reused;
    write_manifest(false);
  };
  SplitWriter train(out_dir, "train", opt.shard_tokens, wide, reusable, done);
  SplitWriter val(out_dir, "val", opt.shard_tokens, wide, reusable, done);

  int64_t total_bytes = 0, text_bytes = 0, chunk_pos = 0;
  for (auto& s : sources) total_bytes += s.bytes;
  Progress progress(opt.progress, total_bytes);
  PieceReader reader(sources, &kjv, toks[0]->cuts_at_lines());
  Batch batch;
  std::vector<Encoded> enc;
  std::vector<std::vector<uint32_t>> out(static_cast<size_t>(threads));
  std::vector<std::vector<uint8_t>> masks(static_cast<size_t>(threads));  // instruction records: out's mask bytes
  bool in_val = false;
  int64_t doc = -1, bad_utf8_doc = -1;  // the document of the piece, counted from 0
  const uint32_t eot_token[1] = {eot}, bos_token[1] = {uint32_t(bos)};
  // one piece's tokens (after an end of text when it starts a document) to its split
  auto route = [&](const uint32_t* t, const uint8_t* mask, size_t n) {
    if (!opt.val_every) return (in_val ? val : train).append(t, mask, n);
    while (n > 0) {  // 8192-token chunks of the whole stream, every val_every-th to val
      size_t k = std::min<size_t>(n, size_t(kSplitChunk - chunk_pos % kSplitChunk));
      ((chunk_pos / kSplitChunk) % opt.val_every == opt.val_every - 1 ? val : train).append(t, mask, k);
      chunk_pos += int64_t(k);
      t += k;
      if (mask) mask += k;
      n -= k;
    }
  };
  while (reader.next(batch, size_t(8 << 20) * size_t(threads))) {
    enc.assign(batch.pieces.size(), Encoded{});
    for (auto& o : out) o.clear();
    for (auto& m : masks) m.clear();
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t i = 0; i < int64_t(batch.pieces.size()); i++) {
      const int t = omp_get_thread_num();
      const Piece& p = batch.pieces[size_t(i)];
      Encoded& e = enc[size_t(i)];
      e.thread = t;
      e.begin = out[size_t(t)].size();
      std::string_view text(batch.text.data() + p.begin, p.end - p.begin);
      std::vector<RecordPiece> line;  // a .jsonl line's text, or its record's pieces
      if (p.line) {
        std::string error;
        if (!line_pieces(text, opt, tmpl, line, error)) {
          e.error = line_error(sources[size_t(p.source)], p.line, error);
          continue;
        }
      }
      std::vector<uint32_t>& o = out[size_t(t)];
      if (!p.line) {
        e.bad_utf8 = !valid_utf8(text.data(), text.size());
        if (p.first) toks[size_t(t)]->encode(text, o);
        else toks[size_t(t)]->encode_rest(text, o);  // the rest of a .txt document cut at a line
      }
      if (opt.instruct && !tmpl.plain()) {  // the text whole; a piece's tokens counted as TRL counts them
        std::string whole;
        for (const RecordPiece& r : line) whole += r.text;
        e.bad_utf8 |= !valid_utf8(whole.data(), whole.size());
        std::vector<uint8_t>& m = masks[size_t(t)];  // as long as o: e.begin
        toks[size_t(t)]->encode(whole, o);
        const size_t n = o.size() - e.begin;
        m.resize(o.size(), 0);
        std::vector<uint32_t> upto;
        size_t at = 0, before = 0;  // a piece's tokens: from the count of the text before it to the count up to its end
        for (const RecordPiece& r : line) {
          at += r.text.size();
          size_t count = n;
          if (at < whole.size()) {
            upto.clear();
            toks[size_t(t)]->encode(std::string_view(whole).substr(0, at), upto);
            count = std::min(upto.size(), n);
          }
          for (size_t k = before; k < count; k++) m[e.begin + k] = uint8_t(r.train);
          before = std::max(before, count);
        }
        // a record ends in end of text, not trained on: the template's end of turn ends the reply
        o.push_back(eot);
        m.push_back(0);
      } else {
        if (opt.instruct && bos >= 0) {  // as TRL encodes a prompt: with the tokenizer's BOS, not trained on
          o.push_back(uint32_t(bos));
          masks[size_t(t)].push_back(0);
        }
        for (const RecordPiece& r : line) {
          e.bad_utf8 |= !valid_utf8(r.text.data(), r.text.size());
          toks[size_t(t)]->encode(r.text, o);
          if (opt.instruct) masks[size_t(t)].resize(o.size(), uint8_t(r.train));
        }
        if (opt.instruct) {  // a record ends in end of text, trained on: the model learns to stop
          o.push_back(eot);
          masks[size_t(t)].push_back(1);
        }
      }
      e.count = o.size() - e.begin;
    }
    for (size_t i = 0; i < batch.pieces.size(); i++) {
      const Piece& p = batch.pieces[i];
      const Encoded& e = enc[i];
      if (!e.error.empty()) {
        if (!opt.skip_bad_lines) user_error("{}", e.error);
        st.skipped_lines++;
        continue;
      }
      text_bytes += int64_t(p.end - p.begin);
      if (p.first) {
        // text: an end of text between documents; with a BOS, each document is BOS ... end of text
        if (text_bos && doc >= 0) route(eot_token, nullptr, 1);
        doc++;
        if (!opt.val_every) in_val = is_val_doc(doc);
        if (text_bos) route(bos_token, nullptr, 1);
        else if (!opt.instruct && (opt.val_every ? chunk_pos > 0 : !(in_val ? val : train).empty())) route(eot_token, nullptr, 1);
        (in_val ? st.val_docs : st.train_docs)++;
      }
      if (e.bad_utf8 && bad_utf8_doc != doc) {
        st.invalid_utf8_docs++;
        bad_utf8_doc = doc;
      }
      route(out[size_t(e.thread)].data() + e.begin, opt.instruct ? masks[size_t(e.thread)].data() + e.begin : nullptr, e.count);
    }
    progress.update(reader.consumed(), text_bytes, train.total() + val.total());
  }
  if (text_bos && doc >= 0) route(eot_token, nullptr, 1);  // the last document's end
  train.close();
  val.close();
  progress.update(total_bytes, text_bytes, train.total() + val.total(), true);
  st.train_tokens = train.total();
  st.val_tokens = val.total();
  const char* docs = opt.instruct ? "records" : "documents";
  if (st.train_tokens + st.val_tokens == 0)
    user_error("prepare: the input holds no {} ({} file(s), {} bytes, {} lines skipped)", opt.instruct ? "records" : "text",
               sources.size(), total_bytes, st.skipped_lines);
  if (st.val_tokens == 0) {
    if (opt.val_every) too_few_for_chunk_split(st.train_tokens, opt.val_every);
    user_error("prepare: none of the {} {} went to validation ({}): give --val-docs N, a larger "
               "--val-fraction, or --val-every N to split by 8192-token chunks", st.train_docs, docs,
               opt.val_docs ? fmt::format("--val-docs {}", opt.val_docs) : fmt::format("--val-fraction {}", opt.val_fraction));
  }
  if (st.train_tokens == 0) user_error("prepare: every one of the {} went to validation: lower --val-fraction or --val-docs", docs);
  // shards of an earlier prepare that this one did not make, a crash's temporaries
  std::set<std::string> keep;
  for (auto& e : written) {
    keep.insert(e.file);
    if (opt.instruct) keep.insert(fs::path(mask_path(e.file)).filename().string());
  }
  for (auto& e : fs::directory_iterator(out_dir, ec)) {
    const std::string f = e.path().filename().string();
    if ((f.starts_with("train_") || f.starts_with("val_")) &&
        (f.ends_with(".tmp") || ((f.ends_with(".bin") || f.ends_with(".mask")) && !keep.count(f))))
      fs::remove(e.path(), ec);
  }
  write_manifest(true);
  fsync_dir(out_dir);
  return st;
}

}  // namespace frugal
