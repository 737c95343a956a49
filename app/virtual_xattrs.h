#pragma once
// The extended attributes the daemon computes (fuse::FuseFs::SetVirtualXattr):
//   user.foreverfs.replicas  how many nodes (this one included) hold every chunk of the file's
//                            current version, as far as this node and its connected peers say
//                            within 2 s
//   user.foreverfs.holders   which, as "nodeid@address" separated by commas, this node first
//   user.foreverfs.local     how many of the file's bytes this node holds (a decimal number):
//                            the bytes of the current version's chunks in the local store;
//                            holes hold none. Never waits on the network.
// ReplicaXattr runs on FUSE worker threads and may block up to kHoldersTimeout waiting for
// peers (Replicator::Holders posts to the event thread; never call it on the event thread).
// ParseVirtualXattr and VirtualXattrValue are pure: any thread.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"
#include "server/file_server.h"
#include "server/replicator.h"

namespace foreverfs::app {

inline constexpr std::string_view kReplicasXattr = "user.foreverfs.replicas";
inline constexpr std::string_view kHoldersXattr = "user.foreverfs.holders";
inline constexpr std::string_view kLocalXattr = "user.foreverfs.local";
inline constexpr auto kHoldersTimeout = std::chrono::milliseconds(2000);

enum class VirtualXattr { kReplicas, kHolders, kLocal };

// The attribute `name` is, or nullopt for any other name (which the file system handles).
std::optional<VirtualXattr> ParseVirtualXattr(std::string_view name);

// The value of `which` for a holder report; `self_id`@`self_addr` names this node.
std::string VirtualXattrValue(VirtualXattr which, const server::HolderReport& report,
                              std::uint64_t self_id, const std::string& self_addr);

// The bytes of `rec` that its chunks for which `held` is true cover (chunk i covers
// [i MiB, (i+1) MiB), clipped to the file's size).
std::uint64_t LocalBytes(const server::InodeRecord& rec,
                         const std::function<bool(const cas::ChunkId&)>& held);

// The value of `name` for inode `ino`, an error (ENODATA for a non-file, not found for a deleted
// inode), or nullopt if `name` is not one of the attributes above.
std::optional<Result<Bytes>> ReplicaXattr(server::FileServer& files, server::Replicator& r,
                                          const std::string& self_addr, std::uint64_t ino,
                                          std::string_view name);

}  // namespace foreverfs::app
