#include "server/open_file.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <future>

namespace foreverfs::server {
namespace {

constexpr std::uint64_t kCS = cas::kChunkSize;
// The smallest read taken for a sequential reader's (OpenFile::Read).
constexpr std::size_t kSequentialRead = 64 * 1024;

}  // namespace

OpenFile::OpenFile(FileHost& host, const InodeRecord& rec)
    : host_(host),
      id_(rec.id),
      ns_mu_(host.NamespaceMutex()),
      manifest_(rec.manifest),
      base_clock_(rec.content_clock),
      record_(rec),
      version_(rec.version),
      size_(rec.size),
      mtime_ns_(rec.mtime_ns),
      pipeline_(host) {}

OpenFile::~OpenFile() {
  (void)Reap(0);
  pipeline_.Drop();
}

Result<bool> OpenFile::TryBuffer(std::uint64_t i, std::size_t in, ByteSpan data,
                                 std::uint64_t old_size) {
  if (pipeline_.Continues(i, in)) {
    pipeline_.Append(data);
  } else {
    if (pipeline_.index() == i) {  // a write elsewhere in the buffered chunk
      if (auto s = SpillBuffer(); !s.ok()) return s;
      if (auto s = Reap(0); !s.ok()) return s;
      return false;
    }
    // A buffer starts at a chunk's first byte, where nothing of the old chunk would survive
    // (the chunk's end past the buffer then reads as zeros) and staging holds nothing.
    const std::uint64_t start = i * kCS;
    const std::uint64_t old_valid =
        manifest_.IsHole(i) || start >= old_size ? 0 : std::min(kCS, old_size - start);
    if (in != 0 || dirty_.contains(i) || written_.contains(i) || old_valid > data.size())
      return false;
    if (pipeline_.index() != WritePipeline::kNone) {
      if (auto s = SpillBuffer(); !s.ok()) return s;
    }
    if (!pipeline_.Start(i, data)) return false;
  }
  if (pipeline_.full()) {
    // A chunk the store refuses goes to staging (Reap): the commit tries again and reports
    // the error, so a write never leaves half a version committed. An error here means even
    // staging failed.
    if (auto s = StoreBuffer(); !s.ok()) return s;
  }
  return true;
}

Status OpenFile::StoreBuffer(bool background) {
  pipeline_.Submit(ChunkLen(pipeline_.index()), background);
  return Reap(WritePipeline::kMaxInFlight);
}

Status OpenFile::Reap(std::size_t keep) {
  return pipeline_.Reap(
      keep,
      [this](std::uint64_t index, const Result<cas::ChunkId>& id, const Bytes& data)
          REQUIRES(mu_) -> Status {
            if (id.ok()) {
              manifest_.Set(index, *id);
              ForgetDirty(index, index + 1);
              return Ok();
            }
            // Not lost: into staging, where the commit stores it again (and reports the
            // error).
            spdlog::warn("inode {:016x}: storing chunk {} failed, kept in staging: {}", id_, index,
                         id.status().message());
            Status s = EnsureStaging();
            if (!s.ok()) return s;  // no staging either: the write that gets this error failed
            s = staging_->Write(Slot(index), data);
            partial_.erase(index);  // all of it in staging (it never is partial: see Write)
            dirty_.insert(index);   // a failed write leaves its pages unreadable, never stale
            written_.insert(index);
            return s;
          });
}

Status OpenFile::SpillBuffer() {
  if (pipeline_.index() == WritePipeline::kNone) return Ok();
  const std::uint64_t i = pipeline_.index();
  if (auto s = EnsureStaging(); !s.ok()) return s;
  if (auto s = staging_->Write(Slot(i), pipeline_.buffer()); !s.ok()) return s;
  partial_.erase(i);
  dirty_.insert(i);
  written_.insert(i);
  pipeline_.Drop();
  return Ok();
}

void OpenFile::ForgetPast(std::uint64_t size) {
  const std::uint64_t n = (size + kCS - 1) / kCS;
  manifest_.KeepFirst(n);
  ForgetDirty(n, kNone);
  written_.erase(written_.lower_bound(n), written_.end());
}

void OpenFile::ForgetDirty(std::uint64_t first, std::uint64_t last) {
  dirty_.erase(dirty_.lower_bound(first), dirty_.lower_bound(last));
  partial_.erase(partial_.lower_bound(first), partial_.lower_bound(last));
}

template <typename F>
Status OpenFile::ForEachRun(const Partial& p, std::uint64_t from, std::uint64_t to, F&& f) {
  while (from < to) {
    const bool staged = p.staged[static_cast<std::size_t>(from / kPage)];
    std::uint64_t run_end = (from / kPage + 1) * kPage;
    while (run_end < to && p.staged[static_cast<std::size_t>(run_end / kPage)] == staged) {
      run_end += kPage;
    }
    run_end = std::min(run_end, to);
    if (auto s = f(staged, from, run_end); !s.ok()) return s;
    from = run_end;
  }
  return Ok();
}

Status OpenFile::FillPage(std::uint64_t i, Partial& p, std::uint64_t page) {
  std::array<std::uint8_t, kPage> bytes{};
  const std::uint64_t at = page * kPage;
  if (at < p.base_len) {
    const auto n = static_cast<std::size_t>(std::min(kPage, p.base_len - at));
    if (auto s =
            host_.ReadChunk(p.base, static_cast<std::size_t>(at), MutableByteSpan(bytes.data(), n));
        !s.ok()) {
      return s;
    }
  }
  // Staged only once written: after a failed write the page is still the old chunk's.
  Status s = staging_->Write(Slot(i) + at, ByteSpan(bytes.data(), bytes.size()));
  if (s.ok()) p.staged.set(static_cast<std::size_t>(page));
  return s;
}

Status OpenFile::StagePartial(std::uint64_t i, std::uint64_t in, ByteSpan data) {
  Partial& p = partial_.at(i);
  const std::uint64_t end = in + data.size();
  const std::uint64_t first = in / kPage, last = (end - 1) / kPage;
  // The pages the write covers only in part come in whole first (StagingFile keeps the bytes
  // around a write from what it holds, which for a page not staged is not the file's).
  for (const std::uint64_t page : {first, last}) {
    const bool cut = in > page * kPage || end < (page + 1) * kPage;
    if (cut && !p.staged[static_cast<std::size_t>(page)]) {
      if (auto s = FillPage(i, p, page); !s.ok()) return s;
    }
    if (first == last) break;
  }
  const auto filled = p.staged;
  for (std::uint64_t page = first; page <= last; ++page) {
    p.staged.set(static_cast<std::size_t>(page));
  }
  Status s = staging_->Write(Slot(i) + in, data);
  // A failed write leaves the pages it covers the old chunk's again (StagingFile takes every
  // one of them as lost, whether it reached it or not); pages staged before it that it
  // touched read as errors, never as wrong bytes.
  if (!s.ok()) p.staged = filled;
  if (p.staged.all()) partial_.erase(i);  // staging holds all of it now
  return s;
}

Status OpenFile::MergePartial(std::uint64_t i, const Partial& p, MutableByteSpan out) {
  // The base whole (each segment decrypted once, in the pieces CopyChunk reads through
  // buffers it keeps), unless staging covers it.
  const auto have = static_cast<std::size_t>(std::min<std::uint64_t>(p.base_len, out.size()));
  bool needs_base = false;
  for (std::uint64_t page = 0; page * kPage < have && !needs_base; ++page) {
    needs_base = !p.staged[static_cast<std::size_t>(page)];
  }
  if (needs_base) {
    auto s = host_.CopyChunk(p.base, have, [&](std::uint64_t at, ByteSpan piece) {
      std::memcpy(out.data() + at, piece.data(), piece.size());
      return Ok();
    });
    if (!s.ok()) return s;
  }
  std::memset(out.data() + have, 0, out.size() - have);
  const std::uint64_t slot = Slot(i);
  return ForEachRun(
      p, 0, out.size(), [&](bool staged, std::uint64_t a, std::uint64_t b) REQUIRES(mu_) {
        if (!staged) return Ok();
        return staging_->Read(
            slot + a, out.subspan(static_cast<std::size_t>(a), static_cast<std::size_t>(b - a)));
      });
}

bool OpenFile::HasData(std::uint64_t i) const {
  return pipeline_.Holds(i) || dirty_.contains(i) || !manifest_.IsHole(i);
}

Status OpenFile::CheckDataChunk(std::uint64_t i) const {
  // Counted generously (a dirty chunk may also be in the manifest): the limit keeps every
  // record within one frame, it need not be exact.
  if (manifest_.size() + dirty_.size() + pipeline_.in_flight() + 1 < model::kMaxDataChunks ||
      HasData(i)) {
    return Ok();
  }
  return Err(Code::kTooBig, "inode {:016x}: a file holds at most {} GiB of data", id_,
             model::kMaxDataChunks * kCS >> 30);
}

std::uint64_t OpenFile::ChunkLen(std::uint64_t index) const {
  std::uint64_t start = index * kCS;
  return start >= size_ ? 0 : std::min(kCS, size_ - start);
}

std::uint64_t OpenFile::Slot(std::uint64_t i) {
  auto [it, added] = slots_.try_emplace(i, next_slot_ * kCS);
  if (added) ++next_slot_;
  return it->second;
}

Status OpenFile::EnsureStaging() {
  if (staging_) return Ok();
  auto f = StagingFile::Create(host_.StagingDir());
  if (!f.ok()) return f.status();
  staging_.emplace(std::move(*f));
  return Ok();
}

Status OpenFile::Materialize(std::uint64_t index) {
  if (auto s = EnsureStaging(); !s.ok()) return s;
  if (written_.contains(index)) {
    // Whatever staging holds for this chunk is stale: clear it.
    if (auto s = staging_->Zero(Slot(index), kCS); !s.ok()) return s;
  }
  if (!manifest_.IsHole(index)) {
    // A piece at a time: a megabyte buffer per copy (three, with the store's) is an mmap and
    // its page faults for every chunk a random writer touches first.
    const std::uint64_t slot = Slot(index);
    auto s = host_.CopyChunk(manifest_.Get(index), ChunkLen(index),
                             [&](std::uint64_t at, ByteSpan piece)
                                 REQUIRES(mu_) { return staging_->Write(slot + at, piece); });
    if (!s.ok()) return s;
  }
  dirty_.insert(index);
  written_.insert(index);
  return Ok();
}

Result<std::size_t> OpenFile::Read(std::uint64_t offset, MutableByteSpan out, ReadWindow* window) {
  // Parts of committed chunks are read after mu_ is let go: a chunk's bytes never change (its
  // id is its content), so the lock only decides where each part comes from. Reads of one
  // file then overlap (the kernel's read-ahead has several in flight: one decrypts while the
  // next waits for the disk), and a read waiting for a peer's chunk holds up nobody. A write
  // racing with the read is ordered after it, as it would be had it come a moment later.
  struct FromChunk {
    cas::ChunkId id;
    std::size_t in;
    std::uint8_t* dst;
    std::size_t n;
  };
  std::vector<FromChunk> from_chunks;
  std::vector<cas::ChunkId> prefetch;
  std::size_t len = 0;
  bool any_partial = false;  // no read window then: its segment may hold staged pages
  if (window) window->n = 0;
  {
    MutexLock lock(mu_);
    AdoptRemote();
    if (offset >= size_) return std::size_t{0};
    len = static_cast<std::size_t>(std::min<std::uint64_t>(out.size(), size_ - offset));
    std::size_t done = 0;
    while (done < len) {
      const std::uint64_t pos = offset + done;
      const std::uint64_t i = pos / kCS;
      const std::size_t in = static_cast<std::size_t>(pos % kCS);
      const std::size_t n = std::min<std::size_t>(len - done, kCS - in);
      std::uint8_t* dst = out.data() + done;
      if (const Bytes* gathered = pipeline_.Gathered(i)) {
        const Bytes& b = *gathered;
        std::size_t avail = in < b.size() ? std::min(n, b.size() - in) : 0;
        if (avail) std::memcpy(dst, b.data() + in, avail);
        if (avail < n) std::memset(dst + avail, 0, n - avail);
      } else if (auto part = partial_.find(i); part != partial_.end()) {
        // Staged pages from staging now; the others from the old chunk after mu_ is let go,
        // like any committed chunk (zeros past the part of it that is the file's).
        any_partial = true;
        const Partial& p = part->second;
        const std::uint64_t slot = Slot(i);
        auto s = ForEachRun(
            p, in, in + n,
            [&](bool staged, std::uint64_t a, std::uint64_t b) REQUIRES(mu_) -> Status {
              std::uint8_t* to = dst + (a - in);
              if (staged) return staging_->Read(slot + a, MutableByteSpan(to, b - a));
              const std::uint64_t valid = std::clamp(p.base_len, a, b);
              if (valid > a)
                from_chunks.push_back({p.base, static_cast<std::size_t>(a), to, valid - a});
              std::memset(to + (valid - a), 0, b - valid);
              return Ok();
            });
        if (!s.ok()) return s;
      } else if (dirty_.contains(i)) {
        if (auto s = staging_->Read(Slot(i) + in, MutableByteSpan(dst, n)); !s.ok()) return s;
      } else if (manifest_.IsHole(i)) {
        std::memset(dst, 0, n);
      } else {
        // Only the part asked for: a 4 KiB read opens one 16 KiB segment, not the whole chunk.
        from_chunks.push_back({manifest_.Get(i), in, dst, n});
        // A large read at a chunk's start is the kernel's read-ahead of a sequential reader
        // (128 KiB at a time): the rest of this chunk and the whole next one are read from
        // disk now, beside the decryption of what comes before (chunk files are read without
        // the kernel's read-ahead, which would only cost for the small reads).
        if (in == 0 && n >= kSequentialRead) {
          if (prefetch.empty() || prefetch.back() != manifest_.Get(i)) {
            prefetch.push_back(manifest_.Get(i));
          }
          if (i + 1 < (size_ + kCS - 1) / kCS && !pipeline_.Holds(i + 1) &&
              !dirty_.contains(i + 1) && !manifest_.IsHole(i + 1)) {
            prefetch.push_back(manifest_.Get(i + 1));
          }
        }
      }
      done += n;
    }
    // The whole segment instead of the part, when the part is all of the read and lies inside
    // one segment: the same disk read and decryption, and the rest is worth keeping.
    if (window && !any_partial && from_chunks.size() == 1 && from_chunks[0].n == len) {
      const FromChunk& c = from_chunks[0];
      const std::uint64_t chunk_start = offset - c.in;
      const std::size_t seg = c.in / ReadWindow::kSize * ReadWindow::kSize;
      const std::size_t chunk_len =
          static_cast<std::size_t>(std::min<std::uint64_t>(kCS, size_ - chunk_start));
      const std::size_t seg_end = std::min(seg + ReadWindow::kSize, chunk_len);
      if (c.in + c.n <= seg_end && seg_end - seg > c.n && window->buf.size() >= seg_end - seg) {
        window->offset = chunk_start + seg;
        window->n = seg_end - seg;
        from_chunks[0] = {c.id, seg, window->buf.data(), window->n};
      }
    }
  }
  for (const cas::ChunkId& id : prefetch) host_.PrefetchChunk(id);
  for (const FromChunk& c : from_chunks) {
    if (auto s = host_.ReadChunk(c.id, c.in, MutableByteSpan(c.dst, c.n)); !s.ok()) {
      if (window) window->n = 0;
      return s;
    }
  }
  if (window && window->n) {
    std::memcpy(out.data(), window->buf.data() + (offset - window->offset), len);
  }
  return len;
}

Result<std::size_t> OpenFile::Write(std::uint64_t offset, ByteSpan data, bool append) {
  MutexLock lock(mu_);
  AdoptRemote();
  if (append) offset = size_;
  if (data.empty()) return std::size_t{0};
  if (offset >= model::kMaxFileSize) {
    return Err(Code::kTooBig, "inode {:016x}: write at {} is past the largest file size", id_,
               offset);
  }
  // As a local filesystem: the part below the limit is written (a short write).
  data = data.first(
      static_cast<std::size_t>(std::min<std::uint64_t>(data.size(), model::kMaxFileSize - offset)));
  const std::uint64_t end = offset + data.size();
  for (std::uint64_t i = offset / kCS; i <= (end - 1) / kCS; ++i) {
    if (auto s = CheckDataChunk(i); !s.ok()) return s;
  }
  if (pipeline_.InFlightAt(offset, end)) {
    if (auto s = Reap(0); !s.ok()) return s;
  }
  const std::uint64_t old_size = size_;
  // Chunk by chunk: the sequential buffer takes what it can, staging the rest.
  for (std::uint64_t pos = offset; pos < end;) {
    const std::uint64_t i = pos / kCS;
    const std::size_t in = static_cast<std::size_t>(pos % kCS);
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(end - pos, kCS - in));
    const ByteSpan part = data.subspan(static_cast<std::size_t>(pos - offset), n);
    size_ = std::max(size_, pos + n);  // the buffered chunk's length in the file
    auto buffered = TryBuffer(i, in, part, old_size);
    if (!buffered.ok()) return buffered.status();
    if (!*buffered) {
      if (auto s = StageWrite(i, pos, part, old_size); !s.ok()) return s;
    }
    pos += n;
  }
  size_ = std::max(size_, end);
  mtime_ns_ = host_.NowNs();
  changed_ = true;
  return data.size();
}

