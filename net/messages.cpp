// The encoding of every message; doc/protocol.md describes the same layout in prose and must be
// changed with it.

#include "net/messages.h"

#include <set>
#include <type_traits>

#include "net/codec.h"

namespace foreverfs::net {
using namespace foreverfs::model;  // the records and limits this file encodes
namespace {

// The fewest bytes each repeated item can take on the wire, used to bound a count by the bytes
// that are left before reserving anything.
constexpr std::size_t kMinPeerSize = 8 + 2;  // node_id, addr length
// node_id, addr length, state, incarnation, weight
constexpr std::size_t kMinMemberUpdateSize = 8 + 2 + 1 + 8 + 4;
constexpr std::size_t kMinInodeSize =
    8 + 1 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 16 + 2 + 1 + 2 + 2 + 4;  // fixed, lengths, counts
constexpr std::size_t kMinDentrySize = 8 + 2 + 8 + 8 + 8 + 1 + 16;   // an empty name fails later
constexpr std::size_t kDigestSize = std::tuple_size_v<crypto::Digest>;
constexpr std::size_t kManifestEntrySize = 8 + kDigestSize;  // chunk index, chunk id
constexpr std::uint32_t kModeBits = 07777;

// --- Encoding -----------------------------------------------------------------------------

void Put(Writer& w, const Version& v) {
  w.PutU64(v.hlc);
  w.PutU64(v.node);
}

void Put(Writer& w, const Hello& m) {
  w.PutU32(m.magic);
  w.PutU16(m.version);
  w.PutU64(m.reserved_id);
  w.PutStr16(m.reserved_addr);
  w.PutDigest(m.nonce);
}

void Put(Writer& w, const Auth& m) { w.PutDigest(m.proof); }

void Put(Writer& w, const Identity& m) {
  w.PutU64(m.node_id);
  w.PutU64(m.instance);
  w.PutU64(m.uptime_ms);
  w.PutStr16(m.listen_addr);
  w.PutDigest(m.proof);
}

void Put(Writer& w, const Peers& m) {
  w.PutU32(static_cast<std::uint32_t>(m.peers.size()));
  for (const PeerAddr& p : m.peers) {
    w.PutU64(p.node_id);
    w.PutStr16(p.addr);
  }
}

void Put(Writer& w, const Subscribe& m) {
  w.PutU64(m.since);
  if (m.answer) w.PutU8(1);
}

void Put(Writer& w, const InodeRecord& r) {
  w.PutU64(r.id);
  w.PutU8(static_cast<std::uint8_t>(r.kind));
  w.PutU32(r.mode);
  w.PutU32(r.uid);
  w.PutU32(r.gid);
  w.PutU64(r.size);
  w.PutU64(r.rdev);
  w.PutI64(r.mtime_ns);
  w.PutI64(r.ctime_ns);
  w.PutI64(r.atime_ns);
  Put(w, r.version);
  w.PutU16(static_cast<std::uint16_t>(r.content_clock.size()));
  for (const ClockEntry& e : r.content_clock) {
    w.PutU64(e.node);
    w.PutU64(e.hlc);
  }
  w.PutBool(r.deleted);
  w.PutStr16(r.symlink_target);
  w.PutU16(static_cast<std::uint16_t>(r.xattrs.size()));
  for (const Xattr& x : r.xattrs) {
    w.PutStr16(x.name);
    w.PutBlob32(x.value);
  }
  w.PutU32(static_cast<std::uint32_t>(r.manifest.size()));
  for (const ChunkMap::Entry& e : r.manifest) {
    w.PutU64(e.index);
    w.PutDigest(e.id);
  }
}

void Put(Writer& w, const DentryRecord& r) {
  w.PutU64(r.parent);
  w.PutStr16(r.name);
  w.PutU64(r.child);
  Put(w, r.version);
  w.PutBool(r.deleted);
  Put(w, r.replaces);
}

void Put(Writer& w, const Changes& m) {
  w.PutU64(m.up_to);
  w.PutU32(static_cast<std::uint32_t>(m.inodes.size()));
  for (const InodeRecord& r : m.inodes) Put(w, r);
  w.PutU32(static_cast<std::uint32_t>(m.dentries.size()));
  for (const DentryRecord& r : m.dentries) Put(w, r);
}

void Put(Writer& w, const GetChunk& m) {
  w.PutU64(m.request_id);
  w.PutDigest(m.id);
}

void Put(Writer& w, const ChunkReply& m) {
  w.PutU64(m.request_id);
  w.PutBool(m.found);
  w.PutBlob32(m.data);
}

void Put(Writer& w, const HaveChunks& m) {
  w.PutU64(m.request_id);
  w.PutU32(static_cast<std::uint32_t>(m.ids.size()));
  for (const crypto::Digest& d : m.ids) w.PutDigest(d);
}

void Put(Writer& w, const HaveChunksReply& m) {
  w.PutU64(m.request_id);
  w.PutU32(m.count);
  w.PutBlob32(m.bitmap);
}

void Put(Writer&, const Keepalive&) {}

void Put(Writer& w, const FeedAck& m) {
  w.PutU64(m.applied);
  w.PutU64(m.own_seq);
}

void Put(Writer& w, const std::vector<MemberUpdate>& updates) {
  w.PutU32(static_cast<std::uint32_t>(updates.size()));
  for (const MemberUpdate& u : updates) {
    w.PutU64(u.node_id);
    w.PutStr16(u.addr);
    w.PutU8(static_cast<std::uint8_t>(u.state));
    w.PutU64(u.incarnation);
    w.PutU32(u.weight);
  }
}

void Put(Writer& w, const MemberPing& m) {
  w.PutU64(m.seq);
  Put(w, m.updates);
}

void Put(Writer& w, const MemberAck& m) {
  w.PutU64(m.seq);
  Put(w, m.updates);
}

void Put(Writer& w, const MemberPingReq& m) {
  w.PutU64(m.seq);
  w.PutU64(m.target);
  w.PutStr16(m.target_addr);
  Put(w, m.updates);
}

void Put(Writer& w, const RelayedFeedAcks& m) {
  w.PutU64(m.via_seq);
  w.PutU32(static_cast<std::uint32_t>(m.acks.size()));
  for (const RelayedAck& a : m.acks) {
    w.PutU64(a.member);
    w.PutU64(a.applied);
  }
}

void Put(Writer& w, const DurableRequest& m) {
  w.PutU64(m.request_id);
  w.PutU64(m.seq);
  w.PutU64(m.inode);
  w.PutU64(m.version.hlc);
  w.PutU64(m.version.node);
}

void Put(Writer& w, const DurableReply& m) {
  w.PutU64(m.request_id);
  w.PutBool(m.ok);
  w.PutStr16(m.error);
}

void Put(Writer& w, const MemberSync& m) {
  w.PutBool(m.want_reply);
  Put(w, m.members);
}

// --- Decoding -----------------------------------------------------------------------------
// Each Get reads into `out` and leaves any failure in the Reader; DecodePayload checks it.

void Get(Reader& r, Version& v) {
  v.hlc = r.GetU64("version hlc");
  v.node = r.GetU64("version node");
}

void Get(Reader& r, Hello& m) {
  m.magic = r.GetU32("magic");
  if (r.ok() && m.magic != kMagic) {
    r.Fail(fmt::format("magic {:#010x} is not {:#010x}", m.magic, kMagic));
  }
  // A version other than ours is decoded: the transport refuses it with a better message.
  m.version = r.GetU16("version");
  // Protocol 2 sent the node id and listen address here; since 3 they are reserved (the sender
  // says who it is only after the peer proved the key). Another version's values are ignored.
  m.reserved_id = r.GetU64("reserved node id");
  m.reserved_addr = r.GetStr16("listen address", kMaxAddrSize);
  if (r.ok() && m.version == kProtocolVersion && (m.reserved_id != 0 || !m.reserved_addr.empty())) {
    r.Fail(
        "reserved node id and listen address must be zero and empty (no identity before the "
        "key proof)");
  }
  m.nonce = r.GetDigest("nonce");
}

void Get(Reader& r, Auth& m) { m.proof = r.GetDigest("proof"); }

void Get(Reader& r, Identity& m) {
  m.node_id = r.GetU64("node id");
  m.instance = r.GetU64("instance");
  m.uptime_ms = r.GetU64("uptime");
  m.listen_addr = r.GetStr16("listen address", kMaxAddrSize);
  m.proof = r.GetDigest("proof");
}

void Get(Reader& r, Peers& m) {
  std::uint32_t n = r.GetCount("peer", kMaxPeersPerMessage, kMinPeerSize);
  m.peers.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    PeerAddr& p = m.peers.emplace_back();
    p.node_id = r.GetU64("peer node id");
    p.addr = r.GetStr16("peer address", kMaxAddrSize);
  }
}

void Get(Reader& r, Subscribe& m) {
  m.since = r.GetU64("since");
  if (r.remaining() > 0) {
    // Only an answer carries the byte, and only as 1.
    if (r.GetU8("answer") != 1) r.Fail("the answer byte, when present, must be 1");
    m.answer = true;
  }
}

void Get(Reader& r, InodeRecord& rec) {
  rec.id = r.GetU64("inode id");
  std::uint8_t kind = r.GetU8("inode kind");
  if (r.ok()) {
    switch (static_cast<InodeKind>(kind)) {
      case InodeKind::kFile:
      case InodeKind::kDir:
      case InodeKind::kSymlink:
      case InodeKind::kFifo:
      case InodeKind::kBlockDevice:
      case InodeKind::kCharDevice:
      case InodeKind::kSocket:
        rec.kind = static_cast<InodeKind>(kind);
        break;
      default:
        r.Fail(fmt::format("inode {} has unknown kind {}", rec.id, kind));
    }
  }
  rec.mode = r.GetU32("inode mode");
  if (r.ok() && (rec.mode & ~kModeBits) != 0) {
    r.Fail(fmt::format("inode {} mode {:#o} has bits outside 07777", rec.id, rec.mode));
  }
  rec.uid = r.GetU32("inode uid");
  rec.gid = r.GetU32("inode gid");
  rec.size = r.GetU64("inode size");
  rec.rdev = r.GetU64("inode rdev");
  rec.mtime_ns = r.GetI64("inode mtime");
  rec.ctime_ns = r.GetI64("inode ctime");
  rec.atime_ns = r.GetI64("inode atime");
  Get(r, rec.version);
  std::uint16_t n_clock = r.GetU16("inode content clock count");
  if (r.ok() && n_clock > kMaxClockEntries) {
    r.Fail(fmt::format("inode {} content clock has {} entries, over {}", rec.id, n_clock,
                       kMaxClockEntries));
  }
  for (std::uint16_t i = 0; i < n_clock && r.ok(); ++i) {
    ClockEntry e{r.GetU64("clock node"), r.GetU64("clock hlc")};
    if (r.ok() && !rec.content_clock.empty() && !(rec.content_clock.back().node < e.node)) {
      r.Fail(fmt::format("inode {} content clock is not sorted by node", rec.id));
    }
    rec.content_clock.push_back(e);
  }
  rec.deleted = r.GetBool("inode deleted");
  rec.symlink_target = r.GetStr16("inode symlink target", kMaxSymlinkSize);
  std::uint16_t n_x = r.GetU16("inode xattr count");
  if (r.ok() && n_x > kMaxXattrs)
    r.Fail(fmt::format("inode {} has {} xattrs, over {}", rec.id, n_x, kMaxXattrs));
  std::size_t total = 0;
  for (std::uint16_t i = 0; i < n_x && r.ok(); ++i) {
    Xattr x;
    x.name = r.GetStr16("xattr name", kMaxNameSize);
    x.value = r.GetBlob32("xattr value", kMaxXattrValue);
    if (!r.ok()) break;
    total += x.name.size() + x.value.size();
    if (x.name.empty() || x.name.find('\0') != std::string::npos) {
      r.Fail(fmt::format("inode {} has an invalid xattr name", rec.id));
    } else if (!rec.xattrs.empty() && !(rec.xattrs.back().name < x.name)) {
      r.Fail(fmt::format("inode {} xattrs are not sorted and unique", rec.id));
    } else if (total > kMaxXattrTotal) {
      r.Fail(fmt::format("inode {} xattrs exceed {} bytes", rec.id, kMaxXattrTotal));
    }
    rec.xattrs.push_back(std::move(x));
  }
  // Bounded here by the bytes left only: a record over the file limits is well-formed and is
  // refused, alone, where records are applied (ValidateInode).
  std::uint32_t n =
      r.GetCount("inode manifest chunk", kMaxFrameSize / kManifestEntrySize, kManifestEntrySize);
  rec.manifest.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    std::uint64_t index = r.GetU64("inode manifest chunk index");
    crypto::Digest id = r.GetDigest("inode manifest chunk id");
    if (r.ok() && !rec.manifest.Append(index, id)) {
      r.Fail(fmt::format("inode {} manifest is not sorted by chunk index or lists a hole", rec.id));
    }
  }
}

