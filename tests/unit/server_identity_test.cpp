// A node's identity across copies of its data directory: a copy (another directory inode) or a
// directory marked by a process that met an older twin takes a fresh node id at open; the
// original keeps its id; records already written keep theirs.
#include <gtest/gtest.h>

#include <filesystem>

#include "server/identity.h"
#include "server/namespace_db.h"
#include "temp_dir.h"

namespace foreverfs::server {
namespace {

namespace fs = std::filesystem;

struct Opened {
  std::unique_ptr<NamespaceDb> ns;
  IdentityCheck check;
};

Opened OpenChecked(const fs::path& dir) {
  auto ns = NamespaceDb::Open(dir / "meta.db");
  EXPECT_TRUE(ns.ok()) << ns.status().message();
  auto check = CheckDataDirIdentity(**ns, dir);
  EXPECT_TRUE(check.ok()) << check.status().message();
  return {std::move(*ns), *check};
}

TEST(IdentityTest, ACopiedDataDirectoryTakesAFreshIdAndTheOriginalKeepsIt) {
  test::TempDir tmp;
  const fs::path a = tmp.path() / "a", b = tmp.path() / "b";
  fs::create_directories(a);
  std::uint64_t id = 0;
  {
    auto o = OpenChecked(a);
    EXPECT_FALSE(o.check.renewed);
    id = o.ns->node_id();
  }
  {
    auto o = OpenChecked(a);  // the same directory again: the same id
    EXPECT_FALSE(o.check.renewed) << o.check.why;
    EXPECT_EQ(o.ns->node_id(), id);
  }
  fs::copy(a, b, fs::copy_options::recursive);  // cp -a of a stopped node's --data
  std::uint64_t copy_id = 0;
  {
    auto o = OpenChecked(b);
    EXPECT_TRUE(o.check.renewed);
    EXPECT_EQ(o.check.old_id, id);
    EXPECT_NE(o.ns->node_id(), id);
    EXPECT_NE(o.ns->node_id(), 0u);
    EXPECT_NE(o.check.why.find(b.string()), std::string::npos) << o.check.why;
    EXPECT_NE(o.check.why.find("copy"), std::string::npos) << o.check.why;
    copy_id = o.ns->node_id();
  }
  {
    auto o = OpenChecked(b);  // the copy's fresh id is its own from now on
    EXPECT_FALSE(o.check.renewed);
    EXPECT_EQ(o.ns->node_id(), copy_id);
  }
  auto o = OpenChecked(a);
  EXPECT_FALSE(o.check.renewed);
  EXPECT_EQ(o.ns->node_id(), id);
}

TEST(IdentityTest, AMarkedDirectoryTakesAFreshIdOnce) {
  test::TempDir tmp;
  std::uint64_t id = 0;
  {
    auto o = OpenChecked(tmp.path());
    id = o.ns->node_id();
  }
  ASSERT_TRUE(MarkForFreshNodeId(tmp.path(), "met an older twin at 10.0.0.1:3000").ok());
  std::uint64_t fresh = 0;
  {
    auto o = OpenChecked(tmp.path());
    EXPECT_TRUE(o.check.renewed);
    EXPECT_EQ(o.check.why, "met an older twin at 10.0.0.1:3000");
    EXPECT_NE(o.ns->node_id(), id);
    fresh = o.ns->node_id();
  }
  EXPECT_FALSE(fs::exists(tmp.path() / kRenewMarker));
  auto o = OpenChecked(tmp.path());
  EXPECT_FALSE(o.check.renewed);
  EXPECT_EQ(o.ns->node_id(), fresh);
}

TEST(IdentityTest, AFreshIdIsDurableAndOldRecordsKeepTheirVersion) {
  test::TempDir tmp;
  {
    auto o = OpenChecked(tmp.path());
    ASSERT_TRUE(o.ns->SetMeta("data_dir_ino", 1).ok());  // as if made in another directory
  }
  auto ns = NamespaceDb::Open(tmp.path() / "meta.db");
  ASSERT_TRUE(ns.ok());
  const auto root_before = (*ns)->GetInode(1);
  ASSERT_TRUE(root_before.ok());
  auto check = CheckDataDirIdentity(**ns, tmp.path());
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->renewed);
  const std::uint64_t fresh = (*ns)->node_id();
  const auto root_after = (*ns)->GetInode(1);
  ASSERT_TRUE(root_after.ok());
  EXPECT_EQ(root_after->version, root_before->version);
  ns->reset();
  auto again = NamespaceDb::Open(tmp.path() / "meta.db");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->node_id(), fresh);
}

}  // namespace
}  // namespace foreverfs::server
