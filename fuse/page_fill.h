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
//  - writes: a file with a handle open for writing here gets no tickets (and a store refused
//    while one is open); the kernel's own cache then holds what is written;
//  - every open (the kernel drops the inode's pages when an open replies: no keep_cache, and
//    the handle may read a newer version), a truncate, and a peer's new version: Changed.
// A read takes a ticket before it reads; its store runs only if nothing above happened to the
// inode since, and it holds off every change until the kernel took the pages (store_mu_). A
// change that comes first makes the store stand down; one that comes after waits, and the
// kernel applies it over the stored pages.
//
// Deadlock-free: a store may wait in the kernel for a page lock, held by a read in flight (the
// read's handler takes only mu_, never store_mu_) or by nothing else: writers are refused
// before a store starts, and an open waiting on store_mu_ holds no page lock.
//
// Thread-safe.

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
  // it may write (then until Released).
  void Opened(fuse_ino_t ino, std::uint64_t fh, bool writes);
  void Released(std::uint64_t fh);
  // The bytes of `ino` changed otherwise (after the change, before any reply): a truncate, a
  // peer's version.
  void Changed(fuse_ino_t ino);
  // Runs `store` (which hands `p` to the kernel) if `p`'s ticket is still good, holding off
  // every change until it returns. True if it ran.
  bool StoreIfCurrent(const PageStore& p, const std::function<void()>& store);

  // Inodes with a change or a writer on record; beyond this the record is dropped (every
  // ticket taken before then is refused).
  static constexpr std::size_t kMaxInodes = 4096;

 private:
  struct State {
    std::uint32_t writers = 0;
    std::uint64_t changed = 0;  // clock_ at its last change
  };
  void Bump(fuse_ino_t ino) REQUIRES(mu_);

  Mutex store_mu_;  // held across a store and by every change; taken before mu_
  Mutex mu_;        // leaf
  std::uint64_t clock_ GUARDED_BY(mu_) = 0;
  std::uint64_t floor_ GUARDED_BY(mu_) = 0;  // the last change of an inode not in inodes_
  std::unordered_map<fuse_ino_t, State> inodes_ GUARDED_BY(mu_);
  std::unordered_map<std::uint64_t, fuse_ino_t> writer_handles_ GUARDED_BY(mu_);
};

}  // namespace foreverfs::fuse
