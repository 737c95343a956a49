#include "server/namespace_merge.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#include "crypto/crypto.h"
#include "server/content_clock.h"

namespace foreverfs::server {
namespace {

constexpr std::size_t kMaxTreeDepth = 4096;

// Whether `loser`, replaced by `winner` under last-writer-wins, holds content written
// concurrently with the winner's (neither saw the other's write): then it is kept as a copy.
// (A delete carries the clock of what it deleted: it drops only content it had seen.)
bool ConcurrentContent(const InodeRecord& loser, const InodeRecord& winner) {
  if (loser.deleted || loser.kind != InodeKind::kFile || loser.content_clock.empty()) return false;
  return !Dominates(winner.content_clock, loser.content_clock);
}

// `live` won over the tombstone `deleted` and holds content the deleting node had not seen.
bool Resurrects(const InodeRecord& live, const InodeRecord& deleted) {
  return !live.deleted && deleted.deleted && live.kind == InodeKind::kFile &&
         !live.content_clock.empty() && !Dominates(deleted.content_clock, live.content_clock);
}

// Two live entries for one name pointing at different files, the newer made without seeing the
// older (both nodes created the name): the older one keeps its file under a conflict name.
bool Clash(const DentryRecord& loser, const DentryRecord& winner) {
  return !loser.deleted && !winner.deleted && loser.child != winner.child &&
         winner.replaces < loser.version;
}

// Newest first; equal versions (a rename writes its tombstone and its new entry with one
// version) by (parent, name), so that every node picks the same one.
bool NewerName(const DentryRecord& a, const DentryRecord& b) {
  if (a.version != b.version) return a.version > b.version;
  if (a.parent != b.parent) return a.parent < b.parent;
  return a.name < b.name;
}

// One merge: the view it reads and writes and the records it wrote.
class Merger {
 public:
  Merger(RecordView& view, ChangeSet& won) : v_(view), won_(won) {}

  Status Run(const ChangeSet& changes) {
    // A version names one record: honest nodes never send two different records of one inode
    // (or one entry) with one version. A batch that does is hostile or damaged; the first of
    // them stands and the others are dropped, so that which one wins does not hang on what the
    // batch met in the store (a later one would be compared with the first on one pass and
    // with a newer record on the next, and the merge would not be idempotent).
    std::set<std::pair<InodeId, Version>> inodes_seen;
    std::size_t dropped = 0;
    std::string first_dropped;  // one named in the log, the rest counted
    for (const auto& r : changes.inodes) {
      if (!inodes_seen.emplace(r.id, r.version).second) {
        if (dropped++ == 0) first_dropped = fmt::format("inode {:016x}", r.id);
        continue;
      }
      if (auto s = PutInode(r); !s.ok()) return s;
    }
    std::set<std::tuple<InodeId, std::string_view, Version>> entries_seen;
    for (const auto& d : changes.dentries) {
      if (!entries_seen.emplace(d.parent, d.name, d.version).second) {
        if (dropped++ == 0) first_dropped = fmt::format("entry {:016x}/{}", d.parent, d.name);
        continue;
      }
      if (auto s = PutDentry(d); !s.ok()) return s;
    }
    if (dropped > 0) {
      spdlog::warn(
          "a change batch held {} record(s) with the version of an earlier one for the same key "
          "(first: {}); the earlier ones stand",
          dropped, first_dropped);
    }
    // A file written after a delete it had not seen keeps a name (table 1) also when the
    // delete's entry tombstone came in this batch behind the delete's inode record (a batch
    // applies inodes before entries): its name is given back once the whole batch is in.
    for (InodeId id : resurrected_) {
      auto rec = v_.Inode(id);
      if (rec && !rec->deleted) {
        if (auto s = RestoreName(*rec); !s.ok()) return s;
      }
    }
    // A directory deleted on one node while another put something in it comes back, so the
    // new entry stays reachable. Checked after the whole batch: a recursive delete sends the
    // children's tombstones in the same batch as the directory's.
    std::set<InodeId> dirs;
    for (const auto& r : won_.inodes) {
      if (r.deleted && r.kind == InodeKind::kDir) dirs.insert(r.id);
    }
    for (const auto& d : won_.dentries) {
      if (!d.deleted) dirs.insert(d.parent);
    }
    for (InodeId dir : dirs) {
      if (auto s = ReviveDir(dir); !s.ok()) return s;
    }
    // A directory moved on two nodes at once may now have two names, or two directories moved
    // into each other may form a cycle cut off from the root: put each back in one tree.
    std::set<InodeId> moved;
    for (const auto& d : won_.dentries) {
      if (!d.deleted) moved.insert(d.child);
    }
    moved.insert(came_alive_.begin(), came_alive_.end());
    for (InodeId dir : moved) {
      if (auto s = KeepInTree(dir); !s.ok()) return s;
    }
    return Ok();
  }

