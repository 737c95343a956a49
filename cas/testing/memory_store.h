#pragma once
// An in-memory ChunkStore, for tests and benchmarks only: it is built into the `cas_testing`
// library, which the program never links. It holds blobs as the disk store does: at most
// kMaxChunkSize + kMaxBlobOverhead bytes (more is kInvalid), and a Put over a blob of another
// size replaces it, so a stack over it behaves as the same stack over the disk.

#include <memory>

#include "cas/chunk_store.h"

namespace foreverfs::cas {

std::unique_ptr<ChunkStore> MakeMemoryStore();

}  // namespace foreverfs::cas
