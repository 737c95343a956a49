// ChunkMaintenance: garbage collection removes a chunk only on the second pass that finds it
// unreferenced, never one a live file or an open file needs; scrub finds corrupt and missing
// chunks and repairs them from a peer.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include "server/gc.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

// A peer that holds a copy of every chunk stored through it.
class FakeRemote : public RemoteChunks {
 public:
  std::map<cas::ChunkId, Bytes> chunks;
  FileServer* fs = nullptr;
  Result<Bytes> Fetch(const cas::ChunkId& id) override {
    auto it = chunks.find(id);
    if (it == chunks.end()) return Err(Code::kUnavailable, "no peer has it");
    if (auto s = fs->StoreChunk(id, it->second); !s.ok()) return s;
    return it->second;
  }
};

class ChunkMaintenanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("ffs_gc_" + std::to_string(::getpid()) + "_" + std::to_string(crypto::RandomU64()));
    fs::create_directories(dir_ / "staging");
    key_.secret.fill(7);
    db_ = NamespaceDb::Open(dir_ / "ns.db").value();
    store_ = cas::MakeLocalStore(dir_ / "chunks", key_).value();
    files_ = std::make_unique<FileServer>(*db_, *store_, cas::MakeHasher(key_), dir_ / "staging");
    remote_.fs = files_.get();
    files_->SetRemote(&remote_);
    gc_ = std::make_unique<ChunkMaintenance>(*files_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  void Write(const std::string& path, std::size_t size, std::uint8_t fill) {
    Bytes data(size, fill);
    // Distinct bytes in every chunk, so chunks do not deduplicate.
    for (std::size_t i = 0; i < size; i += 4096)
      data[i] = static_cast<std::uint8_t>((i >> 20) * 37 + (i >> 12));
    std::size_t at = 0;
    ASSERT_TRUE(files_
                    ->Store(path,
                            [&](MutableByteSpan out) -> Result<std::size_t> {
                              std::size_t n = std::min(out.size(), data.size() - at);
                              std::copy_n(data.begin() + static_cast<long>(at), n, out.begin());
                              at += n;
                              return n;
                            })
                    .ok());
  }
  std::size_t Stored() {
    std::size_t n = 0;
    EXPECT_TRUE(store_->ForEach([&](const cas::ChunkId&) { ++n; }).ok());
    return n;
  }

  fs::path dir_;
  crypto::ClusterKey key_;
  std::unique_ptr<NamespaceDb> db_;
  std::unique_ptr<cas::ChunkStore> store_;
  std::unique_ptr<FileServer> files_;
  FakeRemote remote_;
  std::unique_ptr<ChunkMaintenance> gc_;
};

TEST_F(ChunkMaintenanceTest, RemovesUnreferencedChunksOnTheSecondPass) {
  Write("/keep", 3 * cas::kChunkSize, 1);
  Write("/drop", 2 * cas::kChunkSize, 2);
  ASSERT_EQ(Stored(), 5u);
  ASSERT_TRUE(files_->Remove("/drop").ok());
  auto first = gc_->Collect();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->removed, 0u);
  EXPECT_EQ(first->marked, 2u);
  EXPECT_EQ(Stored(), 5u);
  auto second = gc_->Collect();
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->removed, 2u);
  EXPECT_EQ(Stored(), 3u);
  Bytes back;
  ASSERT_TRUE(files_
                  ->Get("/keep",
                        [&](ByteSpan b) {
                          back.insert(back.end(), b.begin(), b.end());
                          return Ok();
                        })
                  .ok());
  EXPECT_EQ(back.size(), 3 * cas::kChunkSize);
}

TEST_F(ChunkMaintenanceTest, AChunkReferencedAgainBeforeTheSecondPassStays) {
  Write("/a", cas::kChunkSize, 3);
  ASSERT_TRUE(files_->Remove("/a").ok());
  ASSERT_TRUE(gc_->Collect().ok());
  Write("/b", cas::kChunkSize, 3);  // the same bytes: the same chunk, live again
  auto r = gc_->Collect();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 0u);
  EXPECT_EQ(Stored(), 1u);
}

