#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>

#include "net/messages.h"
#include "server/namespace_db.h"
#include "server/namespace_statements.h"

namespace foreverfs::server {
namespace {

using sql::S;
using sql::Stmt;
using sql::U;

// Tombstones removed per transaction by PurgeTombstones (the lock is let go between them).
constexpr std::int64_t kPurgeBatch = 1024;

std::string AckCapKey(std::uint64_t peer) { return fmt::format("ack_cap_{:016x}", peer); }

constexpr const char* kMembersSql =
    "SELECT m.node, CASE WHEN m.pending_own <= coalesce(c.seq, 0) THEN m.pending"
    " ELSE m.confirmed END FROM members m LEFT JOIN cursors c ON c.peer = m.node";

}  // namespace

Result<net::Changes> NamespaceDb::ChangesSince(std::uint64_t since, std::size_t max_records,
                                               std::size_t max_bytes) {
  MutexLock lock(mu_);
  struct Item {
    std::uint64_t seq;
    std::optional<InodeRecord> inode;
    std::optional<DentryRecord> dentry;
  };
  std::vector<Item> items;
  // Inodes are read until they alone exceed the byte budget (large manifests); records after
  // the last inode read cannot be sent before it, so the batch stops there.
  std::uint64_t cut = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  {
    Stmt q(db_, fmt::format("SELECT {} FROM inodes WHERE seq > ? ORDER BY seq LIMIT ?",
                            sql::kInodeColumns)
                    .c_str());
    q.Bind(1, S(since)).Bind(2, static_cast<std::int64_t>(max_records));
    std::size_t bytes = 0;
    while (q.Step() == SQLITE_ROW) {
      items.push_back({U(q.Int(13)), sql::ReadInode(q), std::nullopt});
      bytes += net::EncodedSize(*items.back().inode);
      if (bytes > max_bytes) {
        cut = items.back().seq;
        break;
      }
    }
  }
  {
    Stmt q(db_,
           "SELECT parent, name, child, hlc, node, deleted, rep_hlc, rep_node, seq FROM dentries"
           " WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?");
    q.Bind(1, S(since)).Bind(2, S(cut)).Bind(3, static_cast<std::int64_t>(max_records));
    while (q.Step() == SQLITE_ROW) items.push_back({U(q.Int(8)), std::nullopt, sql::ReadDentry(q)});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.seq < b.seq; });
  net::Changes out;
  out.up_to = items.empty() ? std::max(since, seq_) : since;
  std::size_t bytes = 0, count = 0;
  for (auto& it : items) {
    if (count >= max_records) break;
    const std::size_t size = it.inode ? net::EncodedSize(*it.inode) : net::EncodedSize(*it.dentry);
    if (count > 0 && bytes + size > max_bytes) break;
    bytes += size;
    if (it.inode) {
      out.inodes.push_back(std::move(*it.inode));
    } else {
      out.dentries.push_back(std::move(*it.dentry));
    }
    out.up_to = it.seq;
    ++count;
  }
  return out;
}

std::uint64_t NamespaceDb::LastSeq() {
  MutexLock lock(mu_);
  return seq_;
}

Status NamespaceDb::AddMember(std::uint64_t node) {
  MutexLock lock(mu_);
  if (node == node_id_) return Ok();
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  return Stmt(db_, "INSERT OR IGNORE INTO members(node) VALUES(?)").Bind(1, S(node)).Run();
}

