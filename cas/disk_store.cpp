// Chunks as files: root/ab/<64 hex digits>, where ab is the id's first byte (256 shard
// directories, made when the store is opened, as git lays out its objects). A Put writes
// root/tmp/<unique> and renames it into place, so after a crash of the process
// the final name holds either nothing or the complete chunk. Put does not fsync: Sync makes
// every chunk so far durable with one syncfs(2), which is what FileServer does on fsync(2)
// before the namespace is synced (a file system does the same: durable after fsync, not after
// write). A chunk that a power failure cut short fails its GCM tag on read and is fetched again
// from a peer. Files left in root/tmp/ by a crash are removed when the store is opened.
//
// Stores before 2026-12 used two levels, root/ab/cd/<64 hex>: 65,536 leaf directories, so that
// nearly every put of a store with fewer chunks than that made a directory too (an inode
// allocation and a directory block, as costly as the chunk file itself: `tar -x` of small files
// made two inodes per file). Open moves such a store's chunks up one level once (a rename
// each, resumable after a crash) and then writes root/layout; a store with that file is not
// scanned again. Going back to an older version means moving them down again by hand.
//
// Blobs of at most kMaxSmallBlob bytes (every chunk of a file of up to 64 KiB) are not files:
// they are rows of root/small.db (SmallChunks, small_chunks.h), which saves the inode, the
// directory entry and the rename that a file per chunk costs each small file. Reads look for
// the file first, then the row, so chunk files an older version wrote for small blobs are read
// (and removed) as before; a Put that finds one of another size replaces it with a row.
//
// Thread-safe: its only state beyond the file system is a bounded cache of open chunk files for
// reads (OpenChunks) and the database's connection (behind its own mutex); concurrent Puts of one
// id each rename a complete file over the other, which is harmless.

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <memory>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

#include "base/fd.h"
#include "base/mutex.h"
#include "cas/chunk_store.h"
#include "cas/small_chunks.h"

namespace foreverfs::cas {
namespace {

namespace fs = std::filesystem;

// A stored blob may exceed a chunk by the framing of the wrappers (version byte, tag).
constexpr std::size_t kMaxBlobSize = kMaxChunkSize + kMaxBlobOverhead;
constexpr std::string_view kTmpDir = "tmp";
// Written once the store has the one-level layout; its content is for people.
constexpr std::string_view kLayoutFile = "layout";
constexpr std::string_view kLayoutText = "chunks/<2 hex>/<64 hex>\n";
// Blobs of at most kMaxSmallBlob bytes (small_chunks.h).
constexpr std::string_view kSmallDb = "small.db";
// Present in a store made by a version that keeps every blob of at most kMaxSmallBlob bytes as
// a row (made when the store is, and only then): no chunk file of that size exists, so a Put of
// a small blob need not look for one (an older version's, to replace). Its content is for people.
constexpr std::string_view kRowsOnlyFile = "small-blobs-are-rows";
constexpr std::string_view kRowsOnlyText =
    "Every chunk of at most 64 KiB in this store is a row of small.db, none a file.\n";

bool IsLowerHex(std::string_view s, std::size_t len) {
  if (s.size() != len) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Status MakeDir(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, fmt::format("creating directory '{}'", dir.string()));
  }
  return Ok();
}

Status WriteAll(int fd, ByteSpan data, const fs::path& path) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, fmt::format("writing '{}'", path.string()));
    }
    done += static_cast<std::size_t>(n);
  }
  return Ok();
}

// Chunk files kept open for reads, least recently used out first: a 4 KiB random read used to
// build the chunk's path, open, check and close its file each time (15% of the daemon in fio
// random reads). A hit checks the file with fstat: a file removed or replaced since (a Put that
// heals a short file renames over it; GC and trim unlink) has no links left and is reopened
// by path, so the cache never serves a file the store no longer names.
class OpenChunks {
 public:
  explicit OpenChunks(std::size_t capacity) : capacity_(capacity) {}

