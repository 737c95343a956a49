#pragma once
// The replicated namespace, kept in SQLite (WAL, synchronous=NORMAL) under the data directory.
// A change survives a crash of the process once Apply returns, and a power failure after Sync
// (called on fsync(2)) or the next checkpoint, as files on a local file system do.
//
// Local changes commit in groups: Apply appends the change set to a redo log (RedoLog, one
// write) and merges it inside a transaction that stays open until kGroupAge has passed since
// it began, kGroupChanges changes joined it, or anything else writes (a peer's batch, Sync,
// acks, purges, members, pins, meta): that is the commit point, after which the log is
// emptied. Open replays the log's records (doc/namespace.md, "Redo log"). Reads on this
// connection see the open group.
//
// Files: namespace_db.cpp (opening, reads, Apply), namespace_schema.cpp (tables and
// upgrades), namespace_feed.cpp (the change feed, members, acks, tombstone purge),
// namespace_statements.{h,cpp} (SQLite statements and the columns records are kept in). The
// merge rules Apply runs are namespace_merge.{h,cpp}, which know nothing of SQLite.
//
// Two kinds of record, each a last-writer-wins register keyed by its identity:
//   inodes   id -> kind, mode, owner, size, times, manifest, symlink target, deleted
//   dentries (parent, name) -> child, deleted
// Every record carries a Version (hybrid logical clock, node id). A record replaces the stored
// one only if its version is greater, so nodes that apply the same records in any order end in
// the same state. Deletions are tombstones (deleted = true) so that they replicate too.
//
// When a version loses to one that was written concurrently (neither saw the other's
// content), the loser is kept as a file named "NAME.conflict-<node>-<UTC time>" beside it, so
// no write is lost; every node derives the same copy.
//
// Every change, local or remote, gets the next local sequence number; ChangesSince(seq) is the
// feed peers subscribe to, and a peer's cursor into our feed is what it persisted last.
// Sequence numbers are reserved in blocks recorded durably (the commit that crosses a block
// boundary is a full-sync one): a power failure may lose the last commits, but never lets
// their numbers be handed out again, which would hide the new changes from peers whose cursor
// already passed them.
//
// Tombstones are purged once every member holds them (PurgeTombstones): a member is a node that
// ever linked with this one (it pulls our feed and we pull its) or that a peer named to us;
// each member's FeedAck says how far into our feed it has applied (RecordAck). See README,
// "Tombstones", for why a purged deletion cannot come back.
//
// Thread-safe: one connection behind a mutex.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"
#include "net/messages.h"
#include "server/namespace_merge.h"
#include "server/redo_log.h"

struct sqlite3;

namespace foreverfs::server {

class NamespaceDb {
 public:
  // Opens or creates `path`; a new database gets a random node id and the root directory.
  static Result<std::unique_ptr<NamespaceDb>> Open(const std::filesystem::path& path);
  ~NamespaceDb();
  NamespaceDb(const NamespaceDb&) = delete;
  NamespaceDb& operator=(const NamespaceDb&) = delete;

  std::uint64_t node_id() const { return node_id_; }
  // Replaces the node id with a fresh random one, durably, and returns the old one. Only before
  // the database is used (no FileServer yet): records already written keep the old id, which is
  // what they were written under. For a copy of a data directory (see README, "Identity").
  Result<std::uint64_t> TakeFreshNodeId();
  // Small integers kept in the database beside the node id (e.g. "data_dir_ino").
  // The furthest a FeedAck to `peer` may confirm: just before the first batch of its feed that
  // held a record this node refused (CapAcks), or everything if none did.
  std::uint64_t AckCap(std::uint64_t peer);
  // A batch of `peer`'s feed after `cursor` held a record this node refused: never confirm
  // past `cursor` (its tombstones may then wait for ever, which is safe; purging them while
  // this node holds what they deleted is not).
  Status CapAcks(std::uint64_t peer, std::uint64_t cursor);
  std::optional<std::int64_t> GetMeta(std::string_view key);
  Status SetMeta(std::string_view key, std::int64_t value);
  // Makes every change so far durable: commits the open group, then fsyncs the WAL and the
  // database file.
  Status Sync();
  // The greatest HLC value stored, so the clock never goes back across restarts.
  std::uint64_t MaxHlc();

