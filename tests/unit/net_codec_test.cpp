// The wire codec: every message round-trips, the layout is the one doc/protocol.md describes,
// and hostile input (truncated, oversized, malformed, random) is rejected without crashing or
// allocating what the peer asks for.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "net/codec.h"
#include "net/messages.h"

namespace foreverfs::net {
namespace {

using namespace foreverfs::model;  // the records the codec carries
using ::testing::HasSubstr;

crypto::Digest DigestOf(std::uint8_t seed) {
  crypto::Digest d;
  for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<std::uint8_t>(seed + 7 * i);
  return d;
}

// Encodes, decodes the header, checks it against the frame and decodes the payload.
Result<Message> RoundTrip(const Message& m) {
  Bytes frame = EncodeFrame(m);
  EXPECT_GE(frame.size(), kFrameHeaderSize);
  auto h = DecodeFrameHeader(ByteSpan(frame).first(kFrameHeaderSize));
  if (!h.ok()) return h.status();
  EXPECT_EQ(h->length, frame.size() - 4);
  EXPECT_EQ(h->type, TypeOf(m));
  return DecodePayload(h->type, ByteSpan(frame).subspan(kFrameHeaderSize));
}

// The payload of `m`'s frame.
Bytes PayloadOf(const Message& m) {
  Bytes frame = EncodeFrame(m);
  return Bytes(frame.begin() + kFrameHeaderSize, frame.end());
}

Status DecodeStatus(MessageType type, const Bytes& payload) {
  return DecodePayload(type, payload).status();
}

InodeRecord SampleFile() {
  InodeRecord r;
  r.id = 0x1122334455667788ull;
  r.kind = InodeKind::kFile;
  r.mode = 0644;
  r.uid = 1000;
  r.gid = 4294967295u;
  r.size = 3 * kMiB + 17;
  r.mtime_ns = -1234567890123456789ll;  // before 1970
  r.ctime_ns = std::numeric_limits<std::int64_t>::max();
  r.atime_ns = 17;
  r.version = {0xAABBCCDDEEFF0011ull, 42};
  r.content_clock = {{42, 0xAABBCCDDEEFF0010ull}, {77, 78}};
  r.manifest.Set(0, DigestOf(1));
  r.manifest.Set(1, DigestOf(2));
  r.manifest.Set(3, DigestOf(4));  // chunk 2 is a hole
  r.xattrs = {{"user.a", {}}, {"user.b", Bytes(300, 0x5a)}};
  return r;
}

InodeRecord SampleSymlink() {
  InodeRecord r;
  r.id = 7;
  r.kind = InodeKind::kSymlink;
  r.mode = 07777;
  r.symlink_target = "../some/where/else";
  r.version = {5, 6};
  r.deleted = true;
  return r;
}

InodeRecord SampleDir() {
  InodeRecord r;
  r.id = 1;
  r.kind = InodeKind::kDir;
  r.mode = 0755;
  r.mtime_ns = 1;
  r.version = {1, std::numeric_limits<std::uint64_t>::max()};
  return r;
}

Changes SampleChanges() {
  Changes c;
  c.up_to = 987654321;
  c.inodes = {SampleFile(), SampleSymlink(), SampleDir()};
  c.dentries = {
      {1, "hello.txt", 0x1122334455667788ull, {10, 1}, false},
      {1, "link", 7, {11, 2}, true},
      {7, std::string(kMaxNameSize, 'x'), 9, {12, 3}, false},
      {7, "\xc3\xa9t\xc3\xa9 \x01\x7f", 10, {13, 4}, false},  // any byte but '/' and NUL
  };
  return c;
}

// --- Round trips --------------------------------------------------------------------------

TEST(NetCodecTest, RoundTripsEveryMessageType) {
  std::vector<Message> messages = {
      Hello{kMagic, kProtocolVersion, 0, "", DigestOf(9)},
      Hello{kMagic, 7, 1, "", DigestOf(0)},  // another version decodes; the transport refuses it
      Hello{kMagic, 2, 0xDEADBEEFCAFEF00Dull, "10.0.0.7:7070", DigestOf(9)},  // protocol 2's
      Auth{DigestOf(200)},
      Identity{0xDEADBEEFCAFEF00Dull, 0x0102030405060708ull, 12345, "10.0.0.7:7070", DigestOf(7)},
      Identity{1, 2, 0, "", DigestOf(0)},
      Peers{
          {{1, "a:1"}, {0xFFFFFFFFFFFFFFFFull, "[::1]:7070"}, {3, std::string(kMaxAddrSize, 'h')}}},
      Peers{},
      Subscribe{0x0102030405060708ull},
      Subscribe{0xFFFFFFFFFFFFFFFFull, true},
      SampleChanges(),
      Changes{},
      GetChunk{77, DigestOf(33)},
      ChunkReply{78, true, Bytes{0, 1, 2, 3, 255}},
      ChunkReply{79, false, {}},
      ChunkReply{80, true, {}},
      FeedAck{0x0102030405060708ull, 0xFFFFFFFFFFFFFFFFull},
      FeedAck{},
      MemberPing{1, {{2, "10.0.0.2:3000", MemberState::kAlive, 0}}},
      MemberPing{},
      MemberAck{0xFFFFFFFFFFFFFFFFull,
                {{3, "", MemberState::kSuspect, 7}, {4, "h:1", MemberState::kDown, 8}}},
      MemberPingReq{5, 6, "10.0.0.6:3000", {{7, "x:1", MemberState::kRemoved, ~0ull}}},
      MemberPingReq{},
      MemberSync{true, {{8, "a:1", MemberState::kAlive, 1}}},
      MemberSync{},
  };
  for (const Message& m : messages) {
    SCOPED_TRACE(TypeName(TypeOf(m)));
    auto decoded = RoundTrip(m);
    ASSERT_TRUE(decoded.ok()) << decoded.status().message();
    EXPECT_TRUE(*decoded == m);
  }
}

TEST(NetCodecTest, RoundTripsAtTheBounds) {
  InodeRecord link = SampleSymlink();
  link.symlink_target = std::string(kMaxSymlinkSize, 's');
  Changes c{1, {link}, {}};
  auto d1 = RoundTrip(c);
  ASSERT_TRUE(d1.ok()) << d1.status().message();
  EXPECT_TRUE(*d1 == Message(c));

  ChunkReply big{1, true, Bytes(kMaxChunkPayload, 0xAB)};
  auto d2 = RoundTrip(big);
  ASSERT_TRUE(d2.ok()) << d2.status().message();
  EXPECT_TRUE(*d2 == Message(big));

  Peers many;
  for (std::uint32_t i = 0; i < kMaxPeersPerMessage; ++i) many.peers.push_back({i, "p"});
  auto d3 = RoundTrip(many);
  ASSERT_TRUE(d3.ok()) << d3.status().message();
  EXPECT_TRUE(*d3 == Message(many));

  Changes records;
  records.inodes.resize(kMaxRecordsPerMessage / 2);
  records.dentries.resize(kMaxRecordsPerMessage / 2, DentryRecord{1, "n", 2, {3, 4}, false});
  auto d4 = RoundTrip(records);
  ASSERT_TRUE(d4.ok()) << d4.status().message();
  EXPECT_TRUE(*d4 == Message(records));
}

TEST(NetCodecTest, TypeOfAndTypeName) {
  EXPECT_EQ(TypeOf(Hello{}), MessageType::kHello);
  EXPECT_EQ(TypeOf(Auth{}), MessageType::kAuth);
  EXPECT_EQ(TypeOf(Peers{}), MessageType::kPeers);
  EXPECT_EQ(TypeOf(Subscribe{}), MessageType::kSubscribe);
  EXPECT_EQ(TypeOf(Changes{}), MessageType::kChanges);
  EXPECT_EQ(TypeOf(GetChunk{}), MessageType::kGetChunk);
  EXPECT_EQ(TypeOf(ChunkReply{}), MessageType::kChunkReply);
  EXPECT_EQ(TypeOf(Keepalive{}), MessageType::kKeepalive);
  EXPECT_EQ(TypeOf(Identity{}), MessageType::kIdentity);
  EXPECT_STREQ(TypeName(MessageType::kIdentity), "Identity");
  EXPECT_STREQ(TypeName(MessageType::kHello), "Hello");
  EXPECT_STREQ(TypeName(MessageType::kChunkReply), "ChunkReply");
  EXPECT_STREQ(TypeName(static_cast<MessageType>(99)), "Unknown");
}

// The exact bytes of doc/protocol.md, so the document and the code cannot drift apart silently.
TEST(NetCodecTest, FrameLayoutMatchesTheDocument) {
  EXPECT_EQ(EncodeFrame(Subscribe{0x0102030405060708ull}),
            (Bytes{10, 0, 0, 0, 4, 0, 8, 7, 6, 5, 4, 3, 2, 1}));

  // Protocol 3's Hello: magic, version, the reserved node id and address (zero, empty), nonce.
  Bytes hello = EncodeFrame(Hello{kMagic, 3, 0, "", DigestOf(0)});
  Bytes expected = {50, 0, 0, 0, 1, 0, 'F', 'F', 'S', '1', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  crypto::Digest nonce = DigestOf(0);
  expected.insert(expected.end(), nonce.begin(), nonce.end());
  EXPECT_EQ(hello, expected);

  Bytes identity = EncodeFrame(Identity{2, 3, 4, "ab", DigestOf(0)});
  Bytes expected_id = {62, 0, 0, 0, 11, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0,   0,
                       0,  0, 0, 0, 0,  4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 'a', 'b'};
  expected_id.insert(expected_id.end(), nonce.begin(), nonce.end());
  EXPECT_EQ(identity, expected_id);

  Bytes reply = EncodeFrame(ChunkReply{3, true, Bytes{9, 8}});
  EXPECT_EQ(reply, (Bytes{17, 0, 0, 0, 7, 0, 3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 9, 8}));

  Changes c;
  c.up_to = 5;
  c.dentries = {{1, "a", 2, {3, 4}, true, {5, 6}}};
  EXPECT_EQ(EncodeFrame(c), (Bytes{70, 0, 0, 0, 5, 0,                   // header
                                   5,  0, 0, 0, 0, 0, 0, 0,             // up_to
                                   0,  0, 0, 0,                         // no inodes
                                   1,  0, 0, 0,                         // one dentry
                                   1,  0, 0, 0, 0, 0, 0, 0, 1, 0, 'a',  // parent, name
                                   2,  0, 0, 0, 0, 0, 0, 0, 3, 0, 0,   0, 0, 0, 0, 0,  // child, hlc
                                   4,  0, 0, 0, 0, 0, 0, 0, 1,  // node, deleted
                                   5,  0, 0, 0, 0, 0, 0, 0,     // replaces: hlc
                                   6,  0, 0, 0, 0, 0, 0, 0}));  // replaces: node

  // FeedAck: applied, then own_seq.
  EXPECT_EQ(EncodeFrame(FeedAck{0x0102030405060708ull, 9}),
            (Bytes{18, 0, 0, 0, 12, 0, 8, 7, 6, 5, 4, 3, 2, 1, 9, 0, 0, 0, 0, 0, 0, 0}));

  Changes i;
  i.inodes = {SampleDir()};
  Bytes inode_payload = PayloadOf(i);
  // up_to 8 + count 4 + 88 fixed bytes of the record + count 4 of dentries.
  EXPECT_EQ(inode_payload.size(), 8u + 4u + 88u + 4u);
}

TEST(NetCodecTest, XattrsAreBoundedSortedAndNamed) {
  auto decode = [](std::vector<Xattr> xattrs) {
    Changes c;
    InodeRecord r = SampleFile();
    r.xattrs = std::move(xattrs);
    c.inodes = {r};
    return DecodePayload(MessageType::kChanges, PayloadOf(c));
  };
  EXPECT_TRUE(decode({{"user.x", Bytes(kMaxXattrValue - 6, 1)}}).ok());
  EXPECT_FALSE(decode({{"user.b", {}}, {"user.a", {}}}).ok());  // not sorted
  EXPECT_FALSE(decode({{"user.a", {}}, {"user.a", {}}}).ok());  // not unique
  EXPECT_FALSE(decode({{"", {1}}}).ok());
  EXPECT_FALSE(decode({{std::string("user.\0x", 7), {1}}}).ok());
  EXPECT_FALSE(decode({{"user.big", Bytes(kMaxXattrValue + 1, 1)}}).ok());
  EXPECT_FALSE(decode({{"user.a", Bytes(40000, 1)}, {"user.b", Bytes(40000, 1)}}).ok());
  std::vector<Xattr> many;
  for (unsigned i = 0; i <= kMaxXattrs; ++i) many.push_back({fmt::format("user.{:04}", i), {}});
  EXPECT_FALSE(decode(many).ok());
  many.pop_back();
  EXPECT_TRUE(decode(many).ok());
}

// --- Frame header -------------------------------------------------------------------------

Bytes Header(std::uint32_t length, std::uint16_t type) {
  Writer w;
  w.PutU32(length);
  w.PutU16(type);
  return std::move(w).Take();
}

TEST(NetCodecTest, FrameHeaderBounds) {
  auto ok2 = DecodeFrameHeader(Header(2, 3));
  ASSERT_TRUE(ok2.ok());
  EXPECT_EQ(ok2->length, 2u);
  EXPECT_EQ(ok2->type, MessageType::kPeers);
  EXPECT_TRUE(DecodeFrameHeader(Header(kMaxFrameSize, 5)).ok());

  for (std::uint32_t bad : {0u, 1u}) {
    auto h = DecodeFrameHeader(Header(bad, 1));
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), Code::kInvalid);
    EXPECT_THAT(h.status().message(), HasSubstr("below 2"));
  }
  auto over = DecodeFrameHeader(Header(kMaxFrameSize + 1, 1));
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), Code::kInvalid);
  auto huge = DecodeFrameHeader(Header(0xFFFFFFFFu, 1));
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().message(), "frame length 4294967295 exceeds 16777216");
}

