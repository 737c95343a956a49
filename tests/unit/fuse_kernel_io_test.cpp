// KernelIo (fuse/kernel_io.h): the INIT reply takes FUSE_HANDLE_KILLPRIV_V2 exactly when the
// kernel offered it and nothing else changes; the kill marks of writes, setattrs, opens and
// creates are read from the raw requests, at every length a request can have; the read and
// writev hooks do this on real descriptors.

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "fuse/kernel_io.h"

namespace foreverfs::fuse {
namespace {

using Buf = std::vector<std::uint8_t>;

template <typename T>
Buf Request(std::uint32_t opcode, std::uint64_t unique, const T& arg) {
  Buf b(sizeof(fuse_in_header) + sizeof(T));
  fuse_in_header h{};
  h.len = static_cast<std::uint32_t>(b.size());
  h.opcode = opcode;
  h.unique = unique;
  h.nodeid = 1;
  std::memcpy(b.data(), &h, sizeof(h));
  std::memcpy(b.data() + sizeof(h), &arg, sizeof(T));
  return b;
}

Buf Init(std::uint64_t unique, std::uint32_t flags) {
  fuse_init_in in{};
  in.major = FUSE_KERNEL_VERSION;
  in.minor = FUSE_KERNEL_MINOR_VERSION;
  in.flags = flags;
  return Request(FUSE_INIT, unique, in);
}

// libfuse's answer to INIT: header and init_out, as two iovecs.
struct InitReply {
  fuse_out_header h{};
  fuse_init_out out{};
  iovec iov[2];
  InitReply(std::uint64_t unique, std::uint32_t flags, std::size_t out_len = sizeof(fuse_init_out),
            std::int32_t error = 0) {
    h.unique = unique;
    h.error = error;
    h.len = static_cast<std::uint32_t>(sizeof(h) + out_len);
    out.major = 7;
    out.minor = 38;
    out.max_readahead = 1 << 20;
    out.flags = flags;
    out.max_write = 1 << 20;
    iov[0] = {&h, sizeof(h)};
    iov[1] = {&out, out_len};
  }
};

std::uint32_t FlagsOf(const iovec& v) {
  std::uint32_t f;
  std::memcpy(&f, static_cast<const std::uint8_t*>(v.iov_base) + offsetof(fuse_init_out, flags),
              sizeof(f));
  return f;
}

constexpr std::uint32_t kLibfuseFlags = FUSE_ASYNC_READ | FUSE_ATOMIC_O_TRUNC | FUSE_DO_READDIRPLUS;

TEST(KernelIoTest, TheInitReplyTakesKillprivV2WhenTheKernelOffersIt) {
  KernelIo io;
  const Buf init = Init(7, FUSE_ASYNC_READ | FUSE_HANDLE_KILLPRIV_V2 | FUSE_DO_READDIRPLUS);
  io.NoteRequest(init.data(), init.size());
  EXPECT_FALSE(io.killpriv_v2()) << "not before the reply says so";
  InitReply r(7, kLibfuseFlags);
  iovec out[8];
  std::uint8_t copy[256];
  ASSERT_TRUE(io.PatchInitReply(r.iov, 2, out, copy));
  EXPECT_TRUE(io.killpriv_v2());
  EXPECT_EQ(FlagsOf(out[1]), kLibfuseFlags | FUSE_HANDLE_KILLPRIV_V2);
  EXPECT_EQ(r.out.flags, kLibfuseFlags) << "libfuse's own reply is not written to";
  // Every other byte as libfuse wrote it.
  ASSERT_EQ(out[1].iov_len, sizeof(fuse_init_out));
  fuse_init_out patched;
  std::memcpy(&patched, out[1].iov_base, sizeof(patched));
  patched.flags = r.out.flags;
  EXPECT_EQ(std::memcmp(&patched, &r.out, sizeof(patched)), 0);
  EXPECT_EQ(out[0].iov_base, r.iov[0].iov_base);
  // Once: a later reply with the same number (none should come) is left alone.
  EXPECT_FALSE(io.PatchInitReply(r.iov, 2, out, copy));
}

TEST(KernelIoTest, AKernelThatDoesNotOfferItGetsTheReplyUnchanged) {
  KernelIo io;
  const Buf init = Init(3, FUSE_ASYNC_READ);
  io.NoteRequest(init.data(), init.size());
  InitReply r(3, kLibfuseFlags);
  iovec out[8];
  std::uint8_t copy[256];
  EXPECT_FALSE(io.PatchInitReply(r.iov, 2, out, copy));
  EXPECT_FALSE(io.killpriv_v2());
}

TEST(KernelIoTest, OnlyTheSuccessfulAnswerToInitIsPatched) {
  KernelIo io;
  iovec out[8];
  std::uint8_t copy[256];
  InitReply before(9, kLibfuseFlags);
  EXPECT_FALSE(io.PatchInitReply(before.iov, 2, out, copy)) << "no INIT read yet";
  const Buf init = Init(9, FUSE_HANDLE_KILLPRIV_V2);
  io.NoteRequest(init.data(), init.size());
  InitReply other(10, kLibfuseFlags);
  EXPECT_FALSE(io.PatchInitReply(other.iov, 2, out, copy)) << "another request's answer";
  InitReply failed(9, 0, 0, -EPROTO);
  EXPECT_FALSE(io.PatchInitReply(failed.iov, 1, out, copy)) << "an error answer";
  EXPECT_FALSE(io.killpriv_v2());

  KernelIo again;
  again.NoteRequest(init.data(), init.size());
  InitReply err_with_body(9, kLibfuseFlags, sizeof(fuse_init_out), -EPROTO);
  EXPECT_FALSE(again.PatchInitReply(err_with_body.iov, 2, out, copy));
  EXPECT_FALSE(again.killpriv_v2());
}

TEST(KernelIoTest, InitOutLengthsAtTheBounds) {
  // The flags end 16 bytes in: 15 cannot carry them, 16 can; up to the 256 bytes of the copy.
  const Buf init = Init(1, FUSE_HANDLE_KILLPRIV_V2);
  struct Case {
    std::size_t len;
    bool patched;
  };
  for (Case c : {Case{0, false}, Case{8, false}, Case{15, false}, Case{16, true}, Case{24, true},
                 Case{sizeof(fuse_init_out), true}, Case{256, true}, Case{257, false}}) {
    KernelIo io;
    io.NoteRequest(init.data(), init.size());
    std::vector<std::uint8_t> body(c.len, 0xAB);
    if (c.len >= 16) std::memset(body.data() + 12, 0, 4);
    fuse_out_header h{};
    h.unique = 1;
    iovec iov[2] = {{&h, sizeof(h)}, {body.data(), body.size()}};
    iovec out[8];
    std::uint8_t copy[256];
    EXPECT_EQ(io.PatchInitReply(iov, 2, out, copy), c.patched) << c.len;
    EXPECT_EQ(io.killpriv_v2(), c.patched) << c.len;
    if (c.patched) {
      EXPECT_EQ(FlagsOf(out[1]), static_cast<std::uint32_t>(FUSE_HANDLE_KILLPRIV_V2)) << c.len;
      EXPECT_EQ(out[1].iov_len, c.len);
    }
  }
  // Replies of one iovec, of more than two, or of a short header are not INIT's.
  KernelIo io;
  io.NoteRequest(init.data(), init.size());
  InitReply r(1, 0);
  iovec three[3] = {r.iov[0], r.iov[1], r.iov[1]};
  iovec nine[9] = {r.iov[0], r.iov[1]};
  iovec out[8];
  std::uint8_t copy[256];
  EXPECT_FALSE(io.PatchInitReply(three, 3, out, copy));
  KernelIo io2;
  io2.NoteRequest(init.data(), init.size());
  EXPECT_FALSE(io2.PatchInitReply(nine, 9, out, copy));
  EXPECT_FALSE(io2.PatchInitReply(r.iov, 0, out, copy));
  iovec short_header[2] = {{r.iov[0].iov_base, sizeof(fuse_out_header) - 1}, r.iov[1]};
  EXPECT_FALSE(io2.PatchInitReply(short_header, 2, out, copy));
  EXPECT_TRUE(io2.PatchInitReply(r.iov, 2, out, copy)) << "still waiting for INIT's answer";
}

TEST(KernelIoTest, ShortAndForeignRequestsAreLeftAlone) {
  KernelIo io;
  const Buf init = Init(5, FUSE_HANDLE_KILLPRIV_V2);
  // An INIT cut anywhere before its flags end is not noted.
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, sizeof(fuse_in_header) - 1,
                        sizeof(fuse_in_header), sizeof(fuse_in_header) + 15}) {
    io.NoteRequest(init.data(), n);
    InitReply r(5, 0);
    iovec out[8];
    std::uint8_t copy[256];
    EXPECT_FALSE(io.PatchInitReply(r.iov, 2, out, copy)) << n;
  }
  fuse_write_in w{};
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  const Buf marked = Request(FUSE_WRITE, 2, w);
  io.NoteRequest(marked.data(), marked.size());
  ASSERT_TRUE(KernelIo::ThisRequestKills());
  io.NoteRequest(nullptr, 0);
  EXPECT_FALSE(KernelIo::ThisRequestKills()) << "an empty read clears the last request's mark";
  io.NoteRequest(init.data(), sizeof(fuse_in_header) + 16);
  InitReply r(5, 0);
  iovec out[8];
  std::uint8_t copy[256];
  EXPECT_TRUE(io.PatchInitReply(r.iov, 2, out, copy)) << "16 bytes of init_in carry the flags";
}

