// An in-memory ChunkStore for tests; one mutex guards the map.

#include "cas/testing/memory_store.h"

#include <map>
#include <mutex>
#include <vector>

namespace foreverfs::cas {
namespace {

class MemoryChunkStore final : public ChunkStore {
 public:
  // As the disk store: at most a chunk and what the wrappers add to it, and a blob of another
  // size (cut short, say) is replaced, so that a stack over this store heals as it does on disk.
  Status Put(const ChunkId& id, ByteSpan data) override {
    if (data.size() > kMaxChunkSize + kMaxBlobOverhead) {
      return Err(Code::kInvalid, "chunk {} of {} bytes exceeds the maximum of {}", Hex(id),
                 data.size(), kMaxChunkSize + kMaxBlobOverhead);
    }
    std::lock_guard lock(mu_);
    auto [it, inserted] = chunks_.try_emplace(id, data.begin(), data.end());
    if (!inserted && it->second.size() != data.size()) it->second.assign(data.begin(), data.end());
    return Ok();
  }

  Status Sync() override { return Ok(); }

  Result<Bytes> Get(const ChunkId& id) override {
    std::lock_guard lock(mu_);
    auto it = chunks_.find(id);
    if (it == chunks_.end()) return Err(Code::kNotFound, "chunk {} not found", Hex(id));
    return it->second;
  }

  bool Has(const ChunkId& id) override {
    std::lock_guard lock(mu_);
    return chunks_.contains(id);
  }

  Status Remove(const ChunkId& id) override {
    std::lock_guard lock(mu_);
    chunks_.erase(id);
    return Ok();
  }

  Status ForEach(const std::function<void(const ChunkId&)>& fn) override {
    // Snapshot the ids so that `fn` may call back into the store.
    std::vector<ChunkId> ids;
    {
      std::lock_guard lock(mu_);
      ids.reserve(chunks_.size());
      for (const auto& [id, data] : chunks_) ids.push_back(id);
    }
    for (const ChunkId& id : ids) fn(id);
    return Ok();
  }

 private:
  std::mutex mu_;
  std::map<ChunkId, Bytes> chunks_;  // guarded by mu_
};

}  // namespace

std::unique_ptr<ChunkStore> MakeMemoryStore() { return std::make_unique<MemoryChunkStore>(); }

}  // namespace foreverfs::cas
