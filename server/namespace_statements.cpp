#include "server/namespace_statements.h"

#include <cstring>

#include "net/codec.h"

namespace foreverfs::server::sql {

using model::DentryRecord;
using model::InodeKind;
using model::InodeRecord;

// A manifest in one column: (u64 chunk index, 32-byte id) for every chunk holding data, by
// index (native byte order, as the other blobs of this file).
Bytes EncodeManifest(const model::ChunkMap& m) {
  Bytes out(m.size() * 40);
  std::size_t at = 0;
  for (const auto& e : m) {
    std::memcpy(out.data() + at, &e.index, 8);
    std::memcpy(out.data() + at + 8, e.id.data(), 32);
    at += 40;
  }
  return out;
}

model::ChunkMap DecodeManifest(ByteSpan blob) {
  model::ChunkMap m;
  m.reserve(blob.size() / 40);
  for (std::size_t at = 0; at + 40 <= blob.size(); at += 40) {
    std::uint64_t index;
    crypto::Digest id;
    std::memcpy(&index, blob.data() + at, 8);
    std::memcpy(id.data(), blob.data() + at + 8, 32);
    (void)m.Append(index, id);
  }
  return m;
}

// Extended attributes in one column: u16 name length, name, u32 value length, value; repeated.
Bytes EncodeXattrs(const std::vector<model::Xattr>& xattrs) {
  net::Writer w;
  for (const auto& x : xattrs) {
    w.PutStr16(x.name);
    w.PutBlob32(x.value);
  }
  return std::move(w).Take();
}

std::vector<model::Xattr> DecodeXattrs(ByteSpan blob) {
  std::vector<model::Xattr> out;
  net::Reader r(blob, "xattrs");
  while (r.ok() && r.remaining() > 0) {
    model::Xattr x;
    x.name = r.GetStr16("name", model::kMaxNameSize);
    x.value = r.GetBlob32("value", model::kMaxXattrValue);
    if (r.ok()) out.push_back(std::move(x));
  }
  return out;
}

InodeRecord ReadInode(Stmt& s) {
  InodeRecord r;
  r.id = U(s.Int(0));
  r.kind = static_cast<InodeKind>(s.Int(1));
  r.mode = static_cast<std::uint32_t>(s.Int(2));
  r.uid = static_cast<std::uint32_t>(s.Int(3));
  r.gid = static_cast<std::uint32_t>(s.Int(4));
  r.size = U(s.Int(5));
  r.mtime_ns = s.Int(6);
  r.ctime_ns = s.Int(7);
  r.version = {U(s.Int(8)), U(s.Int(9))};
  r.deleted = s.Int(10) != 0;
  r.symlink_target = s.Text(11);
  r.manifest = DecodeManifest(s.Blob(12));
  r.atime_ns = s.Int(14);
  r.xattrs = DecodeXattrs(s.Blob(15));
  ByteSpan clock = s.Blob(16);
  for (std::size_t i = 0; i + 16 <= clock.size(); i += 16) {
    model::ClockEntry e;
    std::memcpy(&e.node, clock.data() + i, 8);
    std::memcpy(&e.hlc, clock.data() + i + 8, 8);
    r.content_clock.push_back(e);
  }
  r.rdev = U(s.Int(17));
  return r;
}

DentryRecord ReadDentry(Stmt& s) {
  DentryRecord d;
  d.parent = U(s.Int(0));
  d.name = s.Text(1);
  d.child = U(s.Int(2));
  d.version = {U(s.Int(3)), U(s.Int(4))};
  d.deleted = s.Int(5) != 0;
  d.replaces = {U(s.Int(6)), U(s.Int(7))};
  return d;
}

Bytes EncodeClock(const std::vector<model::ClockEntry>& clock) {
  Bytes out(clock.size() * 16);
  for (std::size_t i = 0; i < clock.size(); ++i) {
    std::memcpy(out.data() + 16 * i, &clock[i].node, 8);
    std::memcpy(out.data() + 16 * i + 8, &clock[i].hlc, 8);
  }
  return out;
}

}  // namespace foreverfs::server::sql