void Get(Reader& r, DentryRecord& rec) {
  rec.parent = r.GetU64("dentry parent");
  rec.name = r.GetStr16("dentry name", kMaxNameSize);
  if (r.ok() && !ValidName(rec.name)) r.Fail("dentry name is invalid");
  rec.child = r.GetU64("dentry child");
  Get(r, rec.version);
  rec.deleted = r.GetBool("dentry deleted");
  Get(r, rec.replaces);
}

void Get(Reader& r, Changes& m) {
  m.up_to = r.GetU64("up_to");
  std::uint32_t n_inodes = r.GetCount("inode record", kMaxRecordsPerMessage, kMinInodeSize);
  m.inodes.reserve(n_inodes);
  for (std::uint32_t i = 0; i < n_inodes && r.ok(); ++i) Get(r, m.inodes.emplace_back());
  // The bound is on all records of the message together.
  std::uint32_t n_dentries =
      r.GetCount("dentry record", kMaxRecordsPerMessage - n_inodes, kMinDentrySize);
  m.dentries.reserve(n_dentries);
  for (std::uint32_t i = 0; i < n_dentries && r.ok(); ++i) Get(r, m.dentries.emplace_back());
}

void Get(Reader& r, GetChunk& m) {
  m.request_id = r.GetU64("request id");
  m.id = r.GetDigest("chunk id");
}

