#pragma once
// An in-memory ChunkStore, for tests and benchmarks only: it is built into the `cas_testing`
// library, which the program never links.

#include <memory>

#include "cas/chunk_store.h"

namespace foreverfs::cas {

std::unique_ptr<ChunkStore> MakeMemoryStore();

}  // namespace foreverfs::cas
