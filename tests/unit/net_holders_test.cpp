// The chunk-holder query (HaveChunks / HaveChunksReply, doc/protocol.md) and the byte
// counters every link keeps.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "net/codec.h"
#include "net/memory_transport.h"
#include "net/messages.h"

namespace foreverfs::net {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

crypto::Digest DigestOf(std::uint8_t b) {
  crypto::Digest d{};
  d.fill(b);
  return d;
}

Result<Message> RoundTrip(const Message& m) {
  Bytes frame = EncodeFrame(m);
  auto h = DecodeFrameHeader(ByteSpan(frame).first(kFrameHeaderSize));
  if (!h.ok()) return h.status();
  return DecodePayload(h->type, ByteSpan(frame).subspan(kFrameHeaderSize));
}

Status DecodeStatus(MessageType type, const Bytes& payload) {
  auto r = DecodePayload(type, payload);
  return r.ok() ? Ok() : r.status();
}

TEST(NetHoldersTest, QueryAndReplyRoundTrip) {
  HaveChunks q{42, {DigestOf(1), DigestOf(2), DigestOf(3)}};
  auto d = RoundTrip(q);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_TRUE(*d == Message(q));
  EXPECT_EQ(TypeOf(q), MessageType::kHaveChunks);
  EXPECT_STREQ(TypeName(MessageType::kHaveChunks), "HaveChunks");

  for (std::uint32_t n : {0u, 1u, 7u, 8u, 9u, kMaxHaveChunksQuery}) {
    SCOPED_TRACE(n);
    HaveChunksReply r = EmptyHaveReply(43, n);
    EXPECT_EQ(r.bitmap.size(), (n + 7) / 8);
    for (std::uint32_t i = 0; i < n; i += 3) r.Set(i);
    auto dr = RoundTrip(r);
    ASSERT_TRUE(dr.ok()) << dr.status().message();
    ASSERT_TRUE(*dr == Message(r));
    const auto& back = std::get<HaveChunksReply>(*dr);
    for (std::uint32_t i = 0; i < n; ++i) EXPECT_EQ(back.Has(i), i % 3 == 0) << i;
    EXPECT_FALSE(back.Has(n));  // past the count
  }

  HaveChunks full{1, std::vector<crypto::Digest>(kMaxHaveChunksQuery, DigestOf(7))};
  auto df = RoundTrip(full);
  ASSERT_TRUE(df.ok()) << df.status().message();
  EXPECT_EQ(std::get<HaveChunks>(*df).ids.size(), kMaxHaveChunksQuery);
}

TEST(NetHoldersTest, TheLayoutIsTheDocumentedOne) {
  // u64 request id, u32 count, then the ids.
  Bytes q = EncodeFrame(HaveChunks{0x0102030405060708ull, {DigestOf(0xAA)}});
  ASSERT_EQ(q.size(), 4u + 2 + 8 + 4 + 32);
  EXPECT_EQ((Bytes(q.begin(), q.begin() + 18)),
            (Bytes{46, 0, 0, 0, 8, 0, 8, 7, 6, 5, 4, 3, 2, 1, 1, 0, 0, 0}));
  // u64 request id, u32 count, blob32 bitmap (LSB first).
  HaveChunksReply r = EmptyHaveReply(5, 10);
  r.Set(0);
  r.Set(9);
  EXPECT_EQ(EncodeFrame(r), (Bytes{20, 0, 0,  0, 9, 0, 5, 0, 0, 0, 0,    0,
                                   0,  0, 10, 0, 0, 0, 2, 0, 0, 0, 0x01, 0x02}));
}

TEST(NetHoldersTest, BoundsAreCheckedBeforeAllocating) {
  // A query over the bound is refused by its count alone.
  Writer w;
  w.PutU64(1);
  w.PutU32(kMaxHaveChunksQuery + 1);
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunks, std::move(w).Take()).message(),
            "HaveChunks: chunk id count 4097 exceeds 4096");
  // A count the payload cannot hold is refused before reserving.
  Writer w2;
  w2.PutU64(1);
  w2.PutU32(1000);
  w2.PutDigest(DigestOf(1));
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunks, std::move(w2).Take()).message(),
            "HaveChunks: chunk id count 1000 needs at least 32000 bytes, 32 left");
  // Replies: count over the bound, a bitmap of the wrong size, bits past the count.
  Writer w3;
  w3.PutU64(1);
  w3.PutU32(0xFFFFFFFFu);
  w3.PutBlob32(Bytes{});
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunksReply, std::move(w3).Take()).message(),
            "HaveChunksReply: count 4294967295 exceeds 4096");
  Writer w4;
  w4.PutU64(1);
  w4.PutU32(9);
  w4.PutBlob32(Bytes{1});
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunksReply, std::move(w4).Take()).message(),
            "HaveChunksReply: bitmap of 1 bytes for 9 ids, not 2");
  Writer w5;
  w5.PutU64(1);
  w5.PutU32(9);
  w5.PutBlob32(Bytes{1, 2});  // bit 9 is past a count of 9
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunksReply, std::move(w5).Take()).message(),
            "HaveChunksReply: bitmap has bits set past the count");
  Writer w6;
  w6.PutU64(1);
  w6.PutU32(8);
  w6.PutBlob32(Bytes(1000, 0));  // a blob length over what the count allows
  EXPECT_EQ(DecodeStatus(MessageType::kHaveChunksReply, std::move(w6).Take()).message(),
            "HaveChunksReply: bitmap length 1000 exceeds 1");
  // Truncated and trailing bytes.
  Bytes ok = EncodeFrame(HaveChunks{1, {DigestOf(1)}});
  Bytes payload(ok.begin() + kFrameHeaderSize, ok.end());
  Bytes cut(payload.begin(), payload.end() - 1);
  EXPECT_FALSE(DecodePayload(MessageType::kHaveChunks, cut).ok());
  payload.push_back(0);
  EXPECT_FALSE(DecodePayload(MessageType::kHaveChunks, payload).ok());
}