void Get(Reader& r, ChunkReply& m) {
  m.request_id = r.GetU64("request id");
  m.found = r.GetBool("found");
  m.data = r.GetBlob32("data", kMaxChunkPayload);
  if (r.ok() && !m.found && !m.data.empty()) {
    r.Fail(fmt::format("{} bytes of data in a not-found reply", m.data.size()));
  }
}

void Get(Reader& r, HaveChunks& m) {
  m.request_id = r.GetU64("request id");
  std::uint32_t n = r.GetCount("chunk id", kMaxHaveChunksQuery, kDigestSize);
  m.ids.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) m.ids.push_back(r.GetDigest("chunk id"));
}

void Get(Reader& r, HaveChunksReply& m) {
  m.request_id = r.GetU64("request id");
  m.count = r.GetU32("count");
  if (r.ok() && m.count > kMaxHaveChunksQuery) {
    r.Fail(fmt::format("count {} exceeds {}", m.count, kMaxHaveChunksQuery));
    return;
  }
  const std::size_t bytes = (std::size_t{m.count} + 7) / 8;
  m.bitmap = r.GetBlob32("bitmap", bytes);
  if (!r.ok()) return;
  if (m.bitmap.size() != bytes) {
    r.Fail(fmt::format("bitmap of {} bytes for {} ids, not {}", m.bitmap.size(), m.count, bytes));
  } else if (m.count % 8 != 0 && (m.bitmap.back() >> (m.count % 8)) != 0) {
    r.Fail("bitmap has bits set past the count");
  }
}

