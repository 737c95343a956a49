#pragma once
// A FileServer on one node for server/ unit tests: a namespace in a temporary directory, an
// in-memory chunk store and a fixed chunk-id key. Open() (re)opens the namespace, as a restart.

#include <gtest/gtest.h>

#include <filesystem>
#include <memory>

#include "cas/chunk_store.h"
#include "cas/testing/memory_store.h"
#include "server/file_server.h"
#include "unit/test_util.h"

namespace foreverfs::test {

inline crypto::Key256 FixedChunkKey() { return FixedKey(0x33); }

class FileServerFixture : public ::testing::Test {
 protected:
  void SetUp() override { Open(); }

  void Open() {
    fs_.reset();
    db_.reset();
    auto db = server::NamespaceDb::Open(dir_.path() / "ns.db");
    ASSERT_TRUE(db.ok()) << db.status().message();
    db_ = std::move(*db);
    std::filesystem::create_directories(dir_.path() / "staging");
    fs_ = std::make_unique<server::FileServer>(*db_, *store_, cas::ChunkHasher(FixedChunkKey()),
                                               dir_.path() / "staging");
  }

  TempDir dir_;
  std::unique_ptr<cas::ChunkStore> store_ = cas::MakeMemoryStore();
  std::unique_ptr<server::NamespaceDb> db_;
  std::unique_ptr<server::FileServer> fs_;
};

}  // namespace foreverfs::test
