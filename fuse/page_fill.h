#pragma once
// fuse::PageFill: when the bytes beside a small read may go into the kernel's page cache.
//
// A 4 KiB read of a committed chunk reads and decrypts a whole 16 KiB segment
// (server::ReadWindow); the kernel asked for one page, and for random reads it asks for no
// more. The other pages are handed to the kernel's cache afterwards (FUSE_NOTIFY_STORE, from
// FuseFs's own thread), so a later read of them is a page-cache hit.
//
// A store writes pages whatever the cache holds, so it must never land after the file's bytes
// changed, or the cache would keep old bytes. Every change goes through this class:
//  - writes: a file with a handle open for writing here gets no tickets (and a store is refused
//    while one is open); the kernel's own cache then holds what is written;
//  - every open (the kernel drops the inode's pages when an open replies: no keep_cache, and
//    the handle may read a newer version) and a truncate: Opened, Changed;
//  - a peer's version: PeerChanged. Handles opened before it may read the older version, whose
//    pages must not mix with the newer one's: no stores until they are all released.
// A read takes a ticket before it reads; its store runs only if none of the above happened to
// the inode since. An open or truncate of an inode whose store is under way waits for it (the
// kernel then drops or cuts the stored pages after that request's reply); nothing else waits.
//
// Deadlock-free: a store may wait in the kernel for a page lock, held by a read in flight (the
// read's handler takes only mu_, briefly) and by nothing else: writers are refused before a
// store starts, and an open or truncate waiting for a store of its inode holds no page lock. A
// peer's change never waits (it runs on the network thread, which a read may be waiting for).
//
// Thread-safe.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <optional>
#include <unordered_map>

#include "base/bytes.h"
#include "base/mutex.h"
#include "fuse/reply.h"  // fuse_ino_t

namespace foreverfs::fuse {

// Pages for the kernel's cache of `ino`, from a read that took `ticket`.
struct PageStore {
  fuse_ino_t ino = 0;
  std::uint64_t offset = 0;
  Bytes data;
  std::uint64_t ticket = 0;
};

class PageFill {
 public:
  // Before a read of `ino`: a ticket for storing what it reads, or nothing while a handle has
  // the inode open for writing here.
  std::optional<std::uint64_t> Ticket(fuse_ino_t ino);
  // Handle `fh` of `ino` opened (after the server opened it, before the reply); `writes` if
  // it may write. Until Released.
  void Opened(fuse_ino_t ino, std::uint64_t fh, bool writes);
  void Released(std::uint64_t fh);
  // The bytes of `ino` changed otherwise, here (after the change, before the reply): a
  // truncate, or an open that failed after truncating.
  void Changed(fuse_ino_t ino);
  // A peer's version of `ino` was applied. Never waits.
  void PeerChanged(fuse_ino_t ino);
  // Runs `store` (which hands `p` to the kernel) if `p`'s ticket is still good, holding off
  // opens and truncates of the inode until it returns. True if it ran.
  bool StoreIfCurrent(const PageStore& p, const std::function<void()>& store);

  // Inodes with a change or a handle on record; beyond this the record of those without an
  // open handle is dropped (every ticket taken before then is refused).
  static constexpr std::size_t kMaxInodes = 4096;

 private:
  struct State {
    std::uint32_t handles = 0;        // open here
    std::uint32_t writers = 0;        // of them, those that may write
    std::uint32_t older_handles = 0;  // of them, those opened before peer_changed
    std::uint64_t changed = 0;        // clock_ at its last change
    std::uint64_t peer_changed = 0;   // clock_ at the last peer's version
    bool storing = false;             // a store of its pages is under way
  };
  struct Handle {
    fuse_ino_t ino;
    std::uint64_t opened;  // clock_ then
    bool writes;
  };
  static bool Storable(const State& s);
  void Bump(fuse_ino_t ino) REQUIRES(mu_);
  void WaitForStore(fuse_ino_t ino) REQUIRES(mu_);

  Mutex mu_;                            // leaf
  std::condition_variable_any stored_;  // a store ended (waits on mu_)
  std::uint64_t clock_ GUARDED_BY(mu_) = 0;
  std::uint64_t floor_ GUARDED_BY(mu_) = 0;  // the last change of an inode not in inodes_
  std::unordered_map<fuse_ino_t, State> inodes_ GUARDED_BY(mu_);
  std::unordered_map<std::uint64_t, Handle> handles_ GUARDED_BY(mu_);
};

}  // namespace foreverfs::fuse
