#include "cas/testing/faulty_store.h"

#include <mutex>
#include <random>
#include <set>

namespace foreverfs::cas {

struct FaultyChunkStore::Impl {
  std::unique_ptr<ChunkStore> inner;
  std::mutex mu;
  std::mt19937_64 rng;
  Faults faults;
  std::set<ChunkId> unsynced;  // stored by a Put since the last Sync
  bool Roll(double p) {
    std::lock_guard lock(mu);
    return p > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < p;
  }
};

FaultyChunkStore::FaultyChunkStore(std::unique_ptr<ChunkStore> inner, std::uint64_t seed)
    : impl_(std::make_unique<Impl>()) {
  impl_->inner = std::move(inner);
  impl_->rng.seed(seed);
}

FaultyChunkStore::~FaultyChunkStore() = default;

void FaultyChunkStore::Set(const Faults& faults) {
  std::lock_guard lock(impl_->mu);
  impl_->faults = faults;
}

Status FaultyChunkStore::Put(const ChunkId& id, ByteSpan data) {
  Faults f;
  {
    std::lock_guard lock(impl_->mu);
    f = impl_->faults;
  }
  if (f.full) return Err(Code::kNoSpace, "chunk {}: No space left on device (injected)", Hex(id));
  if (impl_->Roll(f.put_io_error))
    return Err(Code::kIOError, "chunk {}: I/O error (injected)", Hex(id));
  const bool had = impl_->inner->Has(id);
  Status s = impl_->inner->Put(id, data);
  if (s.ok() && !had) {
    std::lock_guard lock(impl_->mu);
    impl_->unsynced.insert(id);
  }
  return s;
}

Status FaultyChunkStore::Sync() {
  Status s = impl_->inner->Sync();
  if (s.ok()) {
    std::lock_guard lock(impl_->mu);
    impl_->unsynced.clear();
  }
  return s;
}

std::size_t FaultyChunkStore::LoseUnsynced() {
  std::set<ChunkId> lost;
  {
    std::lock_guard lock(impl_->mu);
    lost.swap(impl_->unsynced);
  }
  for (const auto& id : lost) (void)impl_->inner->Remove(id);
  return lost.size();
}

Result<Bytes> FaultyChunkStore::Get(const ChunkId& id) {
  Faults f;
  {
    std::lock_guard lock(impl_->mu);
    f = impl_->faults;
  }
  if (impl_->Roll(f.get_io_error))
    return Err(Code::kIOError, "chunk {}: I/O error (injected)", Hex(id));
  auto data = impl_->inner->Get(id);
  if (data.ok() && !data->empty() && impl_->Roll(f.get_bit_flip)) {
    std::lock_guard lock(impl_->mu);
    (*data)[impl_->rng() % data->size()] ^= static_cast<std::uint8_t>(1u << (impl_->rng() % 8));
  }
  return data;
}

bool FaultyChunkStore::Has(const ChunkId& id) { return impl_->inner->Has(id); }
Status FaultyChunkStore::Remove(const ChunkId& id) { return impl_->inner->Remove(id); }
ChunkStore::Packed FaultyChunkStore::PackedUsage() { return impl_->inner->PackedUsage(); }
Status FaultyChunkStore::BeforeFork() { return impl_->inner->BeforeFork(); }

Status FaultyChunkStore::ForEach(const std::function<void(const ChunkId&)>& fn) {
  return impl_->inner->ForEach(fn);
}

}  // namespace foreverfs::cas