TEST_F(ChunkMaintenanceTest, ChunksOfAFileUnlinkedWhileOpenStay) {
  Write("/open", 2 * cas::kChunkSize, 4);
  auto attr = files_->Resolve("/open");
  ASSERT_TRUE(attr.ok());
  auto h = files_->Open(attr->rec.id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(files_->Remove("/open").ok());
  ASSERT_TRUE(gc_->Collect().ok());
  ASSERT_TRUE(gc_->Collect().ok());
  Bytes buf(cas::kChunkSize);
  auto n = files_->Read(*h, cas::kChunkSize, buf);
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(*n, cas::kChunkSize);
  files_->Release(*h);
}

// A commit that reuses a marked chunk after the pass read the references (its Put writes
// nothing: the chunk is there) must not lose that chunk to the pass.
TEST_F(ChunkMaintenanceTest, ACommitDuringAPassKeepsTheChunkItDeduplicated) {
  Write("/a", cas::kChunkSize, 5);
  ASSERT_TRUE(files_->Remove("/a").ok());
  ASSERT_EQ(gc_->Collect()->marked, 1u);
  gc_->SetAfterReferencesForTest([&] { Write("/b", cas::kChunkSize, 5); });
  auto r = gc_->Collect();
  gc_->SetAfterReferencesForTest({});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->removed, 0u);
  EXPECT_EQ(r->marked, 0u) << "a chunk just committed was marked for removal";
  ASSERT_EQ(Stored(), 1u);
  Bytes back;
  ASSERT_TRUE(files_
                  ->Get("/b",
                        [&](ByteSpan b) {
                          back.insert(back.end(), b.begin(), b.end());
                          return Ok();
                        })
                  .ok());
  EXPECT_EQ(back.size(), cas::kChunkSize);
  // And two more passes keep it: it is referenced now.
  ASSERT_TRUE(gc_->Collect().ok());
  ASSERT_TRUE(gc_->Collect().ok());
  EXPECT_EQ(Stored(), 1u);
}

// A handle opened before a peer rewrote the file reads the version it opened after two passes
// (handles of a version replaced remotely were invisible to the reference walk).
TEST_F(ChunkMaintenanceTest, AHandleOpenAcrossARemoteRewriteNeverReadsACollectedChunk) {
  Write("/f", 2 * cas::kChunkSize, 6);
  auto attr = files_->Resolve("/f");
  ASSERT_TRUE(attr.ok());
  auto h = files_->Open(attr->rec.id, O_RDONLY);
  ASSERT_TRUE(h.ok());
  Bytes before(2 * cas::kChunkSize);
  ASSERT_EQ(*files_->Read(*h, 0, before), before.size());
  // A peer replaces the content with one new chunk.
  Bytes fresh(cas::kChunkSize, 9);
  const auto id = cas::MakeHasher(key_).IdOf(fresh);
  ASSERT_TRUE(files_->StoreChunk(id, fresh).ok());
  InodeRecord r = attr->rec;
  r.version = {r.version.hlc + 1000, 999};
  r.manifest.clear();
  r.manifest.Set(0, id);
  r.size = fresh.size();
  // The peer's write descends from ours (no conflict copy keeps the old chunks alive).
  r.content_clock.push_back({999, r.version.hlc});
  std::sort(r.content_clock.begin(), r.content_clock.end(),
            [](const auto& a, const auto& b) { return a.node < b.node; });
  ASSERT_TRUE(files_->ApplyRemote(net::Changes{1, {r}, {}}, 999).ok());
  ASSERT_TRUE(gc_->Collect().ok());
  ASSERT_TRUE(gc_->Collect().ok());
  EXPECT_EQ(Stored(), 3u) << "the old version's chunks were collected under the handle";
  Bytes all(2 * cas::kChunkSize);
  auto n = files_->Read(*h, 0, all);
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(*n, 2 * cas::kChunkSize);
  EXPECT_EQ(all, before);
  files_->Release(*h);
}

TEST_F(ChunkMaintenanceTest, ScrubRepairsCorruptAndMissingChunksFromAPeer) {
  Write("/f", 3 * cas::kChunkSize, 5);
  std::vector<cas::ChunkId> ids;
  ASSERT_TRUE(store_->ForEach([&](const cas::ChunkId& id) { ids.push_back(id); }).ok());
  ASSERT_EQ(ids.size(), 3u);
  for (const auto& id : ids) remote_.chunks[id] = *store_->Get(id);
  // Flip a byte of one chunk file; delete another.
  auto path_of = [&](const cas::ChunkId& id) {
    auto hex = cas::Hex(id);
    return dir_ / "chunks" / hex.substr(0, 2) / hex;
  };
  {
    std::fstream f(path_of(ids[0]), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x42');
  }
  fs::remove(path_of(ids[1]));
  std::vector<std::string> lines;
  auto r = gc_->Scrub([&](const std::string& line) { lines.push_back(line); });
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->checked, 2u);
  EXPECT_EQ(r->corrupt, 1u);
  EXPECT_EQ(r->missing, 1u);
  EXPECT_EQ(r->repaired, 2u);
  EXPECT_EQ(r->unrepaired, 0u);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.back().find("scrub done"), std::string::npos);
  for (const auto& id : ids) EXPECT_TRUE(store_->Get(id).ok());
  // Without the peer, the same damage is counted but not repaired.
  remote_.chunks.clear();
  fs::remove(path_of(ids[2]));
  auto again = gc_->Scrub([](const std::string&) {});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->missing, 1u);
  EXPECT_EQ(again->unrepaired, 1u);
}

}  // namespace
}  // namespace foreverfs::server
