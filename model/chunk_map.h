#pragma once
// model/: ChunkMap: which chunk holds each MiB of a file. Chunk i covers bytes [i MiB, (i+1) MiB);
// only chunks that hold data are listed (sorted by index), so a hole costs nothing: a 16 TiB
// file made by truncate is an empty map. The all-zero digest means "hole" and is never stored.
// A value type; not thread-safe (its owner guards it).

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <vector>

#include "crypto/crypto.h"

namespace foreverfs::model {

// The largest file size, as ext4 with 4 KiB blocks: 16 TiB. Above it, EFBIG.
inline constexpr std::uint64_t kMaxFileSize = std::uint64_t{1} << 44;
// The most chunks holding data one file may have (256 GiB of data at 1 MiB per chunk), so that
// any inode record, encoded, fits in one frame (40 bytes per chunk: 10 MiB of 16).
inline constexpr std::uint32_t kMaxDataChunks = 256 * 1024;

class ChunkMap {
 public:
  struct Entry {
    std::uint64_t index = 0;
    crypto::Digest id{};
    bool operator==(const Entry&) const = default;
  };

  ChunkMap() = default;
  // From a dense list: element i is chunk i (all-zero digests are holes).
  ChunkMap(std::initializer_list<crypto::Digest> dense) { Assign(dense.begin(), dense.end()); }
  template <typename It>
  void Assign(It first, It last) {
    entries_.clear();
    for (std::uint64_t i = 0; first != last; ++first, ++i) Set(i, *first);
  }
  // Chunks 0 .. n-1 all `id`.
  void assign(std::size_t n, const crypto::Digest& id) {
    entries_.clear();
    for (std::uint64_t i = 0; i < n; ++i) Set(i, id);
  }
  // The ids of the chunks holding data, by index (an id may appear more than once).
  std::vector<crypto::Digest> Ids() const {
    std::vector<crypto::Digest> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.push_back(e.id);
    return out;
  }

  // The chunk at `index`, or the all-zero digest (a hole).
  const crypto::Digest& Get(std::uint64_t index) const {
    auto it = Find(index);
    return it != entries_.end() && it->index == index ? it->id : Hole();
  }
  const crypto::Digest& operator[](std::uint64_t index) const { return Get(index); }
  bool IsHole(std::uint64_t index) const { return Get(index) == Hole(); }
  // Sets chunk `index`; the all-zero digest makes it a hole. Appending past the last entry
  // (sequential writes) is O(1).
  void Set(std::uint64_t index, const crypto::Digest& id) {
    const bool hole = id == Hole();
    if (entries_.empty() || entries_.back().index < index) {
      if (!hole) entries_.push_back({index, id});
      return;
    }
    auto it = Find(index);
    if (it != entries_.end() && it->index == index) {
      if (hole) {
        entries_.erase(it);
      } else {
        it->id = id;
      }
    } else if (!hole) {
      entries_.insert(it, {index, id});
    }
  }
  // Drops every chunk at or past `count` (the file was cut to `count` chunks).
  void KeepFirst(std::uint64_t count) { entries_.erase(Find(count), entries_.end()); }
  // Makes chunks [first, last) holes.
  void Punch(std::uint64_t first, std::uint64_t last) {
    if (first >= last) return;
    entries_.erase(Find(first), Find(last));
  }
  // The first chunk holding data at or after `index`.
  std::optional<std::uint64_t> NextData(std::uint64_t index) const {
    auto it = Find(index);
    if (it == entries_.end()) return std::nullopt;
    return it->index;
  }
  // Chunks holding data.
  std::size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  // The last chunk holding data, if any. (Not "one past it": a peer may send index 2^64-1.)
  std::optional<std::uint64_t> LastIndex() const {
    if (entries_.empty()) return std::nullopt;
    return entries_.back().index;
  }
  std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::vector<Entry>::const_iterator end() const { return entries_.end(); }
  void clear() { entries_.clear(); }
  void reserve(std::size_t n) { entries_.reserve(n); }
  // For decoders: appends an entry that must come after every entry so far and not be a hole;
  // false (and nothing appended) otherwise.
  bool Append(std::uint64_t index, const crypto::Digest& id) {
    if (id == Hole() || (!entries_.empty() && entries_.back().index >= index)) return false;
    entries_.push_back({index, id});
    return true;
  }
  bool operator==(const ChunkMap&) const = default;

  static const crypto::Digest& Hole() {
    static const crypto::Digest kHole{};
    return kHole;
  }

 private:
  // The first entry at or after `index` (const or not, as the map).
  template <typename Self>
  static auto FindIn(Self& self, std::uint64_t index) {
    return std::lower_bound(self.entries_.begin(), self.entries_.end(), index,
                            [](const Entry& e, std::uint64_t i) { return e.index < i; });
  }
  std::vector<Entry>::const_iterator Find(std::uint64_t index) const {
    return FindIn(*this, index);
  }
  std::vector<Entry>::iterator Find(std::uint64_t index) { return FindIn(*this, index); }

  std::vector<Entry> entries_;
};

}  // namespace foreverfs::model