TEST(NetCodecTest, FrameHeaderRejectsUnknownTypes) {
  for (std::uint16_t t : {0, 20, 21, 256, 0xFFFF}) {
    auto h = DecodeFrameHeader(Header(10, t));
    ASSERT_FALSE(h.ok()) << t;
    EXPECT_EQ(h.status().code(), Code::kInvalid);
    EXPECT_EQ(h.status().message(), "unknown message type " + std::to_string(t));
  }
  for (std::uint16_t t = 1; t <= 16; ++t) EXPECT_TRUE(DecodeFrameHeader(Header(10, t)).ok()) << t;
}

TEST(NetCodecTest, FrameHeaderMustBeSixBytes) {
  Bytes h = Header(10, 1);
  EXPECT_FALSE(DecodeFrameHeader(ByteSpan(h).first(5)).ok());
  h.push_back(0);
  EXPECT_FALSE(DecodeFrameHeader(h).ok());
}

TEST(NetCodecTest, DecodePayloadRejectsUnknownType) {
  auto r = DecodePayload(static_cast<MessageType>(99), Bytes{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalid);
}

// --- Truncation and trailing bytes --------------------------------------------------------

TEST(NetCodecTest, RejectsChangesTruncatedAtEveryLength) {
  Message m = SampleChanges();
  Bytes payload = PayloadOf(m);
  ASSERT_GT(payload.size(), 400u);
  for (std::size_t n = 0; n < payload.size(); ++n) {
    auto r = DecodePayload(MessageType::kChanges, ByteSpan(payload).first(n));
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes decoded";
    EXPECT_EQ(r.status().code(), Code::kInvalid);
    EXPECT_THAT(r.status().message(), HasSubstr("Changes: ")) << n;
  }
  EXPECT_TRUE(DecodePayload(MessageType::kChanges, payload).ok());
}

TEST(NetCodecTest, RejectsEveryTypeTruncatedOrWithATrailingByte) {
  std::vector<Message> messages = {
      Hello{kMagic, 1, 2, "h:1", DigestOf(1)},
      Auth{DigestOf(2)},
      Identity{1, 2, 3, "h:1", DigestOf(3)},
      Peers{{{1, "x:1"}, {2, "y:2"}}},
      GetChunk{4, DigestOf(5)},
      ChunkReply{6, true, Bytes{1, 2, 3}},
      FeedAck{7, 8},
      MemberPing{9, {{1, "a:1", MemberState::kAlive, 2}}},
      MemberAck{10, {{1, "a:1", MemberState::kSuspect, 2}}},
      MemberPingReq{11, 12, "t:1", {{1, "", MemberState::kDown, 2}}},
      MemberSync{false, {{1, "a:1", MemberState::kRemoved, 2}, {3, "b:2", MemberState::kAlive, 4}}},
  };
  for (const Message& m : messages) {
    SCOPED_TRACE(TypeName(TypeOf(m)));
    Bytes payload = PayloadOf(m);
    for (std::size_t n = 0; n < payload.size(); ++n) {
      EXPECT_FALSE(DecodePayload(TypeOf(m), ByteSpan(payload).first(n)).ok()) << n;
    }
    payload.push_back(0);
    Status s = DecodeStatus(TypeOf(m), payload);
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("1 trailing byte"));
  }
}

