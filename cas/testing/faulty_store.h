#pragma once
// A chunk store that fails on purpose, for tests: a seeded, deterministic wrapper that can
// refuse writes as a full disk does (ENOSPC), fail reads and writes with EIO at a given rate,
// and hand back flipped bytes (bit rot), and lose every chunk not yet synced as a power failure
// does. Thread-safe. In the `cas_testing` library, which the program does not link.

#include <memory>

#include "cas/chunk_store.h"

namespace foreverfs::cas {

struct Faults {
  bool full = false;        // every Put fails with kNoSpace
  double put_io_error = 0;  // probability a Put fails with kIOError
  double get_io_error = 0;  // probability a Get fails with kIOError
  double get_bit_flip = 0;  // probability a Get returns the bytes with one bit flipped
};

class FaultyChunkStore : public ChunkStore {
 public:
  FaultyChunkStore(std::unique_ptr<ChunkStore> inner, std::uint64_t seed);
  ~FaultyChunkStore() override;
  void Set(const Faults& faults);
  // A power failure: every chunk Put since the last Sync is gone. Returns how many.
  std::size_t LoseUnsynced();

  Status Put(const ChunkId& id, ByteSpan data) override;
  Status Sync() override;
  Result<Bytes> Get(const ChunkId& id) override;
  bool Has(const ChunkId& id) override;
  Status Remove(const ChunkId& id) override;
  Status ForEach(const std::function<void(const ChunkId&)>& fn) override;
  Packed PackedUsage() override;
  Status BeforeFork() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreverfs::cas