Status OpenFile::StageWrite(std::uint64_t i, std::uint64_t offset, ByteSpan data,
                            std::uint64_t old_size) {
  if (auto s = EnsureStaging(); !s.ok()) return s;
  const std::uint64_t end = offset + data.size();
  if (!dirty_.contains(i)) {
    const std::uint64_t start = i * kCS;
    const std::uint64_t old_valid =
        manifest_.IsHole(i) || start >= old_size ? 0 : std::min(kCS, old_size - start);
    const bool covers_old = offset <= start && end >= start + old_valid;
    const bool covers_all = offset <= start && end >= start + kCS;
    if (covers_old && (!written_.contains(i) || covers_all)) {
      dirty_.insert(i);  // nothing of the old chunk survives this write
      written_.insert(i);
    } else if (old_valid > 0 && !covers_old && host_.HasChunkLocally(manifest_.Get(i))) {
      // Only the pages written go to staging; the rest stay the old chunk's until the commit.
      // (Stale bytes in the slot, written_, are never read: only staged pages are.) Only for
      // an old chunk stored here: one held by peers alone is fetched now, by Materialize, so
      // that the write fails if no peer has it, and the commit, which may hold the namespace
      // lock, never waits on the network for it.
      partial_.insert_or_assign(i, Partial{manifest_.Get(i), old_valid, {}});
      dirty_.insert(i);
      written_.insert(i);
    } else if (auto s = Materialize(i); !s.ok()) {
      return s;
    }
  }
  if (partial_.contains(i)) return StagePartial(i, offset % kCS, data);
  return staging_->Write(Slot(i) + offset % kCS, data);
}