// Subscribe's answer byte is there only on an answer, and only as 1: a plain Subscribe keeps
// the 8-byte layout of doc/protocol.md.
TEST(NetCodecTest, SubscribeCarriesTheAnswerByteOnlyOnAnAnswer) {
  const Bytes plain = PayloadOf(Subscribe{3});
  EXPECT_EQ(plain, (Bytes{3, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(PayloadOf(Subscribe{3, true}), (Bytes{3, 0, 0, 0, 0, 0, 0, 0, 1}));
  for (std::size_t n = 0; n < plain.size(); ++n) {
    EXPECT_FALSE(DecodePayload(MessageType::kSubscribe, ByteSpan(plain).first(n)).ok()) << n;
  }
  auto decoded = [](Bytes payload) { return DecodePayload(MessageType::kSubscribe, payload); };
  ASSERT_TRUE(decoded(plain).ok());
  EXPECT_EQ(std::get<Subscribe>(*decoded(plain)), (Subscribe{3, false}));
  Bytes answer = plain;
  answer.push_back(1);
  ASSERT_TRUE(decoded(answer).ok());
  EXPECT_EQ(std::get<Subscribe>(*decoded(answer)), (Subscribe{3, true}));
  for (std::uint8_t bad : {0, 2, 255}) {
    Bytes b = plain;
    b.push_back(bad);
    EXPECT_THAT(DecodeStatus(MessageType::kSubscribe, b).message(), HasSubstr("must be 1"))
        << int{bad};
  }
  answer.push_back(0);
  Status s = DecodeStatus(MessageType::kSubscribe, answer);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_THAT(s.message(), HasSubstr("1 trailing byte"));
}

TEST(NetCodecTest, RejectsChangesWithATrailingByte) {
  Bytes payload = PayloadOf(SampleChanges());
  payload.push_back(0);
  Status s = DecodeStatus(MessageType::kChanges, payload);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_EQ(s.message(), "Changes: 1 trailing byte(s) after the message");
}

// --- Oversized counts and lengths (handcrafted) ------------------------------------------

TEST(NetCodecTest, RejectsOversizedPeerCounts) {
  for (std::uint32_t count : {kMaxPeersPerMessage + 1, 0xFFFFFFFFu}) {
    Writer w;
    w.PutU32(count);
    Status s = DecodeStatus(MessageType::kPeers, std::move(w).Take());
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("exceeds 1024")) << s.message();
  }
  // Within the bound but more than the bytes left could hold.
  Writer w;
  w.PutU32(1000);
  w.PutU64(1);
  w.PutStr16("a");
  Status s = DecodeStatus(MessageType::kPeers, std::move(w).Take());
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_THAT(s.message(), HasSubstr("needs at least"));
}

TEST(NetCodecTest, RejectsOversizedRecordCounts) {
  for (std::uint32_t count : {kMaxRecordsPerMessage + 1, 0xFFFFFFFFu}) {
    Writer w;
    w.PutU64(1);
    w.PutU32(count);
    Status s = DecodeStatus(MessageType::kChanges, std::move(w).Take());
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("inode record count")) << s.message();
    EXPECT_THAT(s.message(), HasSubstr("exceeds 65536")) << s.message();
  }
  {
    Writer w;
    w.PutU64(1);
    w.PutU32(0);
    w.PutU32(0xFFFFFFFFu);
    Status s = DecodeStatus(MessageType::kChanges, std::move(w).Take());
    EXPECT_THAT(s.message(), HasSubstr("dentry record count 4294967295 exceeds")) << s.message();
  }
  {
    // The bound is on inodes and dentries together.
    Changes c;
    c.inodes = {SampleDir()};
    Bytes payload = PayloadOf(c);
    payload.resize(payload.size() - 4);
    Writer w;
    w.PutRaw(payload);
    w.PutU32(kMaxRecordsPerMessage);
    Status s = DecodeStatus(MessageType::kChanges, std::move(w).Take());
    EXPECT_THAT(s.message(), HasSubstr("dentry record count 65536 exceeds 65535")) << s.message();
  }
  {
    // Within the bound, but the payload cannot hold that many records.
    Writer w;
    w.PutU64(1);
    w.PutU32(kMaxRecordsPerMessage);
    w.PutRaw(Bytes(100, 0));
    Status s = DecodeStatus(MessageType::kChanges, std::move(w).Take());
    EXPECT_THAT(s.message(), HasSubstr("needs at least")) << s.message();
  }
}

// A Changes payload with one record whose manifest count is `count`, followed by `extra`.
Bytes InodeWithManifestCount(std::uint32_t count, const Bytes& extra) {
  Changes c;
  c.inodes = {SampleDir()};
  Bytes payload = PayloadOf(c);
  // The record's manifest count sits just before the dentry count (both 0 here).
  std::size_t at = payload.size() - 8;
  for (int i = 0; i < 4; ++i) payload[at + i] = static_cast<std::uint8_t>(count >> (8 * i));
  payload.insert(payload.end() - 4, extra.begin(), extra.end());
  return payload;
}

// `n` well-formed manifest entries (index, id) as they appear on the wire.
Bytes ManifestEntries(std::uint32_t n) {
  Writer w;
  for (std::uint32_t i = 0; i < n; ++i) {
    w.PutU64(i);
    w.PutDigest(DigestOf(static_cast<int>(i) + 1));
  }
  return std::move(w).Take();
}

TEST(NetCodecTest, RejectsOversizedManifestCounts) {
  EXPECT_TRUE(
      DecodePayload(MessageType::kChanges, InodeWithManifestCount(2, ManifestEntries(2))).ok());
  const std::uint32_t max = kMaxFrameSize / 40;
  for (std::uint32_t count : {max + 1, 0xFFFFFFFFu}) {
    Status s = DecodeStatus(MessageType::kChanges, InodeWithManifestCount(count, {}));
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("manifest chunk count")) << s.message();
    EXPECT_THAT(s.message(), HasSubstr(fmt::format("exceeds {}", max))) << s.message();
  }
  Status s = DecodeStatus(MessageType::kChanges, InodeWithManifestCount(3, ManifestEntries(2)));
  EXPECT_THAT(s.message(), HasSubstr("needs at least 120 bytes")) << s.message();
}