Status NamespaceDb::RecordAck(std::uint64_t node, std::uint64_t applied, std::uint64_t own_seq) {
  MutexLock lock(mu_);
  if (node == node_id_) return Ok();
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  if (applied > seq_) {
    // Past the end of our feed: not something this database handed out. Confirms nothing.
    spdlog::warn(
        "node {:016x} says it applied our changes up to {}, past our last one ({}); "
        "ignored",
        node, applied, seq_);
    applied = 0;
  }
  const std::uint64_t cursor = CursorLocked(node);
  // The previous ack counts once we have what the member had written when it sent it.
  std::uint64_t confirmed = 0;
  {
    Stmt m(db_, "SELECT confirmed, pending, pending_own FROM members WHERE node = ?");
    m.Bind(1, S(node));
    if (m.Step() == SQLITE_ROW) confirmed = U(m.Int(2)) <= cursor ? U(m.Int(1)) : U(m.Int(0));
  }
  if (own_seq <= cursor) confirmed = applied;
  // A member that reports less than before lost commits (a power cut, a restored copy): what it
  // confirmed earlier no longer holds.
  confirmed = std::min(confirmed, applied);
  return Stmt(db_,
              "INSERT OR REPLACE INTO members(node, confirmed, pending, pending_own)"
              " VALUES(?, ?, ?, ?)")
      .Bind(1, S(node))
      .Bind(2, S(confirmed))
      .Bind(3, S(applied))
      .Bind(4, S(own_seq))
      .Run();
}

Status NamespaceDb::ForgetMember(std::uint64_t node) {
  MutexLock lock(mu_);
  relayed_.erase(node);
  std::erase_if(relay_pending_, [&](const auto& p) { return p.first.first == node; });
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  return Stmt(db_, "DELETE FROM members WHERE node = ?").Bind(1, S(node)).Run();
}

Status NamespaceDb::SetPin(InodeId id, bool pinned) {
  MutexLock lock(mu_);
  if (auto s = CommitGroupLocked(); !s.ok()) return s;
  return pinned ? Stmt(db_, "INSERT OR IGNORE INTO pins(inode) VALUES(?)").Bind(1, S(id)).Run()
                : Stmt(db_, "DELETE FROM pins WHERE inode = ?").Bind(1, S(id)).Run();
}

bool NamespaceDb::PinnedHere(InodeId id) {
  MutexLock lock(mu_);
  Stmt q(db_, "SELECT 1 FROM pins WHERE inode = ?");
  q.Bind(1, S(id));
  return q.Step() == SQLITE_ROW;
}

bool NamespaceDb::Pinned(InodeId id) {
  MutexLock lock(mu_);
  {
    Stmt any(db_, "SELECT 1 FROM pins LIMIT 1");
    if (any.Step() != SQLITE_ROW) return false;
  }
  // Up through the directories that name it (the first live entry; a hard-linked file is
  // pinned through any one of them it finds first), at most a deep path's worth of steps.
  for (int depth = 0; depth < 4096; ++depth) {
    {
      Stmt q(db_, "SELECT 1 FROM pins WHERE inode = ?");
      q.Bind(1, S(id));
      if (q.Step() == SQLITE_ROW) return true;
    }
    if (id == kRootId) return false;
    Stmt up(db_, "SELECT parent FROM dentries WHERE child = ? AND deleted = 0 LIMIT 1");
    up.Bind(1, S(id));
    if (up.Step() != SQLITE_ROW) return false;
    id = U(up.Int(0));
  }
  return false;
}

Status NamespaceDb::SaveClusterMembers(const std::vector<ClusterMember>& members) {
  MutexLock lock(mu_);
  if (auto s = BeginLocked(); !s.ok()) return s;
  auto fail = [&](Status s) REQUIRES(mu_) {
    (void)Exec("ROLLBACK");
    return s;
  };
  if (auto s = Exec("DELETE FROM cluster_members"); !s.ok()) return fail(s);
  for (const auto& m : members) {
    Status s = Stmt(db_,
                    "INSERT OR REPLACE INTO cluster_members(node, addr, state, incarnation,"
                    " unseen_ms, weight) VALUES(?, ?, ?, ?, ?, ?)")
                   .Bind(1, S(m.node))
                   .Bind(2, m.addr)
                   .Bind(3, m.state)
                   .Bind(4, S(m.incarnation))
                   .Bind(5, m.unseen_ms)
                   .Bind(6, static_cast<std::int64_t>(m.weight))
                   .Run();
    if (!s.ok()) return fail(s);
  }
  if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
  return Ok();
}