void Get(Reader&, Keepalive&) {}  // empty: any byte is a trailing byte

void Get(Reader& r, FeedAck& m) {
  m.applied = r.GetU64("applied");
  m.own_seq = r.GetU64("own_seq");
}

// A count of member updates (at most `max`, bounded by the bytes left), then each.
void Get(Reader& r, std::vector<MemberUpdate>& out, std::uint32_t max) {
  std::uint32_t n = r.GetCount("member update", max, kMinMemberUpdateSize);
  out.reserve(n);
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    MemberUpdate& u = out.emplace_back();
    u.node_id = r.GetU64("member node id");
    u.addr = r.GetStr16("member address", kMaxAddrSize);
    std::uint8_t state = r.GetU8("member state");
    if (r.ok() && (state < static_cast<std::uint8_t>(MemberState::kAlive) ||
                   state > static_cast<std::uint8_t>(MemberState::kRemoved))) {
      r.Fail(fmt::format("member {:016x} has unknown state {}", u.node_id, state));
    }
    u.state = static_cast<MemberState>(state);
    u.incarnation = r.GetU64("member incarnation");
    u.weight = r.GetU32("member weight");  // 0 decodes as 0 (canonical); receivers count it as 1
  }
}

void Get(Reader& r, MemberPing& m) {
  m.seq = r.GetU64("seq");
  Get(r, m.updates, kMaxMemberUpdates);
}

