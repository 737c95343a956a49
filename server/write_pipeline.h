#pragma once
// WritePipeline: the sequential-write path of an OpenFile. Writes that fill a chunk in order
// from its start (cp, dd, tar: nearly every write) gather in a buffer of one chunk; once full
// (or at commit) the chunk is handed to the host's store queue, which hashes, seals and stores
// it while the writer goes on, so those bytes are written once and never pass through staging.
// At most kMaxInFlight chunks per file are in flight; Reap takes the finished ones in, oldest
// first, and hands each to the owner with its id, or with the store's error and its bytes (so
// that the owner keeps them elsewhere: nothing is lost). The buffer needs one of the host's
// buffer slots (FileHost::TakeSeqBuffer), which keep memory bounded with many writers.
//
// Threading: not thread-safe; its OpenFile calls it with OpenFile::mu_ held. Only the store
// jobs run on other threads, and they touch nothing here but their own chunk's bytes (read
// only once queued) and result. Owns the buffer and the chunks in flight; the destructor waits
// for those (dropping their results) and gives the slot back.

#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <optional>

#include "base/bytes.h"
#include "base/status.h"
#include "cas/chunk_store.h"
#include "server/file_host.h"

namespace foreverfs::server {

class WritePipeline {
 public:
  static constexpr std::uint64_t kNone = UINT64_MAX;
  static constexpr std::size_t kMaxInFlight = 2;  // chunks per file in the store queue

  explicit WritePipeline(FileHost& host) : host_(host) {}
  ~WritePipeline();
  WritePipeline(const WritePipeline&) = delete;
  WritePipeline& operator=(const WritePipeline&) = delete;

  // The chunk gathering in the buffer, kNone if none.
  std::uint64_t index() const { return index_; }
  const Bytes& buffer() const { return buf_; }
  bool full() const { return buf_.size() == cas::kChunkSize; }
  // `in` bytes into chunk `i` is where the buffer continues.
  bool Continues(std::uint64_t i, std::size_t in) const { return index_ == i && in == buf_.size(); }
  // Appends to the buffer (Continues was true; at most up to a whole chunk).
  void Append(ByteSpan data);
  // Starts gathering chunk `i` with `data`. The buffer must be empty (Submit or Drop first).
  // False if no buffer slot is free: the write goes elsewhere.
  bool Start(std::uint64_t i, ByteSpan data);
  // Hands the buffered chunk, padded with zeros to `len` (its length in the file), to the store
  // queue, or stores it on this thread if not `background`. The buffer is empty afterwards.
  void Submit(std::uint64_t len, bool background = true);
  // Forgets the buffered bytes (they went elsewhere) and gives the slot back.
  void Drop();

  // A chunk the store queue finished: its index, its id (kHoleId if all zeros) or why the store
  // refused it, and its bytes.
  using Landed =
      std::function<Status(std::uint64_t index, const Result<cas::ChunkId>& id, const Bytes& data)>;
  // Takes in finished chunks, oldest first, waiting until at most `keep` are in flight. Returns
  // the first error `landed` returned (every finished chunk is handed over regardless).
  Status Reap(std::size_t keep, const Landed& landed);

  std::size_t in_flight() const { return inflight_.size(); }
  // The bytes of chunk `i` if it is buffered or in flight (a chunk in flight wins), else null.
  const Bytes* Gathered(std::uint64_t i) const;
  // Chunk `i` is buffered or in flight.
  bool Holds(std::uint64_t i) const { return Gathered(i) != nullptr; }
  // A chunk in flight overlaps bytes [offset, end) of the file.
  bool InFlightAt(std::uint64_t offset, std::uint64_t end) const;
  // The lowest index >= `i` buffered or in flight, kNone if none.
  std::uint64_t NextAtOrAfter(std::uint64_t i) const;

 private:
  struct InFlight {
    std::uint64_t index;
    std::shared_ptr<Bytes> data;  // read-only once queued
    std::future<Result<cas::ChunkId>> id;
  };

  FileHost& host_;
  std::uint64_t index_ = kNone;
  Bytes buf_;
  bool slot_ = false;              // holds one of the host's buffer slots
  std::deque<InFlight> inflight_;  // oldest first
  Bytes spare_;                    // a used buffer, for the next chunk
};

// The job that stores one chunk on the store queue (or inline): hashes and stores `data` (a
// chunk of zeros is kHoleId and is not stored), lets go of `data`, then fulfils `id`. Letting
// go first means that whoever waits on `id` holds the buffer's only reference and may reuse it.
std::function<void()> StoreChunkJob(FileHost& host, std::shared_ptr<Bytes> data,
                                    std::shared_ptr<std::promise<Result<cas::ChunkId>>> id);

}  // namespace foreverfs::server