// Counts what arrives; keeps the link.
class Endpoint : public LinkHandler {
 public:
  bool OnOpen(const std::shared_ptr<Link>& link) override {
    link_ = link;
    return true;
  }
  void OnMessage(const std::shared_ptr<Link>&, Message&&) override { ++received; }
  void OnClose(const std::shared_ptr<Link>&, const std::string&) override {}
  std::shared_ptr<Link> link_;
  int received = 0;
};

TEST(NetHoldersTest, MemoryLinksCountFrameBytesBothWays) {
  asio::io_context io;
  MemoryNetwork net(io);
  Endpoint a, b;
  const auto before = std::chrono::system_clock::now();
  net.Connect(1, a, 2, b);
  io.run_for(50ms);
  io.restart();
  ASSERT_TRUE(a.link_ && b.link_);
  EXPECT_GE(a.link_->Peer().connected_since, before);
  EXPECT_EQ(a.link_->Peer().version, kProtocolVersion);
  EXPECT_EQ(a.link_->Counters().BytesOut(), 0u);

  const Message m1 = HaveChunks{1, {DigestOf(1), DigestOf(2)}};
  const Message m2 = GetChunk{2, DigestOf(3)};
  const std::size_t s1 = EncodeFrame(m1).size(), s2 = EncodeFrame(m2).size();
  asio::post(io, [&] {
    a.link_->Send(m1);
    a.link_->Send(m2);
    b.link_->Send(m2);
  });
  io.run_for(50ms);
  EXPECT_EQ(b.received, 2);
  EXPECT_EQ(a.received, 1);
  EXPECT_EQ(a.link_->Counters().BytesOut(), s1 + s2);
  EXPECT_EQ(b.link_->Counters().BytesIn(), s1 + s2);
  EXPECT_EQ(b.link_->Counters().BytesOut(), s2);
  EXPECT_EQ(a.link_->Counters().BytesIn(), s2);
}

}  // namespace
}  // namespace foreverfs::net