std::vector<NamespaceDb::ClusterMember> NamespaceDb::LoadClusterMembers() {
  MutexLock lock(mu_);
  std::vector<ClusterMember> out;
  Stmt q(db_,
         "SELECT node, addr, state, incarnation, unseen_ms, weight FROM cluster_members"
         " ORDER BY node");
  while (q.Step() == SQLITE_ROW) {
    const std::int64_t weight =
        std::clamp<std::int64_t>(q.Int(5), 1, std::numeric_limits<std::uint32_t>::max());
    out.push_back({U(q.Int(0)), q.Text(1), static_cast<std::uint8_t>(q.Int(2)), U(q.Int(3)),
                   q.Int(4), static_cast<std::uint32_t>(weight)});
  }
  return out;
}

void NamespaceDb::RecordRelayedAcks(std::uint64_t via, const net::RelayedFeedAcks& acks) {
  MutexLock lock(mu_);
  if (via == node_id_) return;
  const std::uint64_t cursor = CursorLocked(via);
  for (const auto& [member, applied] : acks.acks) {
    if (member == node_id_ || member == via) continue;
    if (applied > seq_) continue;  // not something this database handed out: confirms nothing
    const auto key = std::make_pair(member, via);
    if (auto it = relay_pending_.find(key); it != relay_pending_.end()) {
      // The earlier one still waits, unless this one waits for less (the neighbour's feed
      // restarted, or the earlier one named a point its feed never reached).
      if (cursor < it->second.via_seq && acks.via_seq > it->second.via_seq) continue;
      if (cursor >= it->second.via_seq) {
        auto& c = relayed_[member];
        c = std::max(c, it->second.applied);
      }
      relay_pending_.erase(it);
    }
    if (cursor >= acks.via_seq) {
      auto& c = relayed_[member];
      c = std::max(c, applied);
    } else {
      relay_pending_[key] = RelayPending{applied, acks.via_seq};
    }
  }
}