Status OpenFile::Truncate(std::uint64_t size) {
  if (size > model::kMaxFileSize) {
    return Err(Code::kTooBig, "inode {:016x}: size {} is over the largest file size ({})", id_,
               size, model::kMaxFileSize);
  }
  MutexLock lock(mu_);
  AdoptRemote();
  if (auto s = SpillBuffer(); !s.ok()) return s;
  // Chunks still being stored land in the manifest when reaped: take them in first, so that
  // none lands past the new end or under the staged copy of the chunk cut in two.
  if (auto s = Reap(0); !s.ok()) return s;
  if (size < size_) {
    const std::uint64_t k = size / kCS;
    if (size % kCS != 0 && !dirty_.contains(k)) {
      if (auto s = Materialize(k); !s.ok()) return s;
    }
    // Staging beyond the new end must read as zeros if the file grows again: the rest of the
    // cut chunk is zeroed, chunks past it lose their slots (a new slot reads as zeros).
    if (auto it = slots_.find(k); it != slots_.end() && size % kCS != 0) {
      if (auto s = staging_->Zero(it->second + size % kCS, kCS - size % kCS); !s.ok()) return s;
    }
    // A partial chunk keeps of its old chunk only what is still the file's (once nothing can
    // fail: a truncate that fails changes nothing).
    if (auto part = partial_.find(k); part != partial_.end()) {
      part->second.base_len = std::min(part->second.base_len, size % kCS);
    }
    slots_.erase(slots_.lower_bound(size % kCS == 0 ? k : k + 1), slots_.end());
    size_ = size;
    ForgetPast(size);
  } else if (size > size_) {
    size_ = size;  // the new part is holes: nothing to record
  }
  mtime_ns_ = host_.NowNs();
  changed_ = true;
  return Ok();
}