TEST(NetCodecTest, RejectsManifestsOutOfOrderOrListingHoles) {
  Writer w;
  w.PutU64(5);
  w.PutDigest(DigestOf(1));
  w.PutU64(5);  // the same index again
  w.PutDigest(DigestOf(2));
  Status s = DecodeStatus(MessageType::kChanges, InodeWithManifestCount(2, std::move(w).Take()));
  EXPECT_THAT(s.message(), HasSubstr("not sorted by chunk index")) << s.message();
  Writer h;
  h.PutU64(0);
  h.PutDigest(crypto::Digest{});  // a hole is never listed
  s = DecodeStatus(MessageType::kChanges, InodeWithManifestCount(1, std::move(h).Take()));
  EXPECT_THAT(s.message(), HasSubstr("lists a hole")) << s.message();
}

TEST(NetCodecTest, ValidateInodeKeepsTheFileLimits) {
  InodeRecord r = SampleFile();
  EXPECT_TRUE(ValidateInode(r).ok());
  // The largest size is allowed, one byte more is not: and an empty 16 TiB file costs nothing.
  r.manifest.clear();
  r.size = kMaxFileSize;
  EXPECT_TRUE(ValidateInode(r).ok());
  EXPECT_LT(EncodedSize(r), 1024u);
  EXPECT_LT(EncodeFrame(Changes{1, {r}, {}}).size(), 1024u);
  for (std::uint64_t size : {kMaxFileSize + 1, std::uint64_t{1} << 62,
                             std::uint64_t{std::numeric_limits<std::int64_t>::max()},
                             std::numeric_limits<std::uint64_t>::max()}) {
    r.size = size;
    Status s = ValidateInode(r);
    EXPECT_EQ(s.code(), Code::kInvalid) << size;
    EXPECT_THAT(s.message(), HasSubstr("over the")) << s.message();
  }
  // A chunk past the end of the file.
  r = SampleFile();
  r.size = 3 * kMiB;
  EXPECT_THAT(ValidateInode(r).message(), HasSubstr("past the end"));
  r.size = 3 * kMiB + 1;
  EXPECT_TRUE(ValidateInode(r).ok());
  // At most kMaxDataChunks chunks hold data; a record at the limit fits in one frame.
  r.size = kMaxFileSize;
  r.manifest.clear();
  for (std::uint32_t i = 0; i < kMaxDataChunks; ++i) r.manifest.Set(i * 2, DigestOf(7));
  EXPECT_TRUE(ValidateInode(r).ok());
  EXPECT_LE(EncodeFrame(Changes{1, {r}, {}}).size(), kMaxFrameSize / 4 * 3);
  EXPECT_EQ(EncodedSize(r) + 8 + 4 + 4, EncodeFrame(Changes{1, {r}, {}}).size() - 6);
  r.manifest.Set(kMaxDataChunks * 2 + 1, DigestOf(8));
  EXPECT_THAT(ValidateInode(r).message(), HasSubstr("chunks hold data"));
  // Content only in files, device numbers only in devices.
  InodeRecord d = SampleDir();
  d.manifest.Set(0, DigestOf(1));
  d.size = 1;
  EXPECT_THAT(ValidateInode(d).message(), HasSubstr("only a regular file"));
  d = SampleDir();
  d.rdev = 5;
  EXPECT_THAT(ValidateInode(d).message(), HasSubstr("only a device"));
  d.kind = InodeKind::kCharDevice;
  EXPECT_TRUE(ValidateInode(d).ok());
}

