// Chunk ids and the store stack used by the program.

#include <algorithm>

#include "cas/chunk_store.h"

namespace foreverfs::cas {
namespace {

constexpr std::string_view kIdKeyPurpose = "foreverfs chunk-id v1";
constexpr std::string_view kDataKeyPurpose = "foreverfs data v1";

}  // namespace

Result<Extent> ChunkStore::ReadAt(const ChunkId& id, std::size_t offset, MutableByteSpan out) {
  Result<Bytes> all = Get(id);
  if (!all.ok()) return all.status();
  Extent e{0, all->size()};
  if (offset < all->size()) {
    e.n = std::min(out.size(), all->size() - offset);
    std::copy_n(all->begin() + static_cast<std::ptrdiff_t>(offset), e.n, out.begin());
  }
  return e;
}

ChunkHasher MakeHasher(const crypto::ClusterKey& key) {
  return ChunkHasher(crypto::DeriveKey(key.secret, kIdKeyPurpose));
}

Result<std::unique_ptr<ChunkStore>> MakeLocalStore(const std::filesystem::path& root,
                                                   const crypto::ClusterKey& key) {
  Result<std::unique_ptr<ChunkStore>> disk = MakeDiskStore(root);
  if (!disk.ok()) return disk.status();
  auto encrypting =
      MakeEncryptingStore(std::move(*disk), crypto::DeriveKey(key.secret, kDataKeyPurpose));
  return encrypting;
}

}  // namespace foreverfs::cas