Status OpenFile::Extend(std::uint64_t size) {
  {
    MutexLock lock(mu_);
    if (size <= size_) return Ok();
  }
  return Truncate(size);
}

Status OpenFile::ZeroRange(std::uint64_t offset, std::uint64_t length, bool keep_size) {
  if (offset > model::kMaxFileSize || length > model::kMaxFileSize - offset) {
    return Err(Code::kTooBig, "inode {:016x}: range [{}, +{}) is past the largest file size", id_,
               offset, length);
  }
  MutexLock lock(mu_);
  AdoptRemote();
  if (length == 0) return Ok();
  if (auto s = SpillBuffer(); !s.ok()) return s;
  if (auto s = Reap(0); !s.ok()) return s;
  const std::uint64_t end = keep_size ? std::min(offset + length, size_) : offset + length;
  if (offset < end) {
    // Whole chunks become holes; staging may keep stale bytes for them (written_), which the
    // next write clears before use.
    const std::uint64_t first_full = (offset + kCS - 1) / kCS;
    const std::uint64_t last_full =
        end == size_ || end % kCS == 0 ? (end + kCS - 1) / kCS : end / kCS;
    if (first_full < last_full) {
      manifest_.Punch(first_full, last_full);
      ForgetDirty(first_full, last_full);
    }
    // The partial chunks at either end get zeros written over the range (within the size).
    const Bytes zeros(static_cast<std::size_t>(kCS), 0);
    auto zero = [&](std::uint64_t from, std::uint64_t to) REQUIRES(mu_) -> Status {
      for (to = std::min(to, size_); from < to;) {
        const std::uint64_t i = from / kCS;
        const std::uint64_t n = std::min(to, (i + 1) * kCS) - from;
        if (HasData(i)) {
          auto s = StageWrite(i, from, ByteSpan(zeros.data(), static_cast<std::size_t>(n)), size_);
          if (!s.ok()) return s;
        }
        from += n;
      }
      return Ok();
    };
    if (first_full >= last_full) {
      if (auto s = zero(offset, end); !s.ok()) return s;
    } else {
      if (auto s = zero(offset, first_full * kCS); !s.ok()) return s;
      if (auto s = zero(last_full * kCS, end); !s.ok()) return s;
    }
  }
  if (!keep_size && offset + length > size_) size_ = offset + length;
  mtime_ns_ = host_.NowNs();
  changed_ = true;
  return Ok();
}