 private:
  // Table 1.
  Status PutInode(const InodeRecord& r) {
    auto cur = v_.Inode(r.id);
    if (cur && cur->version >= r.version) {
      if (cur->version == r.version) return Ok();
      if (ConcurrentContent(r, *cur)) return KeepConflictCopy(r);
      if (Resurrects(*cur, r)) {
        resurrected_.insert(cur->id);
        return RestoreName(*cur);
      }
      return Ok();
    }
    if (auto s = v_.Put(r); !s.ok()) return s;
    won_.inodes.push_back(r);
    // A directory that was absent or deleted brings the names it has into the tree; one that
    // was live already (a new mtime, say) changes nothing of the tree's shape.
    if (!r.deleted && r.kind == InodeKind::kDir && (!cur || cur->deleted)) came_alive_.insert(r.id);
    if (cur && ConcurrentContent(*cur, r)) {
      if (auto s = KeepConflictCopy(*cur); !s.ok()) return s;
    }
    if (cur && Resurrects(r, *cur)) {
      resurrected_.insert(r.id);
      return RestoreName(r);
    }
    return Ok();
  }

  // Table 2.
  Status PutDentry(const DentryRecord& d) {
    auto old = v_.Entry(d.parent, d.name);
    if (old && old->version >= d.version) {
      return old->version != d.version && Clash(d, *old) ? KeepDisplaced(d) : Ok();
    }
    if (auto s = v_.Put(d); !s.ok()) return s;
    won_.dentries.push_back(d);
    if (old && Clash(*old, d)) return KeepDisplaced(*old);
    return Ok();
  }

  // Live names of `child`, newest first.
  std::vector<DentryRecord> LiveNames(InodeId child) {
    auto names = v_.NamesOf(child);
    std::erase_if(names, [](const DentryRecord& d) { return d.deleted; });
    std::sort(names.begin(), names.end(), NewerName);
    return names;
  }

  // The newest live name of `child`, or if it has none its newest name.
  std::optional<DentryRecord> NewestName(InodeId child) {
    auto names = v_.NamesOf(child);
    if (names.empty()) return std::nullopt;
    return *std::min_element(names.begin(), names.end(), [](const auto& a, const auto& b) {
      if (a.deleted != b.deleted) return !a.deleted;
      return NewerName(a, b);
    });
  }

  // True if a live entry (parent, name) names another inode than `id`.
  bool Taken(InodeId parent, std::string_view name, InodeId id) {
    auto e = v_.Entry(parent, name);
    return e && !e->deleted && e->child != id;
  }

  // A directory that is a tombstone (or unknown) cannot take a name back: the root does.
  InodeId LiveDirOr(InodeId dir) {
    auto rec = v_.Inode(dir);
    return rec && !rec->deleted ? dir : kRootId;
  }

  // A file written after its deletion (in version order) by a node that had not seen the
  // deletion: the write wins, and the file must not be left without a name. It gets back its
  // newest name (or a conflict name if that is taken) with the write's version, which beats the
  // name's tombstone; every node that sees the pair derives the same entry, and it replicates.
  Status RestoreName(const InodeRecord& rec) {
    auto newest = NewestName(rec.id);
    if (!newest) return Ok();           // its name has not arrived yet: it will be live
    if (!newest->deleted) return Ok();  // it still has a live name
    const InodeId parent = LiveDirOr(newest->parent);
    std::string name = newest->name;
    if (Taken(parent, name, rec.id)) {
      name = ConflictName(name, Latest(rec.content_clock), rec.id ^ rec.version.hlc);
    }
    DentryRecord restored{parent, name, rec.id, rec.version, false};
    restored.replaces = rec.version;
    return PutDentry(restored);
  }

