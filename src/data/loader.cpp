// The batch loader: seeded shuffle over shards and windows; ranks read disjoint windows; loss
// masks turn untrained targets into -1.
#include <algorithm>
#include <deque>
#include <filesystem>
#include <map>
#include <numeric>

#include "data/data.h"

namespace frugal {

DataLoader::DataLoader(const std::vector<std::string>& files, int64_t vocab_size, int B, int T,
                       uint64_t seed, bool shuffle, int rank, int world)
    : B_(B), T_(T), rank_(rank), world_(world), seed_(seed), shuffle_(shuffle) {
  for (auto& f : files) {
    shards_.emplace_back(f, vocab_size);
    std::string m = mask_path(f);
    masks_.push_back(std::filesystem::exists(m) ? read_mask(m, shards_.back().size()) : std::vector<uint8_t>{});
    total_windows_ += windows_in(int64_t(shards_.size()) - 1);
  }
  if (total_windows_ < int64_t(B) * world)
    user_error("{}: {} windows of {}+1 tokens in {} file(s), fewer than one global batch of {}",
               files.front(), total_windows_, T, files.size(), int64_t(B) * world);
  reset();
}

void DataLoader::set_documents(DocumentCut cut) {
  FRUGAL_CHECK(cut_.sep < 0, "set_documents twice");
  cut_ = cut;
  const int32_t sep = cut.sep;
  if (sep < 0 || !records()) return;
  total_windows_ = 0;
  const int64_t cap = T_ + 1;
  for (const TokenShard& s : shards_) {  // records end after sep; packed best fit decreasing
    std::vector<std::pair<int64_t, int64_t>> records;  // (start, tokens), cut to the window
    for (int64_t r = 0; r < s.size();) {
      int64_t e = r;
      while (e < s.size() && s[e] != uint32_t(sep)) e++;
      e = std::min(e + 1, s.size());  // this record: [r, e)
      records.emplace_back(r, std::min(e - r, cap));
      truncated_ += e - r > cap;
      r = e;
    }
    // TRL's best fit decreasing (pack_dataset, strategy "bfd"): the longest record first (ties in
    // file order), each into the window with the least room that holds it (the first such window
    // where several have that room), else into a new window
    std::vector<int64_t> order(records.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return records[size_t(a)].second > records[size_t(b)].second; });
    std::vector<std::vector<int64_t>> windows;
    std::map<int64_t, std::deque<int64_t>> by_room;  // room left -> windows with it, oldest first
    for (int64_t i : order) {
      const int64_t len = records[size_t(i)].second;
      int64_t w, room = cap;
      if (auto it = by_room.lower_bound(len); it != by_room.end()) {
        room = it->first;
        w = it->second.front();
        it->second.pop_front();
        if (it->second.empty()) by_room.erase(it);
      } else {
        w = int64_t(windows.size());
        windows.emplace_back();
      }
      windows[size_t(w)].push_back(i);
      if (room - len > 0) by_room[room - len].push_back(w);
    }
    RecordWindows& rw = record_windows_.emplace_back();
    for (const auto& w : windows) {
      rw.first.push_back(int64_t(rw.records.size()));
      for (int64_t i : w) rw.records.push_back(records[size_t(i)]);
    }
    rw.first.push_back(int64_t(rw.records.size()));
    total_windows_ += int64_t(windows.size());
  }
  if (total_windows_ < int64_t(B_) * world_)
    user_error("{}: {} windows of whole records up to {}+1 tokens in {} file(s), fewer than one global batch of {}",
               shards_.front().path(), total_windows_, T_, shards_.size(), int64_t(B_) * world_);
  reset();
}

int64_t DataLoader::windows_in(int64_t shard) const {
  if (!record_windows_.empty()) return int64_t(record_windows_[size_t(shard)].first.size()) - 1;
  return std::max<int64_t>(0, (shards_[size_t(shard)].size() - 1) / T_);
}

static void shuffle_in_place(std::vector<int64_t>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[rng.below(i)]);
}