TEST(KernelIoTest, KillMarksOfWritesSetattrsOpensAndCreates) {
  KernelIo io;
  const auto kills = [&](const Buf& b, std::size_t cut = 0) {
    io.NoteRequest(b.data(), b.size() - cut);
    return KernelIo::ThisRequestKills();
  };
  fuse_write_in w{};
  w.size = 4096;
  EXPECT_FALSE(kills(Request(FUSE_WRITE, 2, w)));
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  EXPECT_TRUE(kills(Request(FUSE_WRITE, 2, w)));
  EXPECT_FALSE(kills(Request(FUSE_WRITE, 2, w), 1)) << "a write cut short is libfuse's to refuse";
  w.write_flags = FUSE_WRITE_CACHE | FUSE_WRITE_LOCKOWNER;
  EXPECT_FALSE(kills(Request(FUSE_WRITE, 2, w)));

  fuse_setattr_in s{};
  s.valid = FATTR_SIZE;
  EXPECT_FALSE(kills(Request(FUSE_SETATTR, 3, s)));
  s.valid = FATTR_SIZE | FATTR_KILL_SUIDGID;
  EXPECT_TRUE(kills(Request(FUSE_SETATTR, 3, s)));
  s.valid = FATTR_UID | FATTR_GID | FATTR_KILL_SUIDGID;
  EXPECT_TRUE(kills(Request(FUSE_SETATTR, 3, s)));
  EXPECT_FALSE(kills(Request(FUSE_SETATTR, 3, s), 1));

  fuse_open_in o{};
  o.flags = O_WRONLY | O_TRUNC;
  EXPECT_FALSE(kills(Request(FUSE_OPEN, 4, o)));
  o.open_flags = FUSE_OPEN_KILL_SUIDGID;
  EXPECT_TRUE(kills(Request(FUSE_OPEN, 4, o)));
  EXPECT_FALSE(kills(Request(FUSE_OPEN, 4, o), 1));

  fuse_create_in c{};
  c.flags = O_WRONLY | O_CREAT;
  EXPECT_FALSE(kills(Request(FUSE_CREATE, 5, c)));
  c.open_flags = FUSE_OPEN_KILL_SUIDGID;
  EXPECT_TRUE(kills(Request(FUSE_CREATE, 5, c)));

  // The mark is the last request's: anything else clears it.
  EXPECT_TRUE(kills(Request(FUSE_SETATTR, 3, s)));
  fuse_getattr_in g{};
  EXPECT_FALSE(kills(Request(FUSE_GETATTR, 6, g)));
  // Another opcode whose argument has the kill bit's place set means nothing.
  fuse_read_in rd{};
  rd.read_flags = 0xFFFFFFFF;
  rd.flags = 0xFFFFFFFF;
  EXPECT_FALSE(kills(Request(FUSE_READ, 7, rd)));
  EXPECT_TRUE(io.killpriv_v2() == false) << "no INIT, no flag";
}

