#include "app/virtual_xattrs.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <vector>

namespace foreverfs::app {

std::optional<VirtualXattr> ParseVirtualXattr(std::string_view name) {
  if (name == kReplicasXattr) return VirtualXattr::kReplicas;
  if (name == kHoldersXattr) return VirtualXattr::kHolders;
  if (name == kLocalXattr) return VirtualXattr::kLocal;
  return std::nullopt;
}

std::string VirtualXattrValue(VirtualXattr which, const server::HolderReport& report,
                              std::uint64_t self_id, const std::string& self_addr) {
  if (which == VirtualXattr::kReplicas) {
    return std::to_string((report.local ? 1 : 0) + report.peers.size());
  }
  if (which == VirtualXattr::kLocal) return {};  // not from a holder report: see LocalBytes
  std::vector<std::string> holders;
  if (report.local) holders.push_back(fmt::format("{:016x}@{}", self_id, self_addr));
  for (const auto& h : report.peers)
    holders.push_back(fmt::format("{:016x}@{}", h.node_id, h.addr));
  return fmt::format("{}", fmt::join(holders, ","));
}

std::uint64_t LocalBytes(const server::InodeRecord& rec,
                         const std::function<bool(const cas::ChunkId&)>& held) {
  constexpr std::uint64_t kChunk = 1 << 20;
  std::uint64_t total = 0;
  for (const auto& [index, id] : rec.manifest) {
    if (index >= rec.size / kChunk + 1 || !held(id)) continue;
    const std::uint64_t start = index * kChunk;
    if (start >= rec.size) continue;
    total += std::min(kChunk, rec.size - start);
  }
  return total;
}

std::optional<Result<Bytes>> ReplicaXattr(server::FileServer& files, server::Replicator& r,
                                          const std::string& self_addr, std::uint64_t ino,
                                          std::string_view name) {
  const auto which = ParseVirtualXattr(name);
  if (!which) return std::nullopt;
  auto rec = files.ns().GetInode(ino);
  if (!rec.ok()) return rec.status();
  if (rec->deleted) return Status(Code::kNotFound, "inode is deleted");
  if (rec->kind != server::InodeKind::kFile) {
    return Err(Code::kNoData, "{} is only there for regular files", name);
  }
  if (*which == VirtualXattr::kLocal) {
    const std::string value = std::to_string(
        LocalBytes(*rec, [&](const cas::ChunkId& id) { return files.HasChunk(id); }));
    return Bytes(value.begin(), value.end());
  }
  const auto report = r.Holders(rec->manifest.Ids(), kHoldersTimeout);
  spdlog::debug(
      "getxattr {} of inode {:016x}: {} chunks, here: {}, {} of {} peers answered, {} "
      "hold them all",
      name, ino, report.chunks, report.local, report.answered, report.asked, report.peers.size());
  const std::string value = VirtualXattrValue(*which, report, files.node_id(), self_addr);
  return Bytes(value.begin(), value.end());
}

}  // namespace foreverfs::app