TEST(NetCodecTest, RejectsOversizedChunkData) {
  for (std::uint32_t length : {kMaxChunkPayload + 1, 0xFFFFFFFFu}) {
    Writer w;
    w.PutU64(1);
    w.PutBool(true);
    w.PutU32(length);
    Status s = DecodeStatus(MessageType::kChunkReply, std::move(w).Take());
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("data length")) << s.message();
    EXPECT_THAT(s.message(), HasSubstr("exceeds 1048576")) << s.message();
  }
  Status s = DecodeStatus(MessageType::kChunkReply,
                          PayloadOf(ChunkReply{1, true, Bytes(kMaxChunkPayload + 1, 0)}));
  EXPECT_THAT(s.message(), HasSubstr("exceeds")) << s.message();
}

TEST(NetCodecTest, RejectsDataInANotFoundReply) {
  Status s = DecodeStatus(MessageType::kChunkReply, PayloadOf(ChunkReply{1, false, Bytes{1}}));
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_THAT(s.message(), HasSubstr("not-found"));
}

TEST(NetCodecTest, RejectsOverlongStrings) {
  Status addr =
      DecodeStatus(MessageType::kHello, PayloadOf(Hello{kMagic, 1, 1, std::string(256, 'a'), {}}));
  EXPECT_EQ(addr.message(), "Hello: listen address length 256 exceeds 255");

  Status peer = DecodeStatus(MessageType::kPeers, PayloadOf(Peers{{{1, std::string(256, 'a')}}}));
  EXPECT_EQ(peer.message(), "Peers: peer address length 256 exceeds 255");

  InodeRecord link = SampleSymlink();
  link.symlink_target = std::string(kMaxSymlinkSize + 1, 't');
  Status target = DecodeStatus(MessageType::kChanges, PayloadOf(Changes{1, {link}, {}}));
  EXPECT_EQ(target.message(), "Changes: inode symlink target length 4096 exceeds 4095");

  // A u16 length of 65535 with nothing behind it: refused by the bound, not read.
  Writer w;
  w.PutU32(kMagic);
  w.PutU16(1);
  w.PutU64(1);
  w.PutU16(0xFFFF);
  Status raw = DecodeStatus(MessageType::kHello, std::move(w).Take());
  EXPECT_EQ(raw.message(), "Hello: listen address length 65535 exceeds 255");
}

// --- Malformed fields ---------------------------------------------------------------------

Bytes ChangesWithName(const std::string& name) {
  return PayloadOf(Changes{1, {}, {{1, name, 2, {3, 4}, false}}});
}

TEST(NetCodecTest, RejectsInvalidDentryNames) {
  const std::vector<std::string> bad = {"",
                                        ".",
                                        "..",
                                        "a/b",
                                        "/",
                                        std::string("a\0b", 3),
                                        std::string(1, '\0'),
                                        std::string(kMaxNameSize + 1, 'n')};
  for (const std::string& name : bad) {
    Status s = DecodeStatus(MessageType::kChanges, ChangesWithName(name));
    EXPECT_EQ(s.code(), Code::kInvalid) << name.size();
    EXPECT_THAT(s.message(), HasSubstr("Changes: dentry name")) << s.message();
  }
  EXPECT_EQ(DecodeStatus(MessageType::kChanges, ChangesWithName("a/b")).message(),
            "Changes: dentry name is invalid");
  for (const std::string& name : {std::string("..."), std::string(".a"), std::string("a b"),
                                  std::string(kMaxNameSize, 'n')}) {
    EXPECT_TRUE(DecodePayload(MessageType::kChanges, ChangesWithName(name)).ok()) << name;
  }
}

// Offset in a Changes payload holding SampleDir() as its only record of the record's kind byte,
// mode and deleted flag.
constexpr std::size_t kKindAt = 8 + 4 + 8;
constexpr std::size_t kModeAt = kKindAt + 1;
constexpr std::size_t kInodeDeletedAt = kKindAt + 1 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 8 + 16 + 2;

