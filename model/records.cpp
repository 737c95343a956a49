#include "model/records.h"

namespace foreverfs::model {

bool ValidName(std::string_view name) {
  return !name.empty() && name.size() <= kMaxNameSize && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos;
}

Status ValidateInode(const InodeRecord& r) {
  if (r.size > kMaxFileSize) {
    return Err(Code::kInvalid, "inode {:016x}: size {} is over the {} limit", r.id, r.size,
               kMaxFileSize);
  }
  if (r.manifest.size() > kMaxDataChunks) {
    return Err(Code::kInvalid, "inode {:016x}: {} chunks hold data, over the {} limit", r.id,
               r.manifest.size(), kMaxDataChunks);
  }
  const std::uint64_t chunks = (r.size + kChunkSpan - 1) / kChunkSpan;
  if (auto last = r.manifest.LastIndex(); last && *last >= chunks) {
    return Err(Code::kInvalid, "inode {:016x}: chunk {} lies past the end ({} bytes)", r.id, *last,
               r.size);
  }
  if (r.kind != InodeKind::kFile && !r.manifest.empty()) {
    return Err(Code::kInvalid, "inode {:016x}: only a regular file has chunks", r.id);
  }
  if (r.rdev != 0 && r.kind != InodeKind::kBlockDevice && r.kind != InodeKind::kCharDevice) {
    return Err(Code::kInvalid, "inode {:016x}: only a device has a device number", r.id);
  }
  return Ok();
}

}  // namespace foreverfs::model