Result<std::uint64_t> OpenFile::Seek(std::uint64_t offset, bool data) {
  MutexLock lock(mu_);
  AdoptRemote();
  if (offset >= size_) {
    return Err(Code::kNoPosition, "inode {:016x}: offset {} is at or past the end ({})", id_,
               offset, size_);
  }
  std::uint64_t i = offset / kCS;
  const std::uint64_t chunks = (size_ + kCS - 1) / kCS;
  if (data) {
    // The next chunk with data among the manifest, staging, the buffer and chunks in flight.
    std::uint64_t next = manifest_.NextData(i).value_or(kNone);
    if (auto d = dirty_.lower_bound(i); d != dirty_.end()) next = std::min(next, *d);
    next = std::min(next, pipeline_.NextAtOrAfter(i));
    if (next >= chunks) {
      return Err(Code::kNoPosition, "inode {:016x}: no data at or after {}", id_, offset);
    }
    return std::max(offset, next * kCS);
  }
  while (i < chunks && HasData(i)) ++i;  // at most as many steps as chunks holding data
  return std::min(size_, std::max(offset, i * kCS));
}

bool OpenFile::DeferAttrs(const SetAttrRequest& req) {
  MutexLock lock(mu_);
  AdoptRemote();
  if (!changed_) return false;
  if (req.mode) deferred_.mode = req.mode;
  if (req.uid) deferred_.uid = req.uid;
  if (req.gid) deferred_.gid = req.gid;
  if (req.atime_ns) deferred_.atime_ns = req.atime_ns;
  if (req.mtime_ns) mtime_ns_ = *req.mtime_ns;
  return true;
}