  // Live records only (kNotFound for absent or deleted).
  Result<InodeRecord> GetInode(InodeId id);
  // The record even if it is a tombstone (deleted); kNotFound only if there is none.
  Result<InodeRecord> GetInodeOrTombstone(InodeId id);
  Result<DentryRecord> GetDentry(InodeId parent, std::string_view name);
  // Live entries of a directory whose child inode is known and live, ordered by name.
  Result<std::vector<DentryRecord>> ListDir(InodeId parent);
  // The same, with each child's kind, in one query (for readdir of large directories).
  struct DirRow {
    std::string name;
    InodeId child;
    InodeKind kind;
  };
  Result<std::vector<DirRow>> ListDirKinds(InodeId parent);
  // Live entries pointing at `child`.
  Result<std::vector<DentryRecord>> LinksTo(InodeId child);
  // How many live entries name `child` (its link count): LinksTo's size, without the rows.
  std::size_t CountLinks(InodeId child);
  // How often the database changed so far (rows written, and rollbacks, which undo rows
  // without writing any): equal stamps before and after a read mean that nothing the read saw
  // has changed since. No query.
  std::uint64_t ChangeStamp();
  bool HasLiveEntries(InodeId parent);
  // True if any inode record (live or a tombstone) has an id in [lo, hi] (unsigned; the range
  // must not cross 2^63, where the stored signed ids wrap). An error reads as true.
  bool AnyInodeIn(InodeId lo, InodeId hi);

  // Applies records whose version is newer than the stored one, in one transaction; returns
  // those that won. Used for local changes (fresh versions always win) and remote ones.
  // If `peer` is set, its feed cursor becomes `up_to` in the same transaction.
  Result<ChangeSet> Apply(const ChangeSet& changes, std::optional<std::uint64_t> peer = {},
                          std::uint64_t up_to = 0);

  // Up to `max_records` records changed after `since`, in change order, taking at most
  // `max_bytes` encoded (net::EncodedSize), except that the first record is always taken: a
  // record always fits in a frame (model::ValidateInode's limits), so a batch always does when
  // max_bytes leaves room for one record under the frame limit. up_to is the sequence of the
  // last one returned (or the current one if none).
  Result<net::Changes> ChangesSince(std::uint64_t since, std::size_t max_records,
                                    std::size_t max_bytes);
  std::uint64_t LastSeq();
  std::uint64_t Cursor(std::uint64_t peer);

  // Members: nodes that must hold a tombstone before it may be purged. AddMember records one
  // (with nothing confirmed yet) if it is not known; a no-op otherwise.
  Status AddMember(std::uint64_t node);
  // `node` says it has applied our feed through `applied` and that its own feed was at
  // `own_seq` then. That confirms `applied` once we have applied its feed through `own_seq`
  // (our cursor for it), so that nothing it wrote before it applied our tombstones is still on
  // its way to us.
  Status RecordAck(std::uint64_t node, std::uint64_t applied, std::uint64_t own_seq);
  // A neighbour (`via`) relays members' confirmations (net::RelayedFeedAcks): each member holds
  // our feed through its `applied`, and whatever it wrote before it did so is in via's feed
  // through `via_seq`. It counts once our cursor in via's feed reaches `via_seq`; until then a
  // later relay of the same member by the same neighbour is ignored (relays repeat). Relayed
  // confirmations only raise what a member confirmed, and are kept in memory: after a restart
  // the neighbours relay them again.
  void RecordRelayedAcks(std::uint64_t via, const net::RelayedFeedAcks& acks);
  struct Member {
    std::uint64_t node = 0;
    std::uint64_t confirmed = 0;  // our sequence number it holds everything up to
  };
  // Every member with the most it confirmed, directly (RecordAck) or relayed; by node.
  std::vector<Member> Members();

  // No tombstone waits for `node` any more (`foreverfs node remove`).
  Status ForgetMember(std::uint64_t node);