void Get(Reader& r, MemberAck& m) {
  m.seq = r.GetU64("seq");
  Get(r, m.updates, kMaxMemberUpdates);
}

void Get(Reader& r, MemberPingReq& m) {
  m.seq = r.GetU64("seq");
  m.target = r.GetU64("target");
  m.target_addr = r.GetStr16("target address", kMaxAddrSize);
  Get(r, m.updates, kMaxMemberUpdates);
}

void Get(Reader& r, MemberSync& m) {
  m.want_reply = r.GetBool("want_reply");
  Get(r, m.members, kMaxSyncMembers);
}

void Get(Reader& r, RelayedFeedAcks& m) {
  m.via_seq = r.GetU64("via_seq");
  std::uint32_t n = r.GetCount("relayed ack", kMaxSyncMembers, 16);
  m.acks.reserve(n);
  std::set<std::uint64_t> seen;
  for (std::uint32_t i = 0; i < n && r.ok(); ++i) {
    RelayedAck& a = m.acks.emplace_back();
    a.member = r.GetU64("member");
    a.applied = r.GetU64("applied");
    if (r.ok() && !seen.insert(a.member).second) {
      r.Fail(fmt::format("member {:016x} appears twice", a.member));
    }
  }
}

void Get(Reader& r, DurableRequest& m) {
  m.request_id = r.GetU64("request id");
  m.seq = r.GetU64("seq");
  m.inode = r.GetU64("inode");
  Get(r, m.version);
}

void Get(Reader& r, DurableReply& m) {
  m.request_id = r.GetU64("request id");
  m.ok = r.GetBool("ok");
  m.error = r.GetStr16("error", kMaxErrorSize);
}

template <typename T>
Result<Message> Decode(MessageType type, ByteSpan payload) {
  T m;
  Reader r(payload, TypeName(type));
  Get(r, m);
  if (Status s = r.Finish(); !s.ok()) return s;
  return Message(std::move(m));
}

bool KnownType(std::uint16_t t) {
  return t >= static_cast<std::uint16_t>(MessageType::kHello) &&
         t <= static_cast<std::uint16_t>(MessageType::kDurableReply);
}

}  // namespace

MessageType TypeOf(const Message& m) {
  // The variant's alternatives are in MessageType order, starting at 1.
  static_assert(std::is_same_v<std::variant_alternative_t<0, Message>, Hello>);
  static_assert(std::is_same_v<std::variant_alternative_t<6, Message>, ChunkReply>);
  static_assert(std::is_same_v<std::variant_alternative_t<8, Message>, HaveChunksReply>);
  static_assert(std::is_same_v<std::variant_alternative_t<9, Message>, Keepalive>);
  static_assert(std::is_same_v<std::variant_alternative_t<10, Message>, Identity>);
  static_assert(std::is_same_v<std::variant_alternative_t<11, Message>, FeedAck>);
  static_assert(std::is_same_v<std::variant_alternative_t<12, Message>, MemberPing>);
  static_assert(std::is_same_v<std::variant_alternative_t<15, Message>, MemberSync>);
  static_assert(std::is_same_v<std::variant_alternative_t<16, Message>, RelayedFeedAcks>);
  static_assert(std::is_same_v<std::variant_alternative_t<18, Message>, DurableReply>);
  static_assert(std::variant_size_v<Message> == 19);
  return static_cast<MessageType>(m.index() + 1);
}

const char* TypeName(MessageType t) {
  switch (t) {
    case MessageType::kHello:
      return "Hello";
    case MessageType::kAuth:
      return "Auth";
    case MessageType::kPeers:
      return "Peers";
    case MessageType::kSubscribe:
      return "Subscribe";
    case MessageType::kChanges:
      return "Changes";
    case MessageType::kGetChunk:
      return "GetChunk";
    case MessageType::kChunkReply:
      return "ChunkReply";
    case MessageType::kHaveChunks:
      return "HaveChunks";
    case MessageType::kHaveChunksReply:
      return "HaveChunksReply";
    case MessageType::kKeepalive:
      return "Keepalive";
    case MessageType::kIdentity:
      return "Identity";
    case MessageType::kFeedAck:
      return "FeedAck";
    case MessageType::kMemberPing:
      return "MemberPing";
    case MessageType::kMemberAck:
      return "MemberAck";
    case MessageType::kMemberPingReq:
      return "MemberPingReq";
    case MessageType::kMemberSync:
      return "MemberSync";
    case MessageType::kRelayedFeedAcks:
      return "RelayedFeedAcks";
    case MessageType::kDurableRequest:
      return "DurableRequest";
    case MessageType::kDurableReply:
      return "DurableReply";
  }
  return "Unknown";
}

