#pragma once
// The namespace merge: the rules by which every node turns the records it receives (its own
// and its peers', in any order) into the same namespace. doc/namespace.md states them as
// tables; this is their one implementation.
//
// Merge is a function of the records already stored and the records arriving: it reads the
// stored ones through a RecordView and returns, in `won`, every record it writes (the
// incoming ones that won, then the ones its rules derived: conflict copies, names given back,
// revived directories, repaired moves). It keeps no state and knows nothing of SQLite:
// NamespaceDb runs it inside one transaction over its tables, the unit tests over maps.
//
// Not thread-safe by itself: the caller serializes calls over one view (NamespaceDb::mu_).

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "model/records.h"

namespace foreverfs::server {

using InodeId = std::uint64_t;
using model::DentryRecord;
using model::InodeKind;
using model::InodeRecord;
using model::Version;
inline constexpr InodeId kRootId = 1;

struct ChangeSet {
  std::vector<InodeRecord> inodes;
  std::vector<DentryRecord> dentries;
  bool empty() const { return inodes.empty() && dentries.empty(); }
};

// The stored records as the merge sees them. A Put is visible to every later read through the
// same view (the merge reads what it wrote a step before).
class RecordView {
 public:
  virtual ~RecordView() = default;
  // The inode record, live or a tombstone.
  virtual std::optional<InodeRecord> Inode(InodeId id) = 0;
  // The entry record under (parent, name), live or a tombstone.
  virtual std::optional<DentryRecord> Entry(InodeId parent, std::string_view name) = 0;
  // Every entry record naming `child`, live or tombstone, in any order.
  virtual std::vector<DentryRecord> NamesOf(InodeId child) = 0;
  // The greatest version of a live entry in directory `dir` whose child is a live inode.
  virtual std::optional<Version> NewestLiveEntryIn(InodeId dir) = 0;
  // Stores a record over the one with the same key. A failure (a full disk) ends the merge,
  // and the caller discards everything it wrote.
  virtual Status Put(const InodeRecord& r) = 0;
  virtual Status Put(const DentryRecord& d) = 0;
};

// Applies `changes` (inodes first, then entries, each in order) and then the repairs the batch
// may need (doc/namespace.md, table 3). Appends what it wrote to `won`.
Status Merge(RecordView& view, const ChangeSet& changes, ChangeSet& won);

// The name a losing record keeps beside the winner: "NAME.conflict-<node>-<UTC time>-<tag>",
// the node and time of the losing write and a tag so that two losers never share a name;
// NAME is cut so that the whole fits in model::kMaxNameSize.
std::string ConflictName(std::string_view name, const model::ClockEntry& v, std::uint64_t tag);

}  // namespace foreverfs::server