void OpenFile::SetMtime(std::int64_t mtime_ns) {
  MutexLock lock(mu_);
  mtime_ns_ = mtime_ns;
}

Status OpenFile::StoreDirty(bool background) {
  // The last buffered chunk is stored here, on this thread: the commit waits for it anyway,
  // and handing a small file's only chunk to a worker costs two thread wakeups.
  if (pipeline_.index() != WritePipeline::kNone) {
    if (auto s = StoreBuffer(/*background=*/false); !s.ok()) return s;
  }
  if (auto s = Reap(0); !s.ok()) return s;
  return StoreStaged(background);
}

Status OpenFile::StoreStaged(bool background) {
  if (dirty_.empty()) return Ok();
  // Staging is read here (it is this file's, under mu_); hashing, sealing and writing each
  // chunk go to the store queue, kStagedInFlight at a time, and the last chunk is done on this
  // thread. One thread did it all: the fsync at the end of a 15 s fio random write re-stored
  // 1,024 chunks in 4 s with the other core idle.
  struct Pending {
    std::uint64_t index;
    std::shared_ptr<Bytes> data;
    std::future<Result<cas::ChunkId>> id;
  };
  std::deque<Pending> pending;
  std::vector<std::shared_ptr<Bytes>> spare;  // buffers back from their jobs, for the next
  Status failed = Ok();
  const auto land = [&]() REQUIRES(mu_) {
    Pending p = std::move(pending.front());
    pending.pop_front();
    Result<cas::ChunkId> id = p.id.get();
    // The job let go of its reference before its result was ready.
    if (p.data.use_count() == 1) spare.push_back(std::move(p.data));
    if (!id.ok()) {
      if (failed.ok()) failed = id.status();  // the chunk stays in staging, dirty
      return;
    }
    manifest_.Set(p.index, *id);
    ForgetDirty(p.index, p.index + 1);
    FreeStaged(p.index);
  };
  const std::vector<std::uint64_t> staged(dirty_.begin(), dirty_.end());
  for (std::size_t k = 0; k < staged.size() && failed.ok(); ++k) {
    const std::uint64_t i = staged[k];
    std::shared_ptr<Bytes> buf;
    if (spare.empty()) {
      buf = std::make_shared<Bytes>();
    } else {
      buf = std::move(spare.back());
      spare.pop_back();
    }
    buf->resize(static_cast<std::size_t>(ChunkLen(i)));
    // The old chunks of the next partial chunks are read from disk while this one is merged
    // and stored (a random writer's old chunks are cold: nothing read them since).
    for (std::size_t ahead = k == 0 ? 0 : k + kMergeAhead; ahead <= k + kMergeAhead; ++ahead) {
      if (ahead >= staged.size()) break;
      if (auto next = partial_.find(staged[ahead]); next != partial_.end()) {
        host_.PrefetchChunk(next->second.base);
      }
    }
    auto part = partial_.find(i);
    if (auto s = part != partial_.end() ? MergePartial(i, part->second, *buf)
                                        : staging_->Read(Slot(i), *buf);
        !s.ok()) {
      failed = s;
      break;
    }
    // Read while the others were stored; at most kStagedInFlight on the queue at once.
    while (pending.size() >= kStagedInFlight) land();
    if (!failed.ok()) break;
    auto promise = std::make_shared<std::promise<Result<cas::ChunkId>>>();
    pending.push_back({i, buf, promise->get_future()});
    auto store = StoreChunkJob(host_, std::move(buf), std::move(promise));
    if (!background || k + 1 == staged.size()) {
      store();
    } else {
      host_.PostStore(std::move(store));
    }
  }
  while (!pending.empty()) land();
  return failed;
}