  // Keeps the entry that lost a clash as a conflict name beside the winner.
  Status KeepDisplaced(const DentryRecord& loser) {
    // A file that still has a name elsewhere (or got its conflict name already) is not lost.
    if (!LiveNames(loser.child).empty()) return Ok();
    std::string name = ConflictName(loser.name, {loser.version.node, loser.version.hlc},
                                    loser.child ^ loser.version.hlc);
    DentryRecord kept{loser.parent, name, loser.child, loser.version, false};
    kept.replaces = loser.version;
    return PutDentry(kept);
  }

  // Keeps `loser` as a new file beside the one it lost to. Every node that sees the same two
  // versions derives the same records (id, name and versions come from the loser), so the copy
  // converges like any other record, whichever node noticed the conflict first.
  Status KeepConflictCopy(const InodeRecord& loser) {
    Bytes seed;
    for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(loser.id >> (8 * i)));
    for (const auto& e : loser.content_clock) {
      for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(e.node >> (8 * i)));
      for (int i = 0; i < 8; ++i) seed.push_back(static_cast<std::uint8_t>(e.hlc >> (8 * i)));
    }
    auto digest = crypto::Sha256::Of(seed);
    InodeId copy_id = 0;
    for (int i = 0; i < 8; ++i)
      copy_id |= static_cast<std::uint64_t>(digest[static_cast<std::size_t>(i)]) << (8 * i);
    if (copy_id <= 1) copy_id += 2;
    // Where the file was: its newest name, live or not.
    InodeId parent = kRootId;
    std::string name = fmt::format("{:016x}", loser.id);
    if (auto newest = NewestName(loser.id)) {
      parent = newest->parent;
      name = newest->name;
    }
    parent = LiveDirOr(parent);
    InodeRecord copy = loser;
    copy.id = copy_id;
    if (auto s = PutInode(copy); !s.ok()) return s;
    // The copy is placed once: if it has a name already (or had one the user removed), it keeps
    // that, however often the conflict is seen again.
    if (!v_.NamesOf(copy_id).empty()) return Ok();
    DentryRecord entry{parent, ConflictName(name, Latest(loser.content_clock), copy_id), copy_id,
                       loser.version, false};
    entry.replaces = loser.version;
    return PutDentry(entry);
  }

  // The revived directory's version comes from the records that caused it (the newer of its
  // tombstone and its newest live entry, plus one), so every node derives the same one.
  Status ReviveDir(InodeId id) {
    auto rec = v_.Inode(id);
    if (!rec || !rec->deleted || rec->kind != InodeKind::kDir) return Ok();
    auto newest_entry = v_.NewestLiveEntryIn(id);
    if (!newest_entry) return Ok();  // empty: it stays deleted
    const Version newest = std::max(rec->version, *newest_entry);
    InodeRecord revived = *rec;
    revived.deleted = false;
    revived.version = {newest.hlc + 1, newest.node};
    spdlog::info(
        "directory {:016x} was deleted while entries were added to it elsewhere; keeping it", id);
    if (auto s = PutInode(revived); !s.ok()) return s;
    auto name_rec = NewestName(id);
    if (!name_rec || !name_rec->deleted) return Ok();
    const InodeId parent = name_rec->parent;
    std::string name = name_rec->name;
    if (Taken(parent, name, id)) {
      name = ConflictName(name, {revived.version.node, revived.version.hlc}, id);
    }
    DentryRecord entry{parent, name, id, revived.version, false};
    entry.replaces = revived.version;
    if (auto s = PutDentry(entry); !s.ok()) return s;
    return ReviveDir(parent);  // its own directory may be gone too
  }

  // Follows each directory's newest live name upwards from `from`: true if it reaches the root
  // without passing `avoid`, false at a directory with no name, a loop, or `avoid`.
  bool ReachesRoot(InodeId from, InodeId avoid) {
    std::set<InodeId> seen;
    for (InodeId at = from; at != kRootId;) {
      if (at == avoid || !seen.insert(at).second || seen.size() > kMaxTreeDepth) return false;
      auto names = LiveNames(at);
      if (names.empty()) return false;
      at = names.front().parent;
    }
    return true;
  }