// Each serving thread has the mark of the request it read: a marked write read on another
// thread neither sets nor clears this thread's.
TEST(KernelIoTest, TheMarkIsPerThread) {
  KernelIo io;
  fuse_write_in w{};
  const Buf plain = Request(FUSE_WRITE, 2, w);
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  const Buf marked = Request(FUSE_WRITE, 3, w);
  // The mark another thread sees after noting `request` there.
  const auto in_other_thread = [&](const Buf& request) {
    bool kills = false;
    std::thread([&] {
      io.NoteRequest(request.data(), request.size());
      kills = KernelIo::ThisRequestKills();
    }).join();
    return kills;
  };
  io.NoteRequest(plain.data(), plain.size());
  EXPECT_TRUE(in_other_thread(marked));
  EXPECT_FALSE(KernelIo::ThisRequestKills());
  io.NoteRequest(marked.data(), marked.size());
  EXPECT_FALSE(in_other_thread(plain));
  EXPECT_TRUE(KernelIo::ThisRequestKills());
}

// The hooks on a socket pair standing in for /dev/fuse: what Read returns is what was sent
// (and is noted); what Writev sends is libfuse's reply, with the flag only in INIT's.
TEST(KernelIoTest, TheHooksReadAndWriteRealDescriptors) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  KernelIo io;
  const Buf init = Init(11, FUSE_HANDLE_KILLPRIV_V2 | FUSE_ASYNC_READ);
  ASSERT_EQ(write(sv[1], init.data(), init.size()), static_cast<ssize_t>(init.size()));
  Buf got(8192);
  ASSERT_EQ(io.Read(sv[0], got.data(), got.size()), static_cast<ssize_t>(init.size()));
  got.resize(init.size());
  EXPECT_EQ(got, init);

  InitReply r(11, kLibfuseFlags);
  ASSERT_EQ(io.Writev(sv[0], r.iov, 2), static_cast<ssize_t>(r.h.len));
  Buf sent(8192);
  ASSERT_EQ(read(sv[1], sent.data(), sent.size()), static_cast<ssize_t>(r.h.len));
  fuse_init_out out;
  std::memcpy(&out, sent.data() + sizeof(fuse_out_header), sizeof(out));
  // Patched only while foreverfs negotiates the flag (kNegotiateKillprivV2).
  EXPECT_EQ(out.flags,
            kNegotiateKillprivV2 ? (kLibfuseFlags | FUSE_HANDLE_KILLPRIV_V2) : kLibfuseFlags);
  EXPECT_EQ(out.max_write, r.out.max_write);
  EXPECT_EQ(io.killpriv_v2(), kNegotiateKillprivV2);

  // Any later reply goes out byte for byte.
  fuse_out_header h{};
  h.unique = 12;
  fuse_write_out wo{};
  wo.size = 4096;
  h.len = sizeof(h) + sizeof(wo);
  iovec iov[2] = {{&h, sizeof(h)}, {&wo, sizeof(wo)}};
  ASSERT_EQ(io.Writev(sv[0], iov, 2), static_cast<ssize_t>(h.len));
  ASSERT_EQ(read(sv[1], sent.data(), sent.size()), static_cast<ssize_t>(h.len));
  EXPECT_EQ(std::memcmp(sent.data() + sizeof(h), &wo, sizeof(wo)), 0);

  // A failed read is passed on with its errno; nothing is noted.
  close(sv[1]);
  EXPECT_EQ(io.Read(-1, got.data(), got.size()), -1);
  EXPECT_EQ(errno, EBADF);
  close(sv[0]);
}

}  // namespace
}  // namespace foreverfs::fuse