void OpenFile::FreeStaged(std::uint64_t index) {
  // The manifest now names the bytes; staging's copy is dead. Punched, its dirty pages are
  // dropped instead of written back: fsync's syncfs wrote every chunk a random writer touched
  // twice, once as the chunk and once as its staging copy. A later partial write copies the
  // chunk in again, as it did before (it zeroed the slot's stale bytes first).
  if (auto s = staging_->Zero(Slot(index), kCS); !s.ok()) {
    spdlog::warn("inode {:016x}: freeing chunk {}'s staging copy: {}", id_, index, s.message());
    return;
  }
  written_.erase(index);
}

Status OpenFile::Commit() {
  // The chunks first, with only this file locked: that is the long part.
  {
    MutexLock lock(mu_);
    AdoptRemote();
    if (!changed_) return Ok();
    if (auto s = StoreDirty(); !s.ok()) return s;
  }
  // Then the record's read-modify-write under the namespace lock too, so that a chmod or link
  // committed meanwhile is neither lost nor taken for a concurrent version of the content.
  // Both at once (std::lock's back-off): a reader may hold mu_ while it waits for a chunk from
  // a peer, and the namespace lock must not wait behind the network meanwhile.
  std::scoped_lock locks(ns_mu_.native(), mu_.native());
  ns_mu_.AssertHeld();
  mu_.AssertHeld();
  AdoptRemote();
  if (!changed_) return Ok();
  // What was written in between, on this thread: the namespace lock is held, and waiting
  // behind other files' chunks on the store queue would hold up every namespace operation.
  if (auto s = StoreDirty(/*background=*/false); !s.ok()) return s;
  auto cur = host_.InodeOrTombstone(id_);
  const bool unlinked_here = cur.ok() && cur->deleted && cur->version.node == host_.node_id();
  if (!cur.ok() || unlinked_here) {
    // Unlinked here while open: as on a local disk, its data goes with its last handle.
    deferred_ = {};
    changed_ = false;
    return Ok();
  }
  // Deleted by a peer while written here: the write is not lost. Its version is newer than
  // the tombstone, so the file comes back under its name (or a conflict name).
  InodeRecord rec = std::move(*cur);
  rec.deleted = false;
  rec.size = size_;
  rec.manifest = manifest_;
  rec.mtime_ns = mtime_ns_;
  if (deferred_.mode) rec.mode = *deferred_.mode;
  if (deferred_.uid) rec.uid = *deferred_.uid;
  if (deferred_.gid) rec.gid = *deferred_.gid;
  if (deferred_.atime_ns) rec.atime_ns = *deferred_.atime_ns;
  rec.ctime_ns = host_.NowNs();
  rec.version = host_.clock().Next();
  // Our content descends from what we opened (or last adopted), not necessarily from what the
  // namespace holds now: a peer's concurrent write then shows up as a conflict, not a loss.
  rec.content_clock = Advance(base_clock_, host_.clock().node(), rec.version.hlc);
  auto applied = host_.CommitLocal({{rec}, {}});
  if (!applied.ok()) return applied.status();
  generation_.fetch_add(1);
  base_clock_ = rec.content_clock;
  record_ = rec;
  SetVersion(rec.version);
  dirty_.clear();
  partial_.clear();
  deferred_ = {};
  changed_ = false;
  pipeline_.Drop();
  return Ok();
}

