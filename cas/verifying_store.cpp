// Checks that every chunk's bytes hash to its id, on the way in and on the way out.

#include "cas/chunk_store.h"

namespace foreverfs::cas {
namespace {

class VerifyingChunkStore final : public ChunkStore {
 public:
  VerifyingChunkStore(std::unique_ptr<ChunkStore> inner, ChunkHasher hasher)
      : inner_(std::move(inner)), hasher_(std::move(hasher)) {}

  Status Put(const ChunkId& id, ByteSpan data) override {
    // Ids name chunks, and no chunk is larger: refused before it is hashed, whatever the inner
    // store (a blob store below would take up to kMaxBlobOverhead more).
    if (data.size() > kMaxChunkSize) {
      return Err(Code::kInvalid, "chunk {} of {} bytes exceeds the maximum of {}", Hex(id),
                 data.size(), kMaxChunkSize);
    }
    const ChunkId actual = hasher_.IdOf(data);
    if (actual != id) {
      return Err(Code::kCorruption, "refusing chunk {}: its {} bytes hash to {}", Hex(id),
                 data.size(), Hex(actual));
    }
    return inner_->Put(id, data);
  }

  Result<Bytes> Get(const ChunkId& id) override {
    Result<Bytes> data = inner_->Get(id);
    if (!data.ok()) return data;
    const ChunkId actual = hasher_.IdOf(*data);
    if (actual != id) {
      return Err(Code::kCorruption, "chunk {} is corrupt: its {} bytes hash to {}", Hex(id),
                 data->size(), Hex(actual));
    }
    return data;
  }

  Status Sync() override { return inner_->Sync(); }
  bool Has(const ChunkId& id) override { return inner_->Has(id); }
  Status Remove(const ChunkId& id) override { return inner_->Remove(id); }
  Packed PackedUsage() override { return inner_->PackedUsage(); }
  Status BeforeFork() override { return inner_->BeforeFork(); }
  Status ForEach(const std::function<void(const ChunkId&)>& fn) override {
    return inner_->ForEach(fn);
  }

 private:
  const std::unique_ptr<ChunkStore> inner_;
  const ChunkHasher hasher_;
};

}  // namespace

std::unique_ptr<ChunkStore> MakeVerifyingStore(std::unique_ptr<ChunkStore> inner,
                                               ChunkHasher hasher) {
  return std::make_unique<VerifyingChunkStore>(std::move(inner), std::move(hasher));
}

}  // namespace foreverfs::cas
