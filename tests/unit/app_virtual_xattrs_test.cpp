// user.foreverfs.replicas and .holders: which names are virtual, and their values for a holder
// report.

#include <gtest/gtest.h>

#include "app/virtual_xattrs.h"

namespace foreverfs::app {
namespace {

TEST(AppVirtualXattrs, Parse) {
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.replicas"), VirtualXattr::kReplicas);
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.holders"), VirtualXattr::kHolders);
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.local"), VirtualXattr::kLocal);
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.control"), std::nullopt);  // FuseFs answers it
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.replicas2"), std::nullopt);
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs"), std::nullopt);
  EXPECT_EQ(ParseVirtualXattr("user.other"), std::nullopt);
  EXPECT_EQ(ParseVirtualXattr(""), std::nullopt);
}

TEST(AppVirtualXattrs, Values) {
  server::HolderReport r;
  r.local = true;
  r.peers = {{0x2, "10.0.0.2:3000"}, {0xabcdef, "[::1]:3001"}};
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kReplicas, r, 0x1, "10.0.0.1:3000"), "3");
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kHolders, r, 0x1, "10.0.0.1:3000"),
            "0000000000000001@10.0.0.1:3000,0000000000000002@10.0.0.2:3000,"
            "0000000000abcdef@[::1]:3001");
  r.local = false;  // this node lacks a chunk: it is neither counted nor listed
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kReplicas, r, 0x1, "10.0.0.1:3000"), "2");
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kHolders, r, 0x1, "10.0.0.1:3000"),
            "0000000000000002@10.0.0.2:3000,0000000000abcdef@[::1]:3001");
  server::HolderReport none;
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kReplicas, none, 0x1, "a:1"), "0");
  EXPECT_EQ(VirtualXattrValue(VirtualXattr::kHolders, none, 0x1, "a:1"), "");
}

// user.foreverfs.local: the bytes the held chunks cover, the last one clipped to the size;
// holes and chunks not held count nothing; sizes at 0 and at the largest.
TEST(AppVirtualXattrs, LocalBytes) {
  server::InodeRecord r;
  crypto::Digest a{}, b{}, c{};
  a[0] = 1, b[0] = 2, c[0] = 3;
  r.manifest = model::ChunkMap{a, model::ChunkMap::Hole(), b};  // chunks 0 and 2, a hole at 1
  r.size = 2 * kMiB + 5;
  auto all = [](const cas::ChunkId&) { return true; };
  auto only_b = [&](const cas::ChunkId& id) { return id == b; };
  EXPECT_EQ(LocalBytes(r, all), kMiB + 5);
  EXPECT_EQ(LocalBytes(r, only_b), 5u);
  EXPECT_EQ(LocalBytes(r, [](const cas::ChunkId&) { return false; }), 0u);
  r.size = 3 * kMiB;  // the last chunk whole
  EXPECT_EQ(LocalBytes(r, all), 2 * kMiB);
  r.size = kMiB;  // truncated: chunk 2 lies past the end
  EXPECT_EQ(LocalBytes(r, all), kMiB);
  r.size = 0;
  EXPECT_EQ(LocalBytes(r, all), 0u);
  r.size = std::uint64_t{1} << 63;
  r.manifest = model::ChunkMap{};
  EXPECT_EQ(LocalBytes(r, all), 0u);  // a sparse file of 2^63 bytes holds nothing
}

}  // namespace
}  // namespace foreverfs::app
