#pragma once
// A node's identity across copies of its data directory (README, "Identity").
//
// The node id is also the writer id in every record's version and content clock and the key
// of every peer's cursor into this node's change feed, so two processes must never run under
// one id. A data directory copied (cp -a, rsync, a restored backup) is noticed at start: the
// directory is not the one the id was made in (another inode). A copy made below the file
// system (VM snapshot, dd) keeps the inode; that one is noticed when the two meet in a
// handshake, and the newer process stops after leaving kRenewMarker, so that its next start
// takes a fresh id.

#include <filesystem>
#include <string>

#include "base/status.h"
#include "server/namespace_db.h"

namespace foreverfs::server {

inline constexpr const char* kRenewMarker = "node-id.renew";

struct IdentityCheck {
  bool renewed = false;
  std::uint64_t old_id = 0;  // when renewed
  std::string why;           // when renewed: what showed the directory is a copy
};

// Before anything uses `ns`: takes a fresh node id if `data` is a copy of another node's data
// directory or holds kRenewMarker, and records which directory the id belongs to.
Result<IdentityCheck> CheckDataDirIdentity(NamespaceDb& ns, const std::filesystem::path& data);

// Leaves kRenewMarker in `data` with `why`, durably: the next start takes a fresh id.
Status MarkForFreshNodeId(const std::filesystem::path& data, const std::string& why);

}  // namespace foreverfs::server