  // Pins (user.foreverfs.pin), local to this node: `id` (a file, or a directory and all below
  // it) keeps its chunks here whatever placement says.
  Status SetPin(InodeId id, bool pinned);
  bool PinnedHere(InodeId id);  // `id` itself
  bool Pinned(InodeId id);      // `id` or a directory above it

  // The cluster's member list as Membership exports it, replaced whole.
  struct ClusterMember {
    std::uint64_t node = 0;
    std::string addr;
    std::uint8_t state = 0;  // net::MemberState
    std::uint64_t incarnation = 0;
    std::int64_t unseen_ms = -1;
    std::uint32_t weight = 1;  // its placement weight (Placement::WeightOf)
  };
  Status SaveClusterMembers(const std::vector<ClusterMember>& members);
  std::vector<ClusterMember> LoadClusterMembers();

  struct PurgeStats {
    std::size_t inodes = 0, dentries = 0;  // tombstones removed
    std::size_t waiting = 0;        // tombstones past the grace period that some member lacks
    std::uint64_t horizon = 0;      // our sequence number every member confirmed (LastSeq if none)
    std::optional<Member> slowest;  // the member that set the horizon
  };
  // Removes the tombstones (inode and entry records marked deleted) whose sequence number every
  // member has confirmed and whose version is older than `before_hlc`, except those of the
  // inodes in `keep` (files open here) and the entries naming them. In batches: other commits
  // go on meanwhile.
  Result<PurgeStats> PurgeTombstones(std::uint64_t before_hlc, const std::set<InodeId>& keep);

  // Tests only: called inside every Apply of a peer's batch (`peer` set), after its records
  // were written and before its cursor is, with mu_ held (it must not call back into this
  // object). A failure it returns fails the batch as a full disk would: rolled back, cursor
  // unchanged. Empty: no hook.
  using ApplyFault =
      std::function<Status(const ChangeSet& changes, std::uint64_t peer, std::uint64_t up_to)>;
  void SetApplyFaultForTest(ApplyFault fault);

  // A group of local changes commits once this much time passed since it began, or when it
  // holds this many changes; a change set whose log record would be larger commits alone.
  static constexpr std::chrono::milliseconds kGroupAge{10};
  static constexpr std::size_t kGroupChanges = 512;
  static constexpr std::size_t kMaxLoggedChange = 64 * 1024;
  // Before fork(2) (daemonizing): commits the open group and ends the thread that commits
  // groups by age, which would not exist in the child; the next group starts it again.
  Status BeforeFork();
  // Local changes applied but not yet committed (in the redo log).
  std::size_t UncommittedChanges();
  // Tests only: the destructor then neither commits the open group nor empties the log, as
  // after kill -9 (SQLite rolls the group back when the connection closes).
  void AbandonForTest();
  // Tests only: ends the open group's transaction as SQLite does on some errors (a full disk):
  // its changes are then only in the log.
  void RollBackGroupForTest();
  // Tests only: another kGroupAge.
  void SetGroupAgeForTest(std::chrono::milliseconds age);

  // Every chunk id referenced by a live inode (for replication and garbage collection).
  Status ForEachLiveManifest(const std::function<void(const InodeRecord&)>& fn);

