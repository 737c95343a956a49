#pragma once
// model/: the replicated data model, below net/ (which encodes it) and server/ (which stores,
// merges and serves it): versions, inode and entry records, and the limits every record keeps.
// doc/namespace.md gives the rules by which records merge. Value types; not thread-safe (their
// owners guard them).

#include <compare>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/bytes.h"
#include "base/status.h"
#include "model/chunk_map.h"

namespace foreverfs::model {

inline constexpr std::size_t kMaxNameSize = 255;          // bytes of a directory entry name
inline constexpr std::size_t kMaxSymlinkSize = 4095;      // bytes of a symlink's target
inline constexpr std::uint64_t kChunkSpan = 1024 * 1024;  // bytes of a file each chunk covers
inline constexpr std::uint32_t kMaxXattrs = 128;          // per inode
inline constexpr std::size_t kMaxXattrValue = 64 * 1024;  // bytes, as Linux allows
inline constexpr std::size_t kMaxXattrTotal = 64 * 1024;  // names + values per inode

// A replicated version: hybrid logical clock, node id as tie-break. Newer compares greater.
struct Version {
  std::uint64_t hlc = 0;
  std::uint64_t node = 0;
  auto operator<=>(const Version&) const = default;
};

struct ClockEntry {
  std::uint64_t node = 0;
  std::uint64_t hlc = 0;
  bool operator==(const ClockEntry&) const = default;
};
inline constexpr std::uint32_t kMaxClockEntries = 256;

enum class InodeKind : std::uint8_t {
  kFile = 1,
  kDir = 2,
  kSymlink = 3,
  kFifo = 4,
  kBlockDevice = 5,  // rdev says which
  kCharDevice = 6,   // rdev says which
  kSocket = 7,
};
// True for the kinds that are only a name and attributes (no content, no target).
inline bool IsSpecial(InodeKind k) {
  return k == InodeKind::kFifo || k == InodeKind::kBlockDevice || k == InodeKind::kCharDevice ||
         k == InodeKind::kSocket;
}

// An extended attribute; an inode keeps them sorted by name, names unique.
struct Xattr {
  std::string name;
  Bytes value;
  bool operator==(const Xattr&) const = default;
};

// An inode's replicated state: attributes and the current manifest of a file.
struct InodeRecord {
  std::uint64_t id = 0;
  InodeKind kind = InodeKind::kFile;
  std::uint32_t mode = 0;  // permission bits only (07777)
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::uint64_t size = 0;  // at most kMaxFileSize
  std::uint64_t rdev = 0;  // device number of a block or character device, else 0
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  std::int64_t atime_ns = 0;
  Version version;
  // Content lineage, to tell a newer write from a concurrent one: for every node that wrote
  // the content this version descends from, the clock of its latest such write (a version
  // vector, sorted by node). A write by node n sets clock[n] to its version's hlc.
  std::vector<ClockEntry> content_clock;
  bool deleted = false;
  std::string symlink_target;
  std::vector<Xattr> xattrs;
  ChunkMap manifest;  // chunk i covers bytes [i MiB, (i+1) MiB); holes are not listed
  bool operator==(const InodeRecord&) const = default;
};

// A directory entry (parent, name) -> child, with its own version; deleted = tombstone.
struct DentryRecord {
  std::uint64_t parent = 0;
  std::string name;
  std::uint64_t child = 0;
  Version version;
  bool deleted = false;
  // The version of the live entry under this name that the writer knowingly replaced (zero if
  // the name was free). A live entry that replaced less than the one it wins over was made
  // concurrently, and the other file keeps a conflict name.
  Version replaces;
  bool operator==(const DentryRecord&) const = default;
};

// The limits a file must keep (size, chunks holding data, chunks within the size, content only
// in regular files, rdev only in devices). Records from peers are checked one by one: one over
// the limits is refused alone (kInvalid, saying what), the others in its batch still apply.
Status ValidateInode(const InodeRecord& r);

// True if `name` may be a directory entry name: 1..255 bytes, not "." or "..", no '/' or NUL.
bool ValidName(std::string_view name);

}  // namespace foreverfs::model