Bytes OneDirPayload() { return PayloadOf(Changes{1, {SampleDir()}, {}}); }

TEST(NetCodecTest, RejectsUnknownInodeKinds) {
  Bytes good = OneDirPayload();
  ASSERT_EQ(good[kKindAt], static_cast<std::uint8_t>(InodeKind::kDir));
  for (std::uint8_t kind : {0, 8, 255}) {
    Bytes p = good;
    p[kKindAt] = kind;
    Status s = DecodeStatus(MessageType::kChanges, p);
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_EQ(s.message(), "Changes: inode 1 has unknown kind " + std::to_string(kind));
  }
  for (std::uint8_t kind : {1, 2, 3, 4, 5, 6, 7}) {
    Bytes p = good;
    p[kKindAt] = kind;
    auto r = DecodePayload(MessageType::kChanges, p);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(static_cast<std::uint8_t>(std::get<Changes>(*r).inodes[0].kind), kind);
  }
}

TEST(NetCodecTest, RejectsModeBitsOutsidePermissions) {
  Bytes p = OneDirPayload();
  p[kModeAt + 1] |= 0x80;  // 0100000 | 0755: S_IFREG is not a permission bit
  Status s = DecodeStatus(MessageType::kChanges, p);
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_THAT(s.message(), HasSubstr("outside 07777"));
}

TEST(NetCodecTest, RejectsBoolsOtherThanZeroOrOne) {
  Bytes inode = OneDirPayload();
  ASSERT_EQ(inode[kInodeDeletedAt], 0);
  inode[kInodeDeletedAt] = 2;
  EXPECT_EQ(DecodeStatus(MessageType::kChanges, inode).message(),
            "Changes: inode deleted is 2, not a bool (0 or 1)");

  Bytes dentry = ChangesWithName("a");
  dentry[dentry.size() - 17] = 0xFF;  // the bool before the 16-byte `replaces`
  EXPECT_EQ(DecodeStatus(MessageType::kChanges, dentry).message(),
            "Changes: dentry deleted is 255, not a bool (0 or 1)");

  Bytes reply = PayloadOf(ChunkReply{1, true, {}});
  reply[8] = 2;
  EXPECT_EQ(DecodeStatus(MessageType::kChunkReply, reply).message(),
            "ChunkReply: found is 2, not a bool (0 or 1)");
}

TEST(NetCodecTest, HelloOfThisVersionCarriesNoIdentity) {
  // Protocol 3 sends who it is only after the key proof: a Hello with a node id or an address
  // in protocol 2's places is refused; another version's Hello decodes, for the version error.
  for (const Hello& h : {Hello{kMagic, kProtocolVersion, 5, "", {}},
                         Hello{kMagic, kProtocolVersion, 0, "10.0.0.1:3000", {}}}) {
    Status s = DecodeStatus(MessageType::kHello, PayloadOf(h));
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("no identity before the key proof"));
  }
  auto old = DecodePayload(MessageType::kHello, PayloadOf(Hello{kMagic, 2, 5, "h:1", {}}));
  ASSERT_TRUE(old.ok()) << old.status().message();
  EXPECT_EQ(std::get<Hello>(*old).version, 2);
  EXPECT_EQ(EncodeFrame(Hello{}).size(), kFrameHeaderSize + 4 + 2 + 8 + 2 + 32);
}

TEST(NetCodecTest, HelloMagicIsCheckedButVersionIsNot) {
  Status s = DecodeStatus(MessageType::kHello, PayloadOf(Hello{0x31534647, 1, 1, "", {}}));
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_EQ(s.message(), "Hello: magic 0x31534647 is not 0x31534646");

  auto r = DecodePayload(MessageType::kHello, PayloadOf(Hello{kMagic, 999, 1, "", {}}));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(std::get<Hello>(*r).version, 999);
}

TEST(NetCodecTest, ValidName) {
  EXPECT_TRUE(ValidName("a"));
  EXPECT_TRUE(ValidName("..."));
  EXPECT_TRUE(ValidName(".hidden"));
  EXPECT_TRUE(ValidName("a..b"));
  EXPECT_TRUE(ValidName("with space\ttab"));
  EXPECT_TRUE(ValidName("\xff\xfe"));
  EXPECT_TRUE(ValidName(std::string(255, 'n')));
  EXPECT_FALSE(ValidName(""));
  EXPECT_FALSE(ValidName("."));
  EXPECT_FALSE(ValidName(".."));
  EXPECT_FALSE(ValidName("/"));
  EXPECT_FALSE(ValidName("a/b"));
  EXPECT_FALSE(ValidName("a/"));
  EXPECT_FALSE(ValidName(std::string_view("a\0b", 3)));
  EXPECT_FALSE(ValidName(std::string_view("\0", 1)));
  EXPECT_FALSE(ValidName(std::string(256, 'n')));
}

// --- Membership messages ------------------------------------------------------------------

