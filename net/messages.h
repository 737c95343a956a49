#pragma once
// net/: the wire protocol's messages and their codec (doc/protocol.md describes it in prose).
// The records and limits they carry are the data model's (model/records.h).
// A frame is: u32 length (little-endian, of what follows), u16 message type, payload.
// Every length and count read from the wire is checked against the bounds below before
// anything is allocated; decoding never trusts the peer.

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "base/bytes.h"
#include "base/status.h"
#include "crypto/crypto.h"
#include "model/records.h"

namespace foreverfs::net {

// The records a Changes message carries are the data model's (model/records.h); net/ only
// encodes them.
using model::DentryRecord;
using model::InodeRecord;

inline constexpr std::uint32_t kMagic = 0x31534646;  // "FFS1" little-endian
// 2: sparse manifests, rdev. 3: no identity before the key proof (Identity after Auth).
inline constexpr std::uint16_t kProtocolVersion = 3;
inline constexpr std::size_t kFrameHeaderSize = 6;                // u32 length + u16 type
inline constexpr std::uint32_t kMaxFrameSize = 16 * 1024 * 1024;  // length field bound
inline constexpr std::size_t kMaxAddrSize = 255;
inline constexpr std::uint32_t kMaxPeersPerMessage = 1024;
inline constexpr std::uint32_t kMaxRecordsPerMessage = 65536;
inline constexpr std::uint32_t kMaxChunkPayload = 1024 * 1024;
inline constexpr std::uint32_t kMaxHaveChunksQuery = 4096;  // chunk ids in one HaveChunks

enum class MessageType : std::uint16_t {
  kHello = 1,
  kAuth = 2,
  kPeers = 3,
  kSubscribe = 4,
  kChanges = 5,
  kGetChunk = 6,
  kChunkReply = 7,
  kHaveChunks = 8,
  kHaveChunksReply = 9,
  kKeepalive = 10,
  kIdentity = 11,
  kFeedAck = 12,
  kMemberPing = 13,
  kMemberAck = 14,
  kMemberPingReq = 15,
  kMemberSync = 16,
  kRelayedFeedAcks = 17,
  kDurableRequest = 18,
  kDurableReply = 19,
};

// First message on a connection, from both sides. It says nothing about who the sender is:
// the peer has not proven the cluster key yet. On the wire it keeps protocol 2's layout, with
// the node id and listen address fields reserved (zero, empty), so that a node of another
// version decodes it and reports the version mismatch instead of a garbled frame.
struct Hello {
  std::uint32_t magic = kMagic;
  std::uint16_t version = kProtocolVersion;
  std::uint64_t reserved_id = 0;  // protocol 2's node id: 0 since 3
  std::string reserved_addr;      // protocol 2's listen address: empty since 3
  crypto::Digest nonce{};
  bool operator==(const Hello&) const = default;
};

// Second message, from both sides: proof of the cluster key over both nonces and the sender's
// role (dialer or acceptor).
struct Auth {
  crypto::Digest proof{};
  bool operator==(const Auth&) const = default;
};

// Third message, from both sides, sent only once the peer's Auth proved the cluster key: who
// the sender is, with a proof binding these fields to the key and to this connection's nonces.
struct Identity {
  std::uint64_t node_id = 0;
  std::uint64_t instance = 0;   // random per process: two processes with one node id differ here
  std::uint64_t uptime_ms = 0;  // how long the sending process has run (which clone is newer)
  std::string listen_addr;      // "host:port" this node accepts on ("" if unknown)
  crypto::Digest proof{};
  bool operator==(const Identity&) const = default;
};

struct PeerAddr {
  std::uint64_t node_id = 0;
  std::string addr;
  bool operator==(const PeerAddr&) const = default;
};
struct Peers {
  std::vector<PeerAddr> peers;
  bool operator==(const Peers&) const = default;
};

// "Stream me every namespace record you changed after your sequence number `since`."
// `answer`: sent in answer to a second Subscribe on the same link (server/change_feed.cpp);
// an answer is never answered. On the wire a byte 1 after `since`, present only then, so a
// plain Subscribe keeps its layout.
struct Subscribe {
  std::uint64_t since = 0;
  bool answer = false;
  bool operator==(const Subscribe&) const = default;
};

// Records in the sender's change order; after applying them the receiver has seen every change
// of the sender up to `up_to`.
struct Changes {
  std::uint64_t up_to = 0;
  std::vector<InodeRecord> inodes;
  std::vector<DentryRecord> dentries;
  bool operator==(const Changes&) const = default;
};

struct GetChunk {
  std::uint64_t request_id = 0;
  crypto::Digest id{};
  bool operator==(const GetChunk&) const = default;
};

struct ChunkReply {
  std::uint64_t request_id = 0;
  bool found = false;
  Bytes data;  // at most kMaxChunkPayload bytes
  bool operator==(const ChunkReply&) const = default;
};

// "Which of these chunks do you hold?" (for user.foreverfs.replicas); at most
// kMaxHaveChunksQuery ids.
struct HaveChunks {
  std::uint64_t request_id = 0;
  std::vector<crypto::Digest> ids;
  bool operator==(const HaveChunks&) const = default;
};

// The answer: bit i (of byte i / 8, least significant bit first) is set if the sender holds
// ids[i] locally. `count` must equal the query's id count.
struct HaveChunksReply {
  std::uint64_t request_id = 0;
  std::uint32_t count = 0;
  Bytes bitmap;  // exactly (count + 7) / 8 bytes; bits past `count` are zero
  bool Has(std::size_t i) const { return i < count && ((bitmap[i / 8] >> (i % 8)) & 1) != 0; }
  void Set(std::size_t i) {
    bitmap[i / 8] = static_cast<std::uint8_t>(bitmap[i / 8] | (1u << (i % 8)));
  }
  bool operator==(const HaveChunksReply&) const = default;
};
// A reply for `count` ids with no bit set.
HaveChunksReply EmptyHaveReply(std::uint64_t request_id, std::uint32_t count);

// "This link is alive": sent by the transport on a link that has sent nothing for a while, so
// that the other side's read deadline can tell a quiet peer from a vanished one. Empty; the
// transport consumes it and never hands it to a LinkHandler.
struct Keepalive {
  bool operator==(const Keepalive&) const = default;
};

// "I have applied your change feed through your sequence number `applied` (it is my persisted
// cursor), and my own feed was at `own_seq` when I said so." Sent by a subscriber after it
// applied batches (and once on every new link); the feed's owner uses it to know when every
// member holds a tombstone, which may then be purged (doc/protocol.md, "Tombstones").
struct FeedAck {
  std::uint64_t applied = 0;
  std::uint64_t own_seq = 0;
  bool operator==(const FeedAck&) const = default;
};

// --- Membership (doc/membership.md): SWIM-style failure detection and gossip -------------------

// A member's state as gossiped. Ordered: at one incarnation a later state wins over an earlier
// one (alive < suspect < down < removed). Any other value on the wire refuses the frame.
enum class MemberState : std::uint8_t {
  kAlive = 1,
  kSuspect = 2,
  kDown = 3,
  kRemoved = 4,
};
const char* MemberStateName(MemberState s);  // "alive", "suspect", "down", "removed", "unknown"
inline constexpr std::uint32_t kMaxMemberUpdates = 64;   // piggybacked on one ping, ack, ping-req
inline constexpr std::uint32_t kMaxSyncMembers = 16384;  // members in one MemberSync

// What one node says about a member: its address, state, incarnation (a counter only that
// member raises, to refute a suspicion or to come back after a restart) and placement weight
// (its capacity, which only the member sets, at start: server/placement.h).
struct MemberUpdate {
  std::uint64_t node_id = 0;
  std::string addr;  // "host:port" it accepts on, at most kMaxAddrSize bytes ("" if unknown)
  MemberState state = MemberState::kAlive;
  std::uint64_t incarnation = 0;
  std::uint32_t weight = 1;  // any value decodes; the receiver counts 0 as 1
  bool operator==(const MemberUpdate&) const = default;
};

// "Are you there?" (direct probe, or one an intermediary sends for a MemberPingReq).
struct MemberPing {
  std::uint64_t seq = 0;              // echoed in the ack
  std::vector<MemberUpdate> updates;  // piggybacked gossip, at most kMaxMemberUpdates
  bool operator==(const MemberPing&) const = default;
};

// The answer to a MemberPing (or, forwarded by an intermediary, to a MemberPingReq).
struct MemberAck {
  std::uint64_t seq = 0;
  std::vector<MemberUpdate> updates;  // at most kMaxMemberUpdates
  bool operator==(const MemberAck&) const = default;
};

// "Probe `target` for me and forward its ack with my `seq`" (indirect probe).
struct MemberPingReq {
  std::uint64_t seq = 0;
  std::uint64_t target = 0;
  std::string target_addr;            // at most kMaxAddrSize bytes
  std::vector<MemberUpdate> updates;  // at most kMaxMemberUpdates
  bool operator==(const MemberPingReq&) const = default;
};

// Anti-entropy: the sender's whole member table (itself included), sent when a link opens and
// to a seed on join (want_reply: answer with your own table). A table over kMaxSyncMembers goes
// in several messages.
struct MemberSync {
  bool want_reply = false;
  std::vector<MemberUpdate> members;  // at most kMaxSyncMembers
  bool operator==(const MemberSync&) const = default;
};

// "These members hold your change feed through `applied` (your sequence numbers), as far as I
// know; whatever each of them wrote before is in my own feed through `via_seq`." A node's
// neighbours relay what the members it has no link to confirmed, so that tombstones can be
// purged over a bounded link graph (doc/protocol.md, "Tombstones"). Sent every few seconds on
// long-lived links; at most kMaxSyncMembers entries, member ids unique.
struct RelayedAck {
  std::uint64_t member = 0;
  std::uint64_t applied = 0;
  bool operator==(const RelayedAck&) const = default;
};
struct RelayedFeedAcks {
  std::uint64_t via_seq = 0;
  std::vector<RelayedAck> acks;
  bool operator==(const RelayedFeedAcks&) const = default;
};

// "Make inode `inode` at `version` (or newer) durable on your disk: its record, which is in my
// change feed through `seq`, and every chunk it names; then say so." Sent by a node whose
// fsync(2) waits for --sync-copies members (doc/protocol.md, "Durable copies").
struct DurableRequest {
  std::uint64_t request_id = 0;
  std::uint64_t seq = 0;
  std::uint64_t inode = 0;
  model::Version version;
  bool operator==(const DurableRequest&) const = default;
};
// The answer: done, or why not (at most kMaxErrorSize bytes).
inline constexpr std::size_t kMaxErrorSize = 1024;
struct DurableReply {
  std::uint64_t request_id = 0;
  bool ok = false;
  std::string error;
  bool operator==(const DurableReply&) const = default;
};

using Message =
    std::variant<Hello, Auth, Peers, Subscribe, Changes, GetChunk, ChunkReply, HaveChunks,
                 HaveChunksReply, Keepalive, Identity, FeedAck, MemberPing, MemberAck,
                 MemberPingReq, MemberSync, RelayedFeedAcks, DurableRequest, DurableReply>;

MessageType TypeOf(const Message& m);
const char* TypeName(MessageType t);

// A whole frame: header and payload.
Bytes EncodeFrame(const Message& m);

struct FrameHeader {
  std::uint32_t length = 0;  // bytes after the length field: 2 (type) + payload
  MessageType type{};
};
// Checks the length bound (2 <= length <= kMaxFrameSize) and that the type is known.
Result<FrameHeader> DecodeFrameHeader(ByteSpan header /* kFrameHeaderSize bytes */);
// Decodes a payload of the given type. Rejects (kInvalid, saying what) truncated payloads,
// trailing bytes, counts or lengths over their bounds, invalid names (empty, ".", "..", with
// '/' or NUL, over kMaxNameSize), unknown inode kinds, a Hello whose magic is wrong, and a Hello of
// this protocol version whose reserved fields are not zero and empty.
Result<Message> DecodePayload(MessageType type, ByteSpan payload);

// Bytes a record takes in a Changes message, to bound batches by their encoded size.
std::size_t EncodedSize(const InodeRecord& r);
std::size_t EncodedSize(const DentryRecord& r);

}  // namespace foreverfs::net