 private:
  explicit NamespaceDb(sqlite3* db) : db_(db) {}
  Status Exec(const char* sql) REQUIRES(mu_);
  // The commit point: commits the open group of local changes (if any) and empties the log.
  // Every writer but a local Apply calls it first. If SQLite rolled the group back, replays
  // the log into a new one (the changes stay in the log either way).
  Status CommitGroupLocked() REQUIRES(mu_);
  // CommitGroupLocked, then BEGIN IMMEDIATE.
  Status BeginLocked() REQUIRES(mu_);
  // Applies the log's records into the open group (at start, or after SQLite rolled it back).
  Status ReplayLocked() REQUIRES(mu_);
  // A failed statement may have made SQLite roll the whole group back: then only the log
  // holds its changes, and they are replayed before anything else is applied.
  void NoteRollbackLocked() REQUIRES(mu_);
  // A local change set joins the group (`log`: appended to the redo log first; false when
  // replaying it).
  Result<ChangeSet> ApplyGroupedLocked(const ChangeSet& changes, bool log, int attempt)
      REQUIRES(mu_);
  Status ReserveFor(const ChangeSet& changes) REQUIRES(mu_);
  void GroupCommitLoop();
  // One wait or commit of the loop (waits release mu_ while they wait).
  void GroupCommitStepLocked() REQUIRES(mu_);
  // Empties the log after a commit; if that fails, local changes bypass the log (log_broken_)
  // until it succeeds.
  void ClearLogLocked() REQUIRES(mu_);
  // Starts the group-commit thread if it is not running (when a group begins: never before
  // the daemon forks, see BeforeFork).
  void EnsureCommitterLocked() REQUIRES(mu_);
  std::uint64_t CursorLocked(std::uint64_t peer) REQUIRES(mu_);
  std::vector<Member> MembersLocked() REQUIRES(mu_);
  Status Init() REQUIRES(mu_);
  Status UpgradeFrom5() REQUIRES(mu_);
  Status UpgradeFrom6() REQUIRES(mu_);
  Status AddClusterMemberWeights() REQUIRES(mu_);
  // Durably reserves sequence numbers for at least `need` more changes. With mu_ held.
  Status ReserveSeqs(std::uint64_t need) REQUIRES(mu_);
  Result<ChangeSet> ApplyLocked(const ChangeSet& changes, std::optional<std::uint64_t> peer,
                                std::uint64_t up_to, int attempt) REQUIRES(mu_);
  // Guards the connection and the sequence counters. Taken inside every server lock (doc/
  // threads.md); never held across a wait on a peer.
  Mutex mu_;
  // Opened without SQLite's own mutex (SQLITE_OPEN_NOMUTEX): mu_ serializes every use, and
  // the analysis checks that each reads db_ with it held.
  sqlite3* const db_ GUARDED_BY(mu_);
  std::uint64_t node_id_ = 0;
  std::uint64_t seq_ GUARDED_BY(mu_) = 0;
  // Relayed confirmations (RecordRelayedAck): counted, and waiting for our cursor in the relaying
  // neighbour's feed, by (member, via).
  std::map<std::uint64_t, std::uint64_t> relayed_ GUARDED_BY(mu_);
  struct RelayPending {
    std::uint64_t applied = 0, via_seq = 0;
  };
  std::map<std::pair<std::uint64_t, std::uint64_t>, RelayPending> relay_pending_ GUARDED_BY(mu_);
  std::uint64_t seq_reserved_ GUARDED_BY(mu_) = 0;  // durably recorded: no number up to it lost
  std::string file_;                                // the database file
  ApplyFault apply_fault_ GUARDED_BY(mu_);          // tests only (SetApplyFaultForTest)

  // The group of local changes (see the top of this file).
  std::optional<RedoLog> redo_ GUARDED_BY(mu_);
  // Rollbacks so far (SQLite's rollback hook and every ROLLBACK through Exec), for ChangeStamp.
  std::atomic<std::uint64_t> rollbacks_{0};
  bool group_open_ GUARDED_BY(mu_) = false;
  std::size_t group_changes_ GUARDED_BY(mu_) = 0;
  std::chrono::steady_clock::time_point group_began_ GUARDED_BY(mu_);
  bool replaying_ GUARDED_BY(mu_) = false;      // commits keep the log while it is read
  bool replay_needed_ GUARDED_BY(mu_) = false;  // SQLite rolled a group back
  bool stop_ GUARDED_BY(mu_) = false;
  bool abandoned_ GUARDED_BY(mu_) = false;
  bool log_broken_ GUARDED_BY(mu_) = false;  // the log could not be emptied after a commit
  std::chrono::milliseconds group_age_ GUARDED_BY(mu_) = kGroupAge;
  std::condition_variable_any group_cv_;   // a group began, or stop_
  std::thread committer_ GUARDED_BY(mu_);  // commits a group when it is kGroupAge old
};

}  // namespace foreverfs::server