void OpenFile::OnRemoteUpdate(const InodeRecord& rec) {
  // Deleted elsewhere: like a local unlink, open handles keep the bytes they had (a tombstone
  // carries no manifest).
  if (rec.deleted) return;
  {
    MutexLock remote(remote_mu_);
    if (!remote_ || remote_->version < rec.version) remote_ = rec;
  }
  std::unique_lock lock(mu_.native(), std::try_to_lock);
  if (lock.owns_lock()) {
    mu_.AssertHeld();
    AdoptRemote();
  }
}

void OpenFile::AdoptRemote() {
  std::optional<InodeRecord> pending;
  {
    MutexLock remote(remote_mu_);
    pending.swap(remote_);
  }
  if (!pending || changed_) return;  // our uncommitted writes will follow as a newer version
  const InodeRecord& rec = *pending;
  base_clock_ = rec.content_clock;
  record_ = rec;
  SetVersion(rec.version);
  manifest_ = rec.manifest;
  size_ = rec.size;
  mtime_ns_ = rec.mtime_ns;
  dirty_.clear();
  partial_.clear();
  // Nothing staged is current any more. Drop the staging file: chunks cut off by a smaller
  // size would otherwise lose their written_ mark while their stale bytes stay in staging, and
  // a later write or truncate that grows the file would expose them.
  staging_.reset();
  slots_.clear();
  next_slot_ = 0;
  written_.clear();
}

model::ChunkMap OpenFile::Manifest() {
  MutexLock lock(mu_);
  (void)Reap(0);
  return manifest_;
}

model::Version OpenFile::Version() const {
  MutexLock lock(version_mu_);
  return version_;
}

void OpenFile::SetVersion(const model::Version& v) {
  MutexLock lock(version_mu_);
  version_ = v;
}

InodeRecord OpenFile::Snapshot() {
  MutexLock lock(mu_);
  InodeRecord rec = record_;
  rec.size = size_;
  rec.mtime_ns = mtime_ns_;
  return rec;
}

void OpenFile::Overlay(InodeRecord& rec) {
  // Nothing written here: the namespace's record is the file. Checked before taking mu_,
  // which a reader holds while it waits for a chunk from a peer: stat and ls -l must not
  // wait on the network.
  if (!changed_) return;
  MutexLock lock(mu_);
  if (!changed_) return;
  rec.size = size_;
  rec.mtime_ns = mtime_ns_;
  if (deferred_.mode) rec.mode = *deferred_.mode;
  if (deferred_.uid) rec.uid = *deferred_.uid;
  if (deferred_.gid) rec.gid = *deferred_.gid;
  if (deferred_.atime_ns) rec.atime_ns = *deferred_.atime_ns;
}

}  // namespace foreverfs::server
