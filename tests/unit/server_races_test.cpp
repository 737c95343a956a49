// FileServer races that once lost data on a single node: a write racing a peer's delete, and a
// commit's read-modify-write of the inode racing attribute changes and links.

#include <fcntl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "cas/chunk_store.h"
#include "server/file_server.h"
#include "server/hlc.h"
#include "unit/file_server_fixture.h"

namespace foreverfs::server {
namespace {

class RacesTest : public test::FileServerFixture {
 protected:
  Bytes ReadAll(InodeId id) {
    auto h = fs_->Open(id, O_RDONLY);
    EXPECT_TRUE(h.ok());
    Bytes out(1 << 20);
    auto n = fs_->Read(*h, 0, out);
    EXPECT_TRUE(n.ok());
    out.resize(n.ok() ? *n : 0);
    fs_->Release(*h);
    return out;
  }
  std::vector<std::string> Names() {
    std::vector<std::string> out;
    auto list = fs_->ReadDir(kRootId);
    EXPECT_TRUE(list.ok());
    if (!list.ok()) return out;
    for (const auto& e : list.value()) out.push_back(e.name);
    return out;
  }
};

// A peer deletes the file (inode and entry tombstones) while a handle here writes it: the
// written bytes survive close, under the file's name (or a conflict name), on this node.
TEST_F(RacesTest, AWriteRacingARemoteDeleteSurvivesClose) {
  auto c = fs_->Create(kRootId, "doc", 0644, 0, 0, O_RDWR);
  ASSERT_TRUE(c.ok());
  const InodeId id = c->attr.rec.id;
  ASSERT_TRUE(fs_->Write(c->handle, 0, AsBytes("first")).ok());
  ASSERT_TRUE(fs_->Flush(c->handle).ok());
  // The peer saw the first version and deleted the file.
  auto rec = db_->GetInode(id);
  auto entry = db_->GetDentry(kRootId, "doc");
  ASSERT_TRUE(rec.ok() && entry.ok());
  const model::Version del{Hlc::WallNs(), 999};
  InodeRecord gone = *rec;
  gone.deleted = true;
  gone.manifest.clear();
  gone.version = del;
  DentryRecord gone_entry = *entry;
  gone_entry.deleted = true;
  gone_entry.version = del;
  ASSERT_TRUE(fs_->ApplyRemote(net::Changes{1, {gone}, {gone_entry}}, 999).ok());
  ASSERT_FALSE(fs_->Lookup(kRootId, "doc").ok());
  // Meanwhile this node wrote on.
  ASSERT_TRUE(fs_->Write(c->handle, 5, AsBytes(" and second")).ok());
  fs_->Release(c->handle);
  auto back = fs_->GetAttr(id);
  ASSERT_TRUE(back.ok()) << "the write was dropped: " << back.status().message();
  EXPECT_EQ(AsChars(ReadAll(id)), "first and second");
  bool named = false;
  for (const auto& n : Names()) named = named || n == "doc" || n.starts_with("doc.conflict-");
  EXPECT_TRUE(named) << "the file survived but has no name";
}

// Unlinked here while open: as on a local disk, the data goes with the last handle.
TEST_F(RacesTest, AFileUnlinkedHereWhileOpenIsGoneAfterClose) {
  auto c = fs_->Create(kRootId, "tmp", 0644, 0, 0, O_RDWR);
  ASSERT_TRUE(c.ok());
  const InodeId id = c->attr.rec.id;
  ASSERT_TRUE(fs_->Unlink(kRootId, "tmp").ok());
  ASSERT_TRUE(fs_->Write(c->handle, 0, AsBytes("scratch")).ok());
  fs_->Release(c->handle);
  EXPECT_FALSE(fs_->GetAttr(id).ok());
  EXPECT_TRUE(Names().empty());
}

// Commits and chmods/links of one file from two threads: a chmod is never undone by a commit
// that read the inode before it (a stale read-modify-write), and no write is ever taken for a
// concurrent version of itself (no conflict copy on a single node).
TEST_F(RacesTest, CommitsRacingChmodAndLinkLoseNothing) {
  auto c = fs_->Create(kRootId, "f", 0644, 0, 0, O_RDWR);
  ASSERT_TRUE(c.ok());
  const InodeId id = c->attr.rec.id;
  std::atomic<bool> stop{false};
  std::atomic<int> lost{0};
  std::thread attrs([&] {
    for (int i = 0; !stop; ++i) {
      const std::uint32_t mode = 0600 | static_cast<std::uint32_t>(i % 8) << 3;
      SetAttrRequest req;
      req.mode = mode;
      ASSERT_TRUE(fs_->SetAttr(id, req).ok());
      for (int look = 0; look < 3; ++look) {
        std::this_thread::yield();
        if (fs_->GetAttr(id)->rec.mode != mode) ++lost;
      }
      if (i % 10 == 0) {
        const std::string name = "link" + std::to_string(i);
        ASSERT_TRUE(fs_->Link(id, kRootId, name).ok());
        ASSERT_TRUE(fs_->Unlink(kRootId, name).ok());
      }
    }
  });
  Bytes last;
  for (int round = 0; round < 400; ++round) {
    const std::string text = "version " + std::to_string(round);
    last.assign(text.begin(), text.end());
    ASSERT_TRUE(fs_->Write(c->handle, 0, last).ok());
    ASSERT_TRUE(fs_->Flush(c->handle).ok());
  }
  stop = true;
  attrs.join();
  fs_->Release(c->handle);
  EXPECT_EQ(lost.load(), 0) << "a commit undid a chmod made after it read the inode";
  EXPECT_EQ(Names(), std::vector<std::string>{"f"});
  Bytes got = ReadAll(id);
  got.resize(last.size());
  EXPECT_EQ(got, last);
}

}  // namespace
}  // namespace foreverfs::server
