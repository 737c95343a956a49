// user.foreverfs.replicas and .holders: which names are virtual, and their values for a holder
// report.

#include <gtest/gtest.h>

#include "app/virtual_xattrs.h"

namespace foreverfs::app {
namespace {

TEST(AppVirtualXattrs, Parse) {
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.replicas"), VirtualXattr::kReplicas);
  EXPECT_EQ(ParseVirtualXattr("user.foreverfs.holders"), VirtualXattr::kHolders);
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

}  // namespace
}  // namespace foreverfs::app