void DataLoader::reset() {
  epoch_ = 0;
  start_epoch();
}

void DataLoader::seek(const Position& p, const std::string& where) {
  if (p.epoch < 0 || p.shard < 0 || p.shard >= int64_t(shards_.size()) || p.window < 0)
    user_error("{}: data position (epoch {}, shard {}, window {}) is out of range for {} shard(s)", where,
               p.epoch, p.shard, p.window, shards_.size());
  epoch_ = p.epoch;
  start_epoch();
  shard_pos_ = p.shard;
  start_shard();
  if (p.window > int64_t(window_order_.size()))
    user_error("{}: data position window {} is beyond the {} windows of shard {}", where, p.window,
               window_order_.size(), p.shard);
  window_pos_ = p.window;
}

void DataLoader::start_epoch() {
  shard_order_.resize(shards_.size());
  std::iota(shard_order_.begin(), shard_order_.end(), 0);
  if (shuffle_) {
    Rng rng(seed_ * 0x9E3779B97F4A7C15ULL + uint64_t(epoch_));
    shuffle_in_place(shard_order_, rng);
  }
  shard_pos_ = 0;
  start_shard();
}

void DataLoader::start_shard() {
  window_order_.resize(size_t(windows_in(shard_order_[shard_pos_])));
  std::iota(window_order_.begin(), window_order_.end(), 0);
  if (shuffle_) {
    Rng rng(seed_ * 0xD1B54A32D192ED03ULL + uint64_t(epoch_) * 1000003 + uint64_t(shard_pos_));
    shuffle_in_place(window_order_, rng);
  }
  window_pos_ = 0;
}

int64_t DataLoader::take_window() {
  while (window_pos_ >= int64_t(window_order_.size())) {
    if (++shard_pos_ >= int64_t(shards_.size())) {
      epoch_++;
      start_epoch();
    } else {
      start_shard();
    }
  }
  return window_order_[window_pos_++];
}

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  // The global batch is B*world consecutive windows; this rank takes windows rank*B .. +B.
  std::vector<int64_t> at(size_t(T_) + 1);
  for (int r = 0; r < world_; r++) {
    for (int64_t b = 0; b < B_; b++) {
      const int64_t w = take_window();
      if (r != rank_) continue;
      const int64_t shard = shard_order_[shard_pos_];
      const TokenShard& s = shards_[size_t(shard)];
      const std::vector<uint8_t>& mask = masks_[size_t(shard)];
      // where the window's tokens are in the shard: T+1 from w T, or its records one after
      // another (then padding)
      int64_t n = 0;
      if (record_windows_.empty()) {
        for (; n <= T_; n++) at[size_t(n)] = w * T_ + n;
      } else {
        const RecordWindows& rw = record_windows_[size_t(shard)];
        for (int64_t k = rw.first[size_t(w)]; k < rw.first[size_t(w) + 1]; k++)
          for (int64_t i = 0; i < rw.records[size_t(k)].second; i++) at[size_t(n++)] = rw.records[size_t(k)].first + i;
      }
      for (int64_t t = 0; t < T_; t++) {
        inputs[b * T_ + t] = t < n ? int32_t(s[at[size_t(t)]]) : 0;
        const bool trained = t + 1 < n && (mask.empty() || mask[size_t(at[size_t(t) + 1])]);
        targets[b * T_ + t] = trained ? int32_t(s[at[size_t(t) + 1]]) : -1;
      }
    }
  }
  if (cut_.sep >= 0 && cut_.after) mask_document_starts(inputs, targets, int64_t(B_) * T_, cut_.sep);
}

bool DataLoader::records() const {
  return std::any_of(masks_.begin(), masks_.end(), [](auto& m) { return !m.empty(); });
}

void mask_document_starts(const int32_t* inputs, int32_t* targets, int64_t n, int32_t sep) {
  for (int64_t i = 0; i < n; i++)
    if (inputs[i] == sep) targets[i] = -1;
}

}  // namespace frugal