std::vector<NamespaceDb::Member> NamespaceDb::MembersLocked() {
  // Relays whose wait is over count now.
  for (auto it = relay_pending_.begin(); it != relay_pending_.end();) {
    if (CursorLocked(it->first.second) >= it->second.via_seq) {
      auto& c = relayed_[it->first.first];
      c = std::max(c, it->second.applied);
      it = relay_pending_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<Member> out;
  Stmt q(db_, fmt::format("{} ORDER BY m.node", kMembersSql).c_str());
  while (q.Step() == SQLITE_ROW) {
    Member m{U(q.Int(0)), U(q.Int(1))};
    if (auto r = relayed_.find(m.node); r != relayed_.end()) {
      m.confirmed = std::max(m.confirmed, r->second);
    }
    out.push_back(m);
  }
  return out;
}

std::vector<NamespaceDb::Member> NamespaceDb::Members() {
  MutexLock lock(mu_);
  return MembersLocked();
}

Result<NamespaceDb::PurgeStats> NamespaceDb::PurgeTombstones(std::uint64_t before_hlc,
                                                             const std::set<InodeId>& keep) {
  PurgeStats st;
  {
    MutexLock lock(mu_);
    st.horizon = seq_;
    for (const Member& m : MembersLocked()) {
      if (!st.slowest || m.confirmed < st.slowest->confirmed) st.slowest = m;
    }
    if (st.slowest) st.horizon = std::min(st.horizon, st.slowest->confirmed);
    for (const char* table : {"inodes", "dentries"}) {
      Stmt w(db_,
             fmt::format("SELECT count(*) FROM {} WHERE deleted = 1 AND seq > ? AND hlc < ?", table)
                 .c_str());
      w.Bind(1, S(st.horizon)).Bind(2, S(before_hlc));
      if (w.Step() == SQLITE_ROW) st.waiting += static_cast<std::size_t>(w.Int(0));
    }
  }
  // Page through the candidates by sequence number, one transaction per page.
  auto purge = [&](bool inodes) -> Status {
    std::int64_t after = 0;
    for (;;) {
      MutexLock lock(mu_);
      if (auto s = BeginLocked(); !s.ok()) return s;
      auto fail = [&](Status s) REQUIRES(mu_) {
        (void)Exec("ROLLBACK");
        return s;
      };
      struct Row {
        InodeId id_or_parent;
        std::string name;
      };
      std::vector<Row> rows;
      std::int64_t n = 0;
      {
        Stmt q(db_, inodes ? "SELECT id, '', id, seq FROM inodes WHERE deleted = 1 AND seq > ?"
                             " AND seq <= ? AND hlc < ? ORDER BY seq LIMIT ?"
                           : "SELECT parent, name, child, seq FROM dentries WHERE deleted = 1"
                             " AND seq > ? AND seq <= ? AND hlc < ? ORDER BY seq LIMIT ?");
        q.Bind(1, after).Bind(2, S(st.horizon)).Bind(3, S(before_hlc)).Bind(4, kPurgeBatch);
        int rc;
        while ((rc = q.Step()) == SQLITE_ROW) {
          ++n;
          after = q.Int(3);
          if (!keep.contains(U(q.Int(2)))) rows.push_back({U(q.Int(0)), q.Text(1)});
        }
        if (rc != SQLITE_DONE) {
          return fail(Err(Code::kIOError, "reading tombstones: {}", sqlite3_errmsg(db_)));
        }
      }
      for (const auto& r : rows) {
        Status s =
            inodes ? Stmt(db_, "DELETE FROM inodes WHERE id = ?").Bind(1, S(r.id_or_parent)).Run()
                   : Stmt(db_, "DELETE FROM dentries WHERE parent = ? AND name = ?")
                         .Bind(1, S(r.id_or_parent))
                         .Bind(2, r.name)
                         .Run();
        if (!s.ok()) return fail(s);
      }
      if (auto s = Exec("COMMIT"); !s.ok()) return fail(s);
      (inodes ? st.inodes : st.dentries) += rows.size();
      if (n < kPurgeBatch) return Ok();
    }
  };
  if (auto s = purge(true); !s.ok()) return s;
  if (auto s = purge(false); !s.ok()) return s;
  return st;
}

std::uint64_t NamespaceDb::Cursor(std::uint64_t peer) {
  MutexLock lock(mu_);
  return CursorLocked(peer);
}

std::uint64_t NamespaceDb::CursorLocked(std::uint64_t peer) {
  Stmt q(db_, "SELECT seq FROM cursors WHERE peer = ?");
  q.Bind(1, S(peer));
  return q.Step() == SQLITE_ROW ? U(q.Int(0)) : 0;
}

Status NamespaceDb::ForEachLiveManifest(const std::function<void(const InodeRecord&)>& fn) {
  std::vector<InodeRecord> batch;
  std::int64_t after = std::numeric_limits<std::int64_t>::min();
  // In batches, so the lock is not held while `fn` runs.
  for (;;) {
    batch.clear();
    {
      MutexLock lock(mu_);
      // The caller (garbage collection) deletes what no live file names: never from a state
      // that lacks changes SQLite rolled back and the redo log still holds.
      NoteRollbackLocked();
      if (replay_needed_) {
        return Err(Code::kIOError,
                   "{}: changes rolled back by SQLite wait to be replayed from the redo log",
                   file_);
      }
      Stmt q(db_, fmt::format("SELECT {} FROM inodes WHERE id > ? AND deleted = 0 AND kind = 1"
                              " ORDER BY id LIMIT 256",
                              sql::kInodeColumns)
                      .c_str());
      q.Bind(1, after);
      while (q.Step() == SQLITE_ROW) batch.push_back(sql::ReadInode(q));
    }
    if (batch.empty()) return Ok();
    after = S(batch.back().id);
    for (const auto& r : batch) fn(r);
  }
}

std::uint64_t NamespaceDb::AckCap(std::uint64_t peer) {
  auto v = GetMeta(AckCapKey(peer));
  return v ? U(*v) : UINT64_MAX;
}

Status NamespaceDb::CapAcks(std::uint64_t peer, std::uint64_t cursor) {
  if (cursor >= AckCap(peer)) return Ok();
  spdlog::warn(
      "peer {:016x}: a record after its change {} was refused here; this node will not "
      "confirm its later changes, so their deletions are kept (not purged)",
      peer, cursor);
  return SetMeta(AckCapKey(peer), S(cursor));
}

}  // namespace foreverfs::server