TEST(NetCodecTest, MemberMessagesLayoutMatchesTheDocument) {
  // MemberPing: seq, then the updates (count; node id, address, state, incarnation, weight
  // each).
  EXPECT_EQ(EncodeFrame(MemberPing{3, {{2, "ab", MemberState::kSuspect, 5, 6}}}),
            (Bytes{39, 0, 0,   0,   13, 0,        // header
                   3,  0, 0,   0,   0,  0, 0, 0,  // seq
                   1,  0, 0,   0,                 // one update
                   2,  0, 0,   0,   0,  0, 0, 0,  // node id
                   2,  0, 'a', 'b',               // address
                   2,                             // state: suspect
                   5,  0, 0,   0,   0,  0, 0, 0,  // incarnation
                   6,  0, 0,   0}));              // weight
  EXPECT_EQ(EncodeFrame(MemberAck{1, {}}),
            (Bytes{14, 0, 0, 0, 14, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(EncodeFrame(MemberPingReq{1, 2, "t", {}}),
            (Bytes{25, 0, 0, 0, 15, 0, 1, 0, 0, 0,   0, 0, 0, 0, 2,
                   0,  0, 0, 0, 0,  0, 0, 1, 0, 't', 0, 0, 0, 0}));
  EXPECT_EQ(EncodeFrame(MemberSync{true, {}}), (Bytes{7, 0, 0, 0, 16, 0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(TypeOf(MemberPing{}), MessageType::kMemberPing);
  EXPECT_EQ(TypeOf(MemberSync{}), MessageType::kMemberSync);
  EXPECT_STREQ(TypeName(MessageType::kMemberPingReq), "MemberPingReq");
  EXPECT_STREQ(MemberStateName(MemberState::kDown), "down");
  EXPECT_STREQ(MemberStateName(static_cast<MemberState>(9)), "unknown");
}

TEST(NetCodecTest, MemberMessagesRoundTripAtTheirBounds) {
  MemberPing ping{1, {}};
  for (std::uint32_t i = 0; i < kMaxMemberUpdates; ++i) {
    ping.updates.push_back({i + 1, std::string(kMaxAddrSize, 'a'), MemberState::kAlive, i});
  }
  auto d1 = RoundTrip(ping);
  ASSERT_TRUE(d1.ok()) << d1.status().message();
  EXPECT_TRUE(*d1 == Message(ping));

  MemberSync sync{false, {}};
  for (std::uint32_t i = 0; i < kMaxSyncMembers; ++i) {
    sync.members.push_back({i + 1, "10.0.0.1:3000", MemberState::kRemoved, ~0ull});
  }
  auto d2 = RoundTrip(sync);
  ASSERT_TRUE(d2.ok()) << d2.status().message();
  EXPECT_TRUE(*d2 == Message(sync));
}

TEST(NetCodecTest, RejectsOversizedMemberUpdateCounts) {
  MemberPing ping{1, {}};
  for (std::uint32_t i = 0; i <= kMaxMemberUpdates; ++i) ping.updates.push_back({i + 1});
  Status s = DecodeStatus(MessageType::kMemberPing, PayloadOf(ping));
  EXPECT_EQ(s.code(), Code::kInvalid);
  EXPECT_THAT(s.message(), HasSubstr("MemberPing: "));
  // The same number of members is fine in a sync, whose bound is larger...
  MemberSync sync{false, ping.updates};
  EXPECT_TRUE(DecodePayload(MessageType::kMemberSync, PayloadOf(sync)).ok());
  // ...but not one over it.
  sync.members.resize(kMaxSyncMembers + 1, MemberUpdate{1});
  EXPECT_FALSE(DecodePayload(MessageType::kMemberSync, PayloadOf(sync)).ok());

  // A count the bytes that follow cannot hold is refused before anything is reserved.
  for (std::uint32_t count : {2u, 64u, 0xFFFFFFFFu}) {
    Writer w;
    w.PutU64(1);
    w.PutU32(count);
    w.PutU64(7);
    w.PutStr16("");
    w.PutU8(1);
    w.PutU64(0);
    w.PutU32(1);  // one update's worth of bytes
    EXPECT_FALSE(DecodePayload(MessageType::kMemberAck, std::move(w).Take()).ok()) << count;
  }
}

TEST(NetCodecTest, MemberWeightRoundTripsAtItsBounds) {
  // Any weight decodes, 0 included (the receiver counts it as 1: server/membership.h), so the
  // encoding stays canonical; an update cut inside its weight is refused.
  for (std::uint32_t weight : {0u, 1u, 2u, 0xFFFFFFFFu}) {
    MemberSync sync{false, {{7, "a:1", MemberState::kAlive, 3, weight}}};
    auto d = RoundTrip(sync);
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_TRUE(*d == Message(sync)) << weight;
    EXPECT_EQ(std::get<MemberSync>(*d).members.at(0).weight, weight);
    Bytes payload = PayloadOf(sync);
    EXPECT_EQ(payload.size(), 1u + 4 + 8 + 2 + 3 + 1 + 8 + 4);
    for (std::size_t cut = 1; cut <= 4; ++cut) {
      Bytes shorter(payload.begin(), payload.end() - static_cast<std::ptrdiff_t>(cut));
      EXPECT_FALSE(DecodePayload(MessageType::kMemberSync, shorter).ok()) << cut;
    }
  }
  // The weight follows the incarnation, little-endian.
  Bytes payload = PayloadOf(MemberAck{1, {{7, "", MemberState::kAlive, 0, 0x01020304u}}});
  EXPECT_EQ(Bytes(payload.end() - 4, payload.end()), (Bytes{4, 3, 2, 1}));
}

TEST(NetCodecTest, RejectsUnknownMemberStatesAndLongAddresses) {
  for (std::uint8_t state : {0, 5, 255}) {
    Bytes payload = PayloadOf(MemberAck{1, {{7, "a:1", MemberState::kAlive, 0}}});
    // seq 8 + count 4 + node 8 + address 2 + 3 bytes: the state byte.
    payload[8 + 4 + 8 + 2 + 3] = state;
    Status s = DecodeStatus(MessageType::kMemberAck, payload);
    EXPECT_EQ(s.code(), Code::kInvalid);
    EXPECT_THAT(s.message(), HasSubstr("unknown state")) << int{state};
  }
  MemberPingReq req{1, 2, std::string(kMaxAddrSize + 1, 'x'), {}};
  EXPECT_FALSE(DecodePayload(MessageType::kMemberPingReq, PayloadOf(req)).ok());
  MemberSync sync{false, {{1, std::string(kMaxAddrSize + 1, 'x'), MemberState::kAlive, 0}}};
  EXPECT_FALSE(DecodePayload(MessageType::kMemberSync, PayloadOf(sync)).ok());
  Bytes bad_bool = PayloadOf(MemberSync{true, {}});
  bad_bool[0] = 2;
  EXPECT_FALSE(DecodePayload(MessageType::kMemberSync, bad_bool).ok());
}

// --- Random input -------------------------------------------------------------------------

// Decoding random bytes and mutated frames never crashes; whatever decodes re-encodes to the same
// bytes (the encoding is canonical).
TEST(NetCodecTest, RandomInputNeverCrashes) {
  std::mt19937 rng(20240611);
  std::vector<Bytes> seeds;
  for (const Message& m : std::vector<Message>{
           Hello{kMagic, 1, 2, "h:1", DigestOf(1)}, Auth{DigestOf(2)},
           Identity{1, 2, 3, "h:1", DigestOf(4)}, Peers{{{1, "x:1"}}}, Subscribe{3},
           SampleChanges(), GetChunk{4, DigestOf(5)}, ChunkReply{6, true, Bytes{1, 2, 3}},
           MemberPingReq{1, 2, "t:1", {{3, "a:1", MemberState::kSuspect, 4}}},
           MemberSync{true,
                      {{3, "a:1", MemberState::kDown, 4}, {5, "", MemberState::kAlive, 0}}}}) {
    seeds.push_back(EncodeFrame(m));
  }
  int decoded = 0;
  for (int i = 0; i < 10000; ++i) {
    Bytes frame;
    if (i % 2 == 0) {
      // Pure noise, with a plausible header half the time.
      std::size_t n = rng() % 300;
      frame.resize(n);
      for (auto& b : frame) b = static_cast<std::uint8_t>(rng());
      if (n >= kFrameHeaderSize && rng() % 2) {
        std::uint32_t len = static_cast<std::uint32_t>(n - 4);
        std::memcpy(frame.data(), &len, 4);  // the tests run on little-endian machines
        frame[4] = static_cast<std::uint8_t>(1 + rng() % 16);
        frame[5] = 0;
      }
    } else {
      // A valid frame with a few bytes changed, or cut short.
      frame = seeds[rng() % seeds.size()];
      int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        frame[rng() % frame.size()] = static_cast<std::uint8_t>(rng());
      }
      if (rng() % 4 == 0) frame.resize(rng() % frame.size());
    }
    if (frame.size() < kFrameHeaderSize) continue;
    auto h = DecodeFrameHeader(ByteSpan(frame).first(kFrameHeaderSize));
    MessageType type = h.ok() ? h->type : static_cast<MessageType>(1 + rng() % 16);
    ByteSpan payload = ByteSpan(frame).subspan(kFrameHeaderSize);
    auto r = DecodePayload(type, payload);
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kInvalid);
      EXPECT_FALSE(r.status().message().empty());
      continue;
    }
    ++decoded;
    EXPECT_EQ(TypeOf(*r), type);
    Bytes again = EncodeFrame(*r);
    EXPECT_TRUE(
        std::equal(again.begin() + kFrameHeaderSize, again.end(), payload.begin(), payload.end()))
        << "iteration " << i;
  }
  EXPECT_GT(decoded, 0);  // the mutations do not only exercise the first check
}

TEST(NetCodecTest, RelayedFeedAcksLayoutBoundsAndDuplicates) {
  EXPECT_EQ(EncodeFrame(RelayedFeedAcks{5, {{7, 9}}}),
            (Bytes{30, 0, 0, 0, 17, 0, 5, 0, 0, 0, 0, 0, 0, 0,  // type, via_seq
                   1,  0, 0, 0,                                 // one ack
                   7,  0, 0, 0, 0,  0, 0, 0,                    // member
                   9,  0, 0, 0, 0,  0, 0, 0}));                 // applied
  EXPECT_STREQ(TypeName(MessageType::kRelayedFeedAcks), "RelayedFeedAcks");
  // Empty, and at the bound with the largest values.
  for (std::size_t n : {std::size_t{0}, std::size_t{kMaxSyncMembers}}) {
    RelayedFeedAcks m{~0ull, {}};
    for (std::size_t i = 0; i < n; ++i) m.acks.push_back({i + 1, ~0ull});
    auto d = RoundTrip(m);
    ASSERT_TRUE(d.ok()) << n << ": " << d.status().message();
    EXPECT_TRUE(*d == Message(m));
  }
  // One past the bound, a member twice, a count the bytes cannot hold, a trailing byte.
  RelayedFeedAcks over{1, {}};
  for (std::uint64_t i = 0; i <= kMaxSyncMembers; ++i) over.acks.push_back({i + 1, 1});
  EXPECT_FALSE(DecodePayload(MessageType::kRelayedFeedAcks, PayloadOf(over)).ok());
  Status twice =
      DecodeStatus(MessageType::kRelayedFeedAcks, PayloadOf(RelayedFeedAcks{1, {{3, 1}, {3, 2}}}));
  EXPECT_EQ(twice.code(), Code::kInvalid);
  EXPECT_THAT(twice.message(), HasSubstr("appears twice"));
  Bytes short_count = PayloadOf(RelayedFeedAcks{1, {{3, 1}}});
  short_count[8] = 2;
  EXPECT_FALSE(DecodePayload(MessageType::kRelayedFeedAcks, short_count).ok());
  Bytes trailing = PayloadOf(RelayedFeedAcks{1, {{3, 1}}});
  trailing.push_back(0);
  EXPECT_FALSE(DecodePayload(MessageType::kRelayedFeedAcks, trailing).ok());
}

TEST(NetCodecTest, DurableMessagesRoundTripAndBounds) {
  for (std::uint64_t v : {0ull, 1ull, ~0ull}) {
    DurableRequest req{v, v, v, {v, v}};
    auto d = RoundTrip(req);
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_TRUE(*d == Message(req));
  }
  EXPECT_EQ(EncodeFrame(DurableReply{1, true, "x"}),
            (Bytes{14, 0, 0, 0, 19, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 'x'}));
  DurableReply at_limit{2, false, std::string(kMaxErrorSize, 'e')};
  auto d = RoundTrip(at_limit);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_TRUE(*d == Message(at_limit));
  DurableReply over{2, false, std::string(kMaxErrorSize + 1, 'e')};
  EXPECT_FALSE(DecodePayload(MessageType::kDurableReply, PayloadOf(over)).ok());
  Bytes bad_bool = PayloadOf(DurableReply{3, true, ""});
  bad_bool[8] = 2;
  EXPECT_FALSE(DecodePayload(MessageType::kDurableReply, bad_bool).ok());
  Bytes short_req = PayloadOf(DurableRequest{1, 2, 3, {4, 5}});
  short_req.pop_back();
  EXPECT_FALSE(DecodePayload(MessageType::kDurableRequest, short_req).ok());
}

}  // namespace
}  // namespace foreverfs::net
