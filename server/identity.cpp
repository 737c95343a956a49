#include "server/identity.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "base/fd.h"

namespace foreverfs::server {

Result<IdentityCheck> CheckDataDirIdentity(NamespaceDb& ns, const std::filesystem::path& data) {
  struct stat st {};
  if (::stat(data.c_str(), &st) != 0) {
    return ErrnoStatus(errno, fmt::format("checking data directory {}", data.string()));
  }
  const auto ino = static_cast<std::int64_t>(st.st_ino);
  const auto marker = data / kRenewMarker;
  IdentityCheck out;
  std::error_code ec;
  if (std::filesystem::exists(marker, ec)) {
    std::ifstream in(marker);
    std::getline(in, out.why);
    if (out.why.empty()) out.why = fmt::format("{} asks for a fresh node id", marker.string());
  } else if (auto known = ns.GetMeta("data_dir_ino"); known && *known != ino) {
    out.why = fmt::format(
        "data directory {} is not the directory node id {:016x} was made in (inode {}, not {}): "
        "it is a copy (cp -a, rsync, a restored backup) or was moved to another file system",
        data.string(), ns.node_id(), ino, *known);
  }
  if (!out.why.empty()) {
    auto old = ns.TakeFreshNodeId();
    if (!old.ok()) return old.status();
    out.renewed = true;
    out.old_id = *old;
  }
  if (auto s = ns.SetMeta("data_dir_ino", ino); !s.ok()) return s;
  if (auto s = ns.Sync(); !s.ok()) return s;
  // Only now that the fresh id is durable may the marker go.
  if (out.renewed && std::filesystem::exists(marker, ec)) std::filesystem::remove(marker, ec);
  if (ec) {
    return Err(Code::kIOError, "cannot remove {}: {}", marker.string(), ec.message());
  }
  return out;
}

Status MarkForFreshNodeId(const std::filesystem::path& data, const std::string& why) {
  const auto marker = data / kRenewMarker;
  UniqueFd fd(::open(marker.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return ErrnoStatus(errno, fmt::format("creating {}", marker.string()));
  const std::string line = why + "\n";
  if (::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
      ::fsync(fd.get()) != 0) {
    return ErrnoStatus(errno, fmt::format("writing {}", marker.string()));
  }
  UniqueFd dir(::open(data.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) (void)::fsync(dir.get());
  return Ok();
}

}  // namespace foreverfs::server