  std::shared_ptr<const UniqueFd> Find(const ChunkId& id) {
    MutexLock lock(mu_);
    auto it = map_.find(id);
    if (it == map_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return it->second.fd;
  }
  // Erase calls so far: a reader that opened a file before one of them (a Remove racing its
  // open) does not insert it, which would keep a removed file's space and descriptor.
  std::uint64_t Generation() {
    MutexLock lock(mu_);
    return generation_;
  }
  void Insert(const ChunkId& id, std::shared_ptr<const UniqueFd> fd, std::uint64_t generation) {
    if (capacity_ == 0) return;
    MutexLock lock(mu_);
    if (generation != generation_) return;
    if (auto it = map_.find(id); it != map_.end()) {
      it->second.fd = std::move(fd);
      return;
    }
    if (map_.size() >= capacity_) {
      map_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(id);
    map_.emplace(id, Entry{std::move(fd), lru_.begin()});
  }
  void Erase(const ChunkId& id) {
    MutexLock lock(mu_);
    ++generation_;
    if (auto it = map_.find(id); it != map_.end()) {
      lru_.erase(it->second.pos);
      map_.erase(it);
    }
  }

 private:
  struct Hash {
    std::size_t operator()(const ChunkId& id) const {
      std::size_t h;  // ids are hashes: any 8 of their bytes are as good as a hash of them
      std::memcpy(&h, id.data(), sizeof h);
      return h;
    }
  };
  struct Entry {
    std::shared_ptr<const UniqueFd> fd;  // readers hold their own reference while they read
    std::list<ChunkId>::iterator pos;
  };
  const std::size_t capacity_;
  // A leaf. Nothing is opened or read under it; an evicted file nobody reads is closed under
  // it (close(2) of a regular file does not wait on the disk).
  Mutex mu_;
  std::uint64_t generation_ GUARDED_BY(mu_) = 0;
  std::list<ChunkId> lru_ GUARDED_BY(mu_);
  std::unordered_map<ChunkId, Entry, Hash> map_ GUARDED_BY(mu_);
};

class DiskChunkStore final : public ChunkStore {
 public:
  DiskChunkStore(fs::path root, std::size_t open_files, std::size_t small_blobs)
      : root_(std::move(root)), tmp_(root_ / kTmpDir), open_(open_files), small_max_(small_blobs) {}

  // Creates the root, tmp and the 256 shard directories, removes stale temp files and moves
  // the chunks of a two-level store up one level.
  Status Open() {
    std::error_code ec;
    // A store made now: nothing in it yet (not even small.db or the shard directories).
    const bool fresh = !fs::exists(root_, ec) || fs::is_empty(root_, ec);
    fs::create_directories(root_, ec);
    if (ec) return ErrnoStatus(ec.value(), fmt::format("creating store '{}'", root_.string()));
    if (Status s = MakeDir(tmp_); !s.ok()) return s;
    for (fs::directory_iterator it(tmp_, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code rm_ec;
      fs::remove_all(it->path(), rm_ec);
      if (rm_ec) {
        return ErrnoStatus(rm_ec.value(),
                           fmt::format("removing stale temp file '{}'", it->path().string()));
      }
    }
    if (ec) return ErrnoStatus(ec.value(), fmt::format("listing '{}'", tmp_.string()));
    root_fd_ = UniqueFd(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!root_fd_.valid()) return ErrnoStatus(errno, fmt::format("opening '{}'", root_.string()));
    for (int b = 0; b < 256; ++b) {
      if (Status s = MakeDir(root_ / fmt::format("{:02x}", b)); !s.ok()) return s;
    }
    auto small = SmallChunks::Open(root_ / kSmallDb);
    if (!small.ok()) return small.status();
    small_ = std::move(*small);
    // Only a store that has always kept every small blob as a row may skip looking for files.
    const fs::path rows_only = root_ / kRowsOnlyFile;
    if (small_max_ != kMaxSmallBlob) {
      if (::unlink(rows_only.c_str()) != 0 && errno != ENOENT) {
        return ErrnoStatus(errno, fmt::format("removing '{}'", rows_only.string()));
      }
    } else if (fresh) {
      // Lost in a crash, it only costs the look (the store then counts as an older one's).
      if (Status s = WriteSmallFile(rows_only, kRowsOnlyText); !s.ok()) return s;
    }
    rows_only_ = Exists(rows_only);
    if (Exists(root_ / kLayoutFile)) return Ok();
    return MoveToOneLevel();
  }
  Status Sync() override {
    if (::syncfs(root_fd_.get()) != 0) {
      return ErrnoStatus(errno, fmt::format("syncing the file system of '{}'", root_.string()));
    }
    return Ok();
  }

  Status Put(const ChunkId& id, ByteSpan data) override {
    if (data.size() > kMaxBlobSize) {
      return Err(Code::kInvalid, "chunk {} of {} bytes exceeds the maximum of {}", Hex(id),
                 data.size(), kMaxBlobSize);
    }
    // A store with no small chunk file (kRowsOnlyFile): a row at once, nothing to look for.
    if (rows_only_ && data.size() <= small_max_) return small_->Put(id, data);
    const fs::path final_path = PathOf(id);
    // Present and whole: nothing to do. A file of another size (left empty by a power failure
    // after its rename, say) is replaced, so a later write of the same content heals it.
    struct stat st {};
    const bool file = ::stat(final_path.c_str(), &st) == 0;
    if (file && static_cast<std::size_t>(st.st_size) == data.size()) return Ok();
    // Small blobs are rows of one database, not files (small_chunks.h). A chunk file of
    // another size (an older version's, cut short) goes, so that no id is both.
    if (small_max_ != 0 && data.size() <= small_max_) {
      if (Status s = small_->Put(id, data); !s.ok()) return s;
      if (!file) return Ok();
      // Reads find the file first: one left in place would hide the row.
      const int rc = ::unlink(final_path.c_str());
      const int err = errno;
      open_.Erase(id);
      if (rc != 0 && err != ENOENT) {
        return ErrnoStatus(err, fmt::format("removing '{}'", final_path.string()));
      }
      return Ok();
    }
    // Directories are made by Open; here only when a call finds them missing (ENOENT): mkdir
    // calls that fail with EEXIST on every put were 6.5% of the daemon's time in `tar -x` of
    // small files (each takes the parent directory's lock).
    const fs::path tmp_path = tmp_ / fmt::format("{}.{:016x}", Hex(id), crypto::RandomU64());
    const auto create_tmp = [&] {
      return ::open(tmp_path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    };
    UniqueFd fd(create_tmp());
    if (!fd.valid() && errno == ENOENT) {  // the tmp directory was removed under us
      if (Status s = MakeDir(tmp_); !s.ok()) return s;
      fd.reset(create_tmp());
    }
    if (!fd.valid()) {
      return ErrnoStatus(errno, fmt::format("creating '{}'", tmp_path.string()));
    }
    Status s = WriteAll(fd.get(), data, tmp_path);
    if (s.ok() && ::close(fd.release()) != 0) {
      s = ErrnoStatus(errno, fmt::format("closing '{}'", tmp_path.string()));
    }
    if (s.ok()) {
      int rc = ::rename(tmp_path.c_str(), final_path.c_str());
      if (rc != 0 && errno == ENOENT) {  // its shard was removed since Open (by hand)
        s = MakeDir(final_path.parent_path());
        if (s.ok()) rc = ::rename(tmp_path.c_str(), final_path.c_str());
      }
      if (s.ok() && rc != 0) {
        s = ErrnoStatus(
            errno, fmt::format("renaming '{}' to '{}'", tmp_path.string(), final_path.string()));
      }
    }
    if (!s.ok()) {
      fd.reset();
      ::unlink(tmp_path.c_str());
      return s;
    }
    open_.Erase(id);  // a file it replaced is not read again (a hit would also see no links)
    return Ok();
  }

  // Opens the chunk's file (OpenChunk) and keeps it in the descriptor cache for the next read
  // of this chunk, which reads a part at a time where a small read wants it: the kernel's
  // read-ahead would only cost (POSIX_FADV_RANDOM). Returns it with its size.
  Result<std::pair<std::shared_ptr<const UniqueFd>, std::size_t>> OpenAndKeep(const ChunkId& id) {
    const std::uint64_t generation = open_.Generation();
    auto opened = OpenChunk(id, PathOf(id));
    if (!opened.ok()) return opened.status();
    ::posix_fadvise(opened->first.get(), 0, 0, POSIX_FADV_RANDOM);
    auto fd = std::make_shared<const UniqueFd>(std::move(opened->first));
    open_.Insert(id, fd, generation);
    return std::pair{std::move(fd), opened->second};
  }

  // Opens the chunk's file and checks that it is a regular file of a possible size.
  Result<std::pair<UniqueFd, std::size_t>> OpenChunk(const ChunkId& id, const fs::path& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      if (errno == ENOENT) return Err(Code::kNotFound, "chunk {} not found", Hex(id));
      return ErrnoStatus(errno, fmt::format("opening '{}'", path.string()));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      return ErrnoStatus(errno, fmt::format("checking '{}'", path.string()));
    }
    auto size = ChunkFileSize(st, path);
    if (!size.ok()) return size.status();
    return std::pair{std::move(fd), *size};
  }

  // The size of a chunk file, if it is a regular file of a possible size.
  static Result<std::size_t> ChunkFileSize(const struct stat& st, const fs::path& path) {
    if (!S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) > kMaxBlobSize) {
      return Err(Code::kCorruption, "chunk file '{}' is not a regular file of at most {} bytes",
                 path.string(), kMaxBlobSize);
    }
    return static_cast<std::size_t>(st.st_size);
  }

  Result<Extent> ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out) override {
    if (out.empty()) {
      const fs::path path = PathOf(id);
      // Only the size (whether a chunk is stored whole, before every put): one stat, the same
      // checks as OpenChunk.
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return small_->ReadAt(id, 0, out);
        return ErrnoStatus(errno, fmt::format("checking '{}'", path.string()));
      }
      auto size = ChunkFileSize(st, path);
      if (!size.ok()) return size.status();
      return Extent{0, *size};
    }
    std::shared_ptr<const UniqueFd> fd;
    std::size_t size = 0;
    if (auto cached = open_.Find(id)) {
      struct stat st {};
      if (::fstat(cached->get(), &st) == 0 && st.st_nlink > 0) {
        // The path only for the error (building it per hit was 3% of 4 KiB random reads).
        if (!S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) > kMaxBlobSize) {
          return ChunkFileSize(st, PathOf(id)).status();
        }
        fd = std::move(cached);
        size = static_cast<std::size_t>(st.st_size);
      } else {
        open_.Erase(id);
      }
    }
    if (!fd) {
      auto opened = OpenAndKeep(id);
      if (!opened.ok() && opened.status().code() == Code::kNotFound) {
        return small_->ReadAt(id, offset, out);
      }
      if (!opened.ok()) return opened.status();
      std::tie(fd, size) = std::move(*opened);
    }
    Extent e{0, size};
    if (offset >= size) return e;
    const std::size_t want = std::min(out.size(), size - offset);
    while (e.n < want) {
      ssize_t n =
          ::pread(fd->get(), out.data() + e.n, want - e.n, static_cast<off_t>(offset + e.n));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, fmt::format("reading '{}'", PathOf(id).string()));
      }
      if (n == 0) {
        return Err(Code::kCorruption, "chunk file '{}' shrank while it was read",
                   PathOf(id).string());
      }
      e.n += static_cast<std::size_t>(n);
    }
    return e;
  }

  void Prefetch(const ChunkId& id) override {
    // Through the descriptor cache, so the read that follows finds the file open.
    std::shared_ptr<const UniqueFd> fd = open_.Find(id);
    if (!fd) {
      auto opened = OpenAndKeep(id);
      if (!opened.ok()) return;
      fd = std::move(opened->first);
    }
    // WILLNEED reads the range whatever the RANDOM hint says, without waiting for it.
    ::posix_fadvise(fd->get(), 0, 0, POSIX_FADV_WILLNEED);
  }

  Result<Bytes> Get(const ChunkId& id) override {
    const fs::path path = PathOf(id);
    auto opened = OpenChunk(id, path);
    if (!opened.ok() && opened.status().code() == Code::kNotFound) return small_->Get(id);
    if (!opened.ok()) return opened.status();
    auto& [fd, size] = *opened;
    // Read up to one byte past the limit so that a file that grew since fstat is caught too.
    Bytes out(size + 1);
    std::size_t got = 0;
    for (;;) {
      if (got == out.size()) {
        if (out.size() > kMaxBlobSize) {
          return Err(Code::kCorruption, "chunk file '{}' is larger than {} bytes", path.string(),
                     kMaxBlobSize);
        }
        out.resize(std::min(out.size() * 2, kMaxBlobSize + 1));
      }
      ssize_t n = ::read(fd.get(), out.data() + got, out.size() - got);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus(errno, fmt::format("reading '{}'", path.string()));
      }
      if (n == 0) break;
      got += static_cast<std::size_t>(n);
    }
    out.resize(got);
    return out;
  }

  bool Has(const ChunkId& id) override { return Exists(PathOf(id)) || small_->Has(id); }

  Status Remove(const ChunkId& id) override {
    const fs::path path = PathOf(id);
    const int rc = ::unlink(path.c_str());
    const int err = errno;
    // After the unlink: a reader that opened the file before it either inserted it already
    // (dropped here) or sees the generation move and does not.
    open_.Erase(id);
    if (rc != 0 && err != ENOENT) {
      return ErrnoStatus(err, fmt::format("removing '{}'", path.string()));
    }
    auto row = small_->Remove(id);
    return row.ok() ? Ok() : row.status();
  }

  Status ForEach(const std::function<void(const ChunkId&)>& fn) override {
    std::error_code ec;
    for (fs::directory_iterator a(root_, ec), end; !ec && a != end; a.increment(ec)) {
      const std::string an = a->path().filename().string();
      if (!IsLowerHex(an, 2) || !a->is_directory()) continue;
      for (fs::directory_iterator c(a->path(), ec); !ec && c != end; c.increment(ec)) {
        const std::string cn = c->path().filename().string();
        if (!IsLowerHex(cn, 64) || cn.compare(0, 2, an) != 0) continue;
        if (auto id = crypto::DigestFromHex(cn)) fn(*id);
      }
      if (ec) return ErrnoStatus(ec.value(), fmt::format("listing '{}'", a->path().string()));
    }
    if (ec) return ErrnoStatus(ec.value(), fmt::format("listing '{}'", root_.string()));
    return small_->ForEach(fn);
  }

  Packed PackedUsage() override { return small_->Usage(); }
  Status BeforeFork() override { return small_->BeforeFork(); }

 private:
  fs::path PathOf(const ChunkId& id) const {
    const std::string hex = Hex(id);
    return root_ / hex.substr(0, 2) / hex;
  }

  // Moves every chunk of the two-level layout (root/ab/cd/<hex>) to root/ab/<hex>, removes the
  // emptied directories, makes the moves durable and then writes the layout file. After a
  // crash on the way the next Open finds no layout file and goes on where this stopped. Names
  // that are no chunk of their directory stay where they are (and keep their directory).
  Status MoveToOneLevel() {
    std::uint64_t moved = 0;
    auto last_note = std::chrono::steady_clock::now();
    std::error_code ec;
    for (int b = 0; b < 256; ++b) {
      const std::string an = fmt::format("{:02x}", b);
      const fs::path top = root_ / an;
      std::vector<fs::path> leaves;
      for (fs::directory_iterator it(top, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string bn = it->path().filename().string();
        std::error_code dec;
        if (IsLowerHex(bn, 2) && it->is_directory(dec)) leaves.push_back(it->path());
      }
      if (ec) return ErrnoStatus(ec.value(), fmt::format("listing '{}'", top.string()));
      for (const fs::path& leaf : leaves) {
        const std::string bn = leaf.filename().string();
        bool left = false;
        for (fs::directory_iterator it(leaf, ec), end; !ec && it != end; it.increment(ec)) {
          const std::string cn = it->path().filename().string();
          if (!IsLowerHex(cn, 64) || cn.compare(0, 2, an) != 0 || cn.compare(2, 2, bn) != 0) {
            left = true;
            continue;
          }
          const fs::path to = top / cn;
          if (::rename(it->path().c_str(), to.c_str()) != 0) {
            return ErrnoStatus(
                errno, fmt::format("moving chunk '{}' to '{}'", it->path().string(), to.string()));
          }
          ++moved;
          if (std::chrono::steady_clock::now() - last_note > std::chrono::seconds(5)) {
            last_note = std::chrono::steady_clock::now();
            spdlog::info("chunk store '{}': {} chunks moved to the one-level layout so far",
                         root_.string(), moved);
          }
        }
        if (ec) return ErrnoStatus(ec.value(), fmt::format("listing '{}'", leaf.string()));
        if (left) {
          spdlog::warn("chunk store: '{}' holds names that are not its chunks; left as they are",
                       leaf.string());
        } else if (::rmdir(leaf.c_str()) != 0 && errno != ENOENT) {
          return ErrnoStatus(errno, fmt::format("removing '{}'", leaf.string()));
        }
      }
    }
    // The moves reach the disk before the file that says they are done.
    if (moved > 0 && ::syncfs(root_fd_.get()) != 0) {
      return ErrnoStatus(errno, fmt::format("syncing the file system of '{}'", root_.string()));
    }
    if (Status s = WriteSmallFile(root_ / kLayoutFile, kLayoutText); !s.ok()) return s;
    if (moved > 0) {
      spdlog::info("chunk store '{}': {} chunks moved to the one-level layout (once)",
                   root_.string(), moved);
    }
    return Ok();
  }

  // Creates (or replaces) `path` holding `text`.
  static Status WriteSmallFile(const fs::path& path, std::string_view text) {
    UniqueFd fd(::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600));
    if (!fd.valid()) return ErrnoStatus(errno, fmt::format("creating '{}'", path.string()));
    return WriteAll(fd.get(), AsBytes(text), path);
  }

  static bool Exists(const fs::path& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
  }

  const fs::path root_;
  const fs::path tmp_;
  UniqueFd root_fd_;
  OpenChunks open_;
  const std::size_t small_max_;
  std::unique_ptr<SmallChunks> small_;  // set by Open
  bool rows_only_ = false;              // set by Open: kRowsOnlyFile is there
};

}  // namespace

std::size_t DefaultOpenChunkFiles() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return 1024;
  // A sixteenth of the descriptors at most: peer links, FUSE requests and staging files need
  // the rest (a 1 GiB file is 1,024 chunks).
  return std::min<std::size_t>(1024, static_cast<std::size_t>(lim.rlim_cur / 16));
}

Result<std::unique_ptr<ChunkStore>> MakeDiskStore(const std::filesystem::path& root,
                                                  std::optional<std::size_t> open_files,
                                                  std::size_t small_blobs) {
  auto store = std::make_unique<DiskChunkStore>(root, open_files.value_or(DefaultOpenChunkFiles()),
                                                std::min(small_blobs, kMaxSmallBlob));
  if (Status s = store->Open(); !s.ok()) return s;
  return std::unique_ptr<ChunkStore>(std::move(store));
}

}  // namespace foreverfs::cas