  // Every record derived here takes its version and name from the records that caused it, so
  // nodes that see the same records derive the same repair.
  Status KeepInTree(InodeId id) {
    auto rec = v_.Inode(id);
    if (id == kRootId || !rec || rec->deleted || rec->kind != InodeKind::kDir) return Ok();
    // One name: the newest move wins, the other names go.
    auto names = LiveNames(id);
    for (std::size_t i = 1; i < names.size(); ++i) {
      DentryRecord gone = names[i];
      gone.deleted = true;
      gone.version = gone.replaces = names.front().version;
      spdlog::info("directory {:016x} was moved on two nodes at once; keeping the newer name '{}'",
                   id, names.front().name);
      if (auto s = PutDentry(gone); !s.ok()) return s;
    }
    // Not inside itself: walk up; a directory seen twice closes a cycle.
    for (int round = 0; round < 64; ++round) {
      std::vector<DentryRecord> path;  // path[i] names the directory path[i-1] sits in
      std::map<InodeId, std::size_t> index;
      std::optional<std::size_t> cycle;
      for (InodeId at = id; at != kRootId && path.size() < kMaxTreeDepth;) {
        if (auto it = index.find(at); it != index.end()) {
          cycle = it->second;
          break;
        }
        auto up = LiveNames(at);
        if (up.empty()) break;  // no name at all: not a cycle
        index[at] = path.size();
        path.push_back(up.front());
        at = up.front().parent;
      }
      if (!cycle) return Ok();
      // Undo the newest move in the cycle: its directory goes back where it was before (the
      // newest name it lost), or to the root if that place is inside the cycle too.
      const DentryRecord newest = *std::max_element(
          path.begin() + static_cast<std::ptrdiff_t>(*cycle), path.end(),
          [](const DentryRecord& a, const DentryRecord& b) { return a.version < b.version; });
      const Version v{newest.version.hlc + 1, newest.version.node};
      DentryRecord cut = newest;
      cut.deleted = true;
      cut.version = cut.replaces = v;
      if (auto s = PutDentry(cut); !s.ok()) return s;
      InodeId parent = kRootId;
      std::string name = newest.name;
      std::optional<DentryRecord> prev;
      for (const auto& d : v_.NamesOf(newest.child)) {
        if (!d.deleted || (d.parent == newest.parent && d.name == newest.name)) continue;
        if (!prev || NewerName(d, *prev)) prev = d;
      }
      if (prev && ReachesRoot(prev->parent, newest.child)) {
        parent = prev->parent;
        name = prev->name;
      }
      if (Taken(parent, name, newest.child))
        name = ConflictName(name, {v.node, v.hlc}, newest.child);
      spdlog::warn(
          "directories were moved into each other on two nodes; '{}' ({:016x}) goes back to "
          "'{}' in directory {:016x}",
          newest.name, newest.child, name, parent);
      DentryRecord back{parent, name, newest.child, v, false};
      back.replaces = v;
      if (auto s = PutDentry(back); !s.ok()) return s;
      if (auto s = ReviveDir(parent); !s.ok()) return s;
    }
    return Err(Code::kIOError, "directory {:016x}: could not put it back in the tree", id);
  }

  RecordView& v_;
  ChangeSet& won_;
  std::set<InodeId> resurrected_;  // live files that won over (or beat) a tombstone this batch
  std::set<InodeId> came_alive_;   // directories that were absent or deleted before this batch
};

}  // namespace

std::string ConflictName(std::string_view name, const model::ClockEntry& v, std::uint64_t tag) {
  std::time_t t = static_cast<std::time_t>(v.hlc / 1000000000ull);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof when, "%Y%m%d-%H%M%S", &tm);
  std::string suffix = fmt::format(".conflict-{:016x}-{}-{:04x}", v.node, when, tag & 0xffff);
  std::string base(name.substr(0, std::min(name.size(), model::kMaxNameSize - suffix.size())));
  return base + suffix;
}

Status Merge(RecordView& view, const ChangeSet& changes, ChangeSet& won) {
  return Merger(view, won).Run(changes);
}

}  // namespace foreverfs::server