const char* MemberStateName(MemberState s) {
  switch (s) {
    case MemberState::kAlive:
      return "alive";
    case MemberState::kSuspect:
      return "suspect";
    case MemberState::kDown:
      return "down";
    case MemberState::kRemoved:
      return "removed";
  }
  return "unknown";
}

Bytes EncodeFrame(const Message& m) {
  Writer w;
  w.PutU32(0);  // length, patched below
  w.PutU16(static_cast<std::uint16_t>(TypeOf(m)));
  std::visit([&w](const auto& msg) { Put(w, msg); }, m);
  // A frame over kMaxFrameSize is encoded anyway and refused by the receiver; senders split
  // their batches well below it.
  w.PatchU32(0, static_cast<std::uint32_t>(w.size() - 4));
  return std::move(w).Take();
}

Result<FrameHeader> DecodeFrameHeader(ByteSpan header) {
  if (header.size() != kFrameHeaderSize) {
    return Err(Code::kInvalid, "frame header is {} bytes, not {}", header.size(), kFrameHeaderSize);
  }
  Reader r(header, "frame header");
  FrameHeader h;
  h.length = r.GetU32("length");
  std::uint16_t type = r.GetU16("type");
  if (h.length < 2) return Err(Code::kInvalid, "frame length {} is below 2", h.length);
  if (h.length > kMaxFrameSize) {
    return Err(Code::kInvalid, "frame length {} exceeds {}", h.length, kMaxFrameSize);
  }
  if (!KnownType(type)) return Err(Code::kInvalid, "unknown message type {}", type);
  h.type = static_cast<MessageType>(type);
  return h;
}

Result<Message> DecodePayload(MessageType type, ByteSpan payload) {
  switch (type) {
    case MessageType::kHello:
      return Decode<Hello>(type, payload);
    case MessageType::kAuth:
      return Decode<Auth>(type, payload);
    case MessageType::kPeers:
      return Decode<Peers>(type, payload);
    case MessageType::kSubscribe:
      return Decode<Subscribe>(type, payload);
    case MessageType::kChanges:
      return Decode<Changes>(type, payload);
    case MessageType::kGetChunk:
      return Decode<GetChunk>(type, payload);
    case MessageType::kChunkReply:
      return Decode<ChunkReply>(type, payload);
    case MessageType::kHaveChunks:
      return Decode<HaveChunks>(type, payload);
    case MessageType::kHaveChunksReply:
      return Decode<HaveChunksReply>(type, payload);
    case MessageType::kKeepalive:
      return Decode<Keepalive>(type, payload);
    case MessageType::kIdentity:
      return Decode<Identity>(type, payload);
    case MessageType::kFeedAck:
      return Decode<FeedAck>(type, payload);
    case MessageType::kMemberPing:
      return Decode<MemberPing>(type, payload);
    case MessageType::kMemberAck:
      return Decode<MemberAck>(type, payload);
    case MessageType::kMemberPingReq:
      return Decode<MemberPingReq>(type, payload);
    case MessageType::kMemberSync:
      return Decode<MemberSync>(type, payload);
    case MessageType::kRelayedFeedAcks:
      return Decode<RelayedFeedAcks>(type, payload);
    case MessageType::kDurableRequest:
      return Decode<DurableRequest>(type, payload);
    case MessageType::kDurableReply:
      return Decode<DurableReply>(type, payload);
  }
  return Err(Code::kInvalid, "unknown message type {}", static_cast<std::uint16_t>(type));
}

HaveChunksReply EmptyHaveReply(std::uint64_t request_id, std::uint32_t count) {
  return HaveChunksReply{request_id, count, Bytes((std::size_t{count} + 7) / 8, 0)};
}

std::size_t EncodedSize(const InodeRecord& r) {
  std::size_t n = kMinInodeSize + r.content_clock.size() * 16 + r.symlink_target.size() +
                  r.manifest.size() * kManifestEntrySize;
  for (const Xattr& x : r.xattrs) n += 2 + x.name.size() + 4 + x.value.size();
  return n;
}

std::size_t EncodedSize(const DentryRecord& r) { return kMinDentrySize + r.name.size(); }

}  // namespace foreverfs::net
